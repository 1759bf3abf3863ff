#!/usr/bin/env bash
# Issue 8, end-to-end benchmark on one H100 in ONE device call (< 9 minutes including Python start-up).
#
#   bash bench/run_h100_e2e.sh [extra bench_e2e.py arguments]
#
# Run from anywhere; the repository is the parent of this script's directory. Needs torch + transformers +
# triton (tested image: torch 2.11, transformers 5.17, triton 3.6); no snakemake / duckdb / downloads.
# Writes into $OUT/bench_e2e/ (default: results/bench_e2e_h100/): bench_e2e.json, bench_e2e.md (the table
# and the issue-8 target ratios), log.txt (full log), env.txt. Results are saved after every configuration,
# so a run stopped by the timeout keeps everything measured so far.
#
# Time: bench_e2e.py stops starting configurations after --budget-s 450 s (model build included) and ends a
# configuration that runs past its alarm; `timeout` below is the hard stop at 500 s.
set -uo pipefail
cd "$(dirname "$0")/.."
DEST="${OUT:-results/bench_e2e_h100}/bench_e2e"
mkdir -p "$DEST"
PY="${PYTHON:-python3}"
unset TRITON_INTERPRET
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-/tmp/triton_cache_e2e}"

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv 2>&1
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, \
'cuda', torch.version.cuda, torch.cuda.get_device_name())" 2>&1
  git rev-parse HEAD 2>/dev/null || true
} > "$DEST/env.txt"
cat "$DEST/env.txt"

# progress lines go to the log only; the console gets the skips, errors, final table and targets
timeout -k 10 500 "$PY" bench/bench_e2e.py --out "$DEST" --budget-s 450 "$@" > "$DEST/log.txt" 2>&1
rc=$?
grep -E "^\[e2e\] (skip|TARGETS)|Error|error" "$DEST/log.txt" | grep -v '^\[e2e\] {' | tail -n 40
echo "---- bench_e2e.py exit code $rc (124 = hard timeout; the files hold every finished configuration)"
if [ -f "$DEST/bench_e2e.md" ]; then
  cat "$DEST/bench_e2e.md"
fi
exit $rc
