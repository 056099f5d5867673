#!/usr/bin/env bash
# One prepared run for a lent GPU (see docs/benchmarks.md and docs/results.md for what it printed):
#   1. environment (GPU, torch, CUDA),
#   2. CUDA numerics: the gpu-marked tests (losses, models, metrics/geometry, GPU-resident pipeline and mixing
#      against CPU references; bf16 tolerances where autocast is used),
#   3. the training-step benchmark (CE step vs full BCE3S step; channels_last / bf16 / torch.compile variants),
#   4. the CIFAR-10-LT (IF 100) BCE3S recipe end to end (stage 1 + stage 2) on the GPU-resident pipeline, side by
#      side with CE and its own stage 2, printing wall time, images/s and All/Many/Medium/Few for last/best_val.
#
# Usage (from the repository root; PYTHONPATH=src is set here, no install needed):
#   bash bench/device_check.sh                       # on the GPU machine, data at .carry/cifar10-jpeg.tar.gz
#   bash bench/device_check.sh --budget-s 330        # shorten stage 1 to fit a wall-time budget (probe first)
#   bash bench/device_check.sh --deadline-s 560      # the whole script within 560 s (recipe gets what is left)
#   bash bench/device_check.sh --smoke --data-root DIR   # CPU smoke test on a small ImageFolder tree
# Results go to $OUT (the device tool's output folder) or bench/results/device.
set -uo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
DATA_TGZ=.carry/cifar10-jpeg.tar.gz
DATA_ROOT=""
BUDGET=""
DEADLINE=""
START=$(date +%s)
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --data) DATA_TGZ="$2"; shift ;;
    --data-root) DATA_ROOT="$2"; shift ;;
    --budget-s) BUDGET="$2"; shift ;;
    --deadline-s) DEADLINE="$2"; shift ;;
    *) echo "device_check.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
RESULTS="${OUT:-bench/results/device}"
mkdir -p "$RESULTS"
PY="${PYTHON:-python3}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && [ "$SMOKE" = 1 ]; then PY=.venv/bin/python; fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
status=0
step() { echo; echo "=== $* ($(date +%T))"; }

step "1. environment"
"$PY" - <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, f"{p.total_memory / 2**30:.0f} GiB", p.multi_processor_count, "SMs")
EOF

if [ -z "$DATA_ROOT" ]; then
  step "unpack $DATA_TGZ"
  DATA_ROOT=/tmp/bce3s-data/cifar10-jpeg
  if [ ! -d "$DATA_ROOT/train" ]; then
    mkdir -p /tmp/bce3s-data && tar xzf "$DATA_TGZ" -C /tmp/bce3s-data || { echo "cannot unpack $DATA_TGZ"; exit 1; }
  fi
fi

if [ "$SMOKE" = 1 ]; then
  step "2. numerics: skipped in --smoke (the gpu-marked tests need CUDA)"
  step "3. training-step benchmark (quick, cpu)"
  "$PY" bench/train_step.py --quick --device cpu --out "$RESULTS/train_step.json" || status=1
  step "4. recipe (smoke)"
  "$PY" bench/recipe_run.py --data-root "$DATA_ROOT" --out "$RESULTS/recipe" --smoke --device cpu || status=1
else
  step "2. CUDA numerics (gpu-marked tests against CPU references)"
  BCE3S_TEST_DEVICE=cuda timeout 150 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tail -15
  rc=${PIPESTATUS[0]}; [ "$rc" = 0 ] || { echo "numerics: pytest exit $rc"; status=1; }
  step "3. training-step benchmark"
  timeout 150 "$PY" bench/train_step.py --device cuda --variants all --steps 20 --out "$RESULTS/train_step.json" \
    || status=1
  if [ -n "$DEADLINE" ]; then  # whatever the first steps left, minus a margin for the final evaluation
    BUDGET=$(( DEADLINE - ($(date +%s) - START) - 40 ))
    echo "recipe budget: ${BUDGET} s"
  fi
  step "4. recipe: BCE3S and CE, CIFAR-10-LT IF 100, ResNet-32"
  "$PY" bench/recipe_run.py --data-root "$DATA_ROOT" --out /tmp/bce3s-runs --device cuda \
    ${BUDGET:+--budget-s "$BUDGET"} || status=1
  cp /tmp/bce3s-runs/summary.json "$RESULTS/recipe_summary.json" 2>/dev/null
  for n in bce3s ce; do
    cp "/tmp/bce3s-runs/$n/final.json" "$RESULTS/final_$n.json" 2>/dev/null
    cp "/tmp/bce3s-runs/$n/metrics.jsonl" "$RESULTS/metrics_$n.jsonl" 2>/dev/null
  done
fi
step "done (status $status)"
exit $status
