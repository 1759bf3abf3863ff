#!/bin/bash
# One training experiment on a GPU machine: ref-20m (or SIZES) on studies/train_reference.yaml plus overlays, in
# /tmp/tw_NAME (tokenizer, stream, models/<size>/ with weights, card and training_log.json), logs in that folder.
#
#   bench/train_variant.sh NAME [overlay.yaml ...]            # e.g. CUDA_VISIBLE_DEVICES=1 bench/train_variant.sh E ov/E.yaml
#   SIZES=ref-2m,ref-6m bench/train_variant.sh FAM ov/fam.yaml
#
# The overlays are copied into the work folder first: a device call that syncs the working tree while this runs
# in the background must not change (or remove) them under the later stages (session 11 lost an evaluation so).
# Start it detached (setsid nohup ... &) to outlive one device call; /tmp/tw_NAME/DONE (the exit code) marks the end.
set -u
NAME=$1; shift
W=/tmp/tw_$NAME
SIZES=${SIZES:-ref-20m}
mkdir -p "$W/cfg"
CFG=(--config "$W/cfg/00_recipe.yaml")
cp studies/train_reference.yaml "$W/cfg/00_recipe.yaml"
i=1
for o in "$@"; do
  c="$W/cfg/$(printf %02d $i)_$(basename "$o")"; cp "$o" "$c"; CFG+=(--config "$c"); i=$((i + 1))
done
run() { python3 -m workflow_scripts.train_reference "${CFG[@]}" --work "$W" --sizes "$SIZES" "$@"; }
for stage in tokenizer train eval; do           # logs: tokenizer.log, train.log, eval.log; stops at a failure
  run --stage $stage > "$W/$stage.log" 2>&1
  rc=$?
  echo "$stage exit $rc" >> "$W/$stage.log"
  [ $rc = 0 ] || break
done
echo $rc > "$W/DONE"
exit $rc
