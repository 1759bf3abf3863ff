#!/usr/bin/env bash
# The workflow-level GPU benchmark (bench/bench_workflow_gpu.py) on the GPU machine, in one device call:
#
#   bash bench/run_workflow_gpu.sh [bench_workflow_gpu.py run arguments]
#
# Installs the wheel folder .whl (Snakemake, DuckDB, ...: ../shared/tools/device-workflow-wheels.sh, carried with the
# call) into /tmp/site, then runs `bench_workflow_gpu.py run` and the report, which it copies to $OUT (default
# results/bench_wf_out), with the work folder's results (wd.tgz: predictions, calibration files, Snakemake logs) so
# that the runs of several calls (a machine that goes idle starts bare) can be merged and reported together here:
#   mkdir -p W && tar xzf OUT1/wd.tgz -C W && tar xzf OUT2/wd.tgz -C W ... ; merge the record.json "calls" lists;
#   python bench/bench_workflow_gpu.py report --work W --out docs/results/workflow_gpu_h100
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
  > /tmp/pip.log 2>&1 || { tail /tmp/pip.log; exit 1; }
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  TOKENIZERS_PARALLELISM=false TRITON_CACHE_DIR=/tmp/triton_cache_wf
unset TRITON_INTERPRET
OUT="${OUT:-results/bench_wf_out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/env.txt" 2>&1
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, \
'transformers', transformers.__version__)" >> "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
python3 bench/bench_workflow_gpu.py run --work results/bench_wf "$@"
rc=$?
python3 bench/bench_workflow_gpu.py report --work results/bench_wf --out "$OUT/workflow_gpu" > /dev/null
cp results/bench_wf/record.json "$OUT/" 2>/dev/null
tar czf "$OUT/wd.tgz" -C results/bench_wf wd/results wd/.snakemake/log wd/study.yaml 2>/dev/null
cat "$OUT/workflow_gpu.md" 2>/dev/null
exit $rc
