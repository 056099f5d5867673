#!/usr/bin/env bash
# One prepared run for a lent GPU (see docs/benchmarks.md and docs/results.md for what it printed):
#   1. environment (GPU, torch, CUDA),
#   2. the captured step's gpu-marked tests (graphed against static and eager; if they fail, the recipe in 4
#      runs with runtime.step=eager),
#   3. the training-step benchmark: CE and BCE3S steps, eager / static / graphed, resnet32 and resnet34_cifar at
#      3 x 64 images (a failing variant costs only its own row), and the projected wall time of the CIFAR-100-LT
#      ResNet-34 recipe from the fastest working variant,
#   4. the CIFAR-10-LT (IF 100) recipe, BCE3S and CE each with its own stage 2, seeds 0 1 2, with all the time
#      left: probes measure the epoch time, and bench/recipe_run.py keeps the paper's 320 + 10 epochs for as many
#      runs as fit (seed by seed, both methods; else BCE3S seed 0 alone), shortening stage 1 only when not even
#      one run fits; mean ± std table, runs per GPU-minute,
#   5-7. only if time is left: N ResNet-32s trained as one grouped model against N separate ones
#      (bench/multi_model.py: does batching models beat running them side by side?), the other gpu-marked tests
#      (losses, models, metrics, GPU pipeline and mixing against CPU references) and the step benchmark with
#      compiled / bf16 / channels_last variants.
#   One device call (15 minutes of device time in all, machine start included) fits one run of this script.
#
# Usage (from the repository root; PYTHONPATH=src is set here, no install needed):
#   bash bench/device_check.sh                       # on the GPU machine; the whole script within 570 s
#   bash bench/device_check.sh --deadline-s 540      # another deadline (the recipe gets what is left)
#   bash bench/device_check.sh --recipe-only         # skip all but 1 and 4: the whole deadline for the recipe
#   bash bench/device_check.sh --smoke               # CPU smoke test (< 2 min on 2 cores), data found by itself
# Data: --data-root DIR (an ImageFolder tree with train/ and test/), else --data FILE.tar.gz, else the first of
# .carry/cifar10-jpeg.tar.gz and ../shared/data/cifar10-jpeg.tar.gz (unpacked under /tmp/bce3s-data).
# Results go to $OUT (the device tool's output folder) or bench/results/device: device_check.log (this output),
# train_step.json, recipe_summary.json, runs.tar.gz (each run's final.json, metrics.jsonl and log) and, when they
# ran, multi_model.json and train_step_all.json.
set -uo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
RECIPE_ONLY=0
DATA_TGZ=""
DATA_ROOT=""
DEADLINE=570
START=$(date +%s)
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --recipe-only) RECIPE_ONLY=1 ;;
    --data) DATA_TGZ="$2"; shift ;;
    --data-root) DATA_ROOT="$2"; shift ;;
    --deadline-s) DEADLINE="$2"; shift ;;
    *) echo "device_check.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
RESULTS="${OUT:-bench/results/device}"
mkdir -p "$RESULTS" && RESULTS=$(cd "$RESULTS" && pwd)
# the whole output also comes back as a file (stderr stays stderr)
exec > >(tee -a "$RESULTS/device_check.log") 2> >(tee -a "$RESULTS/device_check.log" >&2)
PY="${PYTHON:-python3}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && [ "$SMOKE" = 1 ]; then PY=.venv/bin/python; fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
status=0
RECIPE_STEP=""  # set to runtime.step=eager when the captured step fails its tests (2a)
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
  if [ -z "$DATA_TGZ" ]; then
    for c in .carry/cifar10-jpeg.tar.gz ../shared/data/cifar10-jpeg.tar.gz; do
      if [ -f "$c" ]; then DATA_TGZ="$c"; break; fi
    done
  fi
  if [ -z "$DATA_TGZ" ] || [ ! -f "$DATA_TGZ" ]; then
    echo "device_check.sh: no data: give --data-root DIR or --data FILE.tar.gz, or put cifar10-jpeg.tar.gz in .carry/" >&2
    exit 2
  fi
  step "unpack $DATA_TGZ"
  DATA_ROOT=/tmp/bce3s-data/cifar10-jpeg
  if [ ! -d "$DATA_ROOT/train" ]; then
    mkdir -p /tmp/bce3s-data && tar xzf "$DATA_TGZ" -C /tmp/bce3s-data || { echo "cannot unpack $DATA_TGZ"; exit 1; }
  fi
  if [ "$SMOKE" = 1 ]; then  # a small tree of real images: 40 train and 10 test images per class (links)
    "$PY" - "$DATA_ROOT" /tmp/bce3s-data/cifar10-smoke <<'EOF'
import sys
from pathlib import Path
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for split, n in (("train", 40), ("test", 10)):
    for cls in sorted(p for p in (src / split).iterdir() if p.is_dir()):
        (dst / split / cls.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(cls.iterdir())[:n]:
            link = dst / split / cls.name / f.name
            if not link.exists():
                link.symlink_to(f.resolve())
EOF
    DATA_ROOT=/tmp/bce3s-data/cifar10-smoke
  fi
fi

if [ "$SMOKE" = 1 ]; then
  step "2. numerics: skipped in --smoke (the gpu-marked tests need CUDA)"
  step "3. training-step benchmark (quick, cpu)"
  "$PY" bench/train_step.py --quick --device cpu --out "$RESULTS/train_step.json" || status=1
  "$PY" bench/multi_model.py --quick --device cpu --out "$RESULTS/multi_model.json" || status=1
  step "4. recipe (smoke: 2 seeds, 1 + 1 epochs, 2 runs at once)"
  "$PY" bench/recipe_run.py --data-root "$DATA_ROOT" --out "$RESULTS/recipe" --smoke --device cpu \
    --seeds 0 1 --parallel 2 || status=1
else
  left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
  if [ "$RECIPE_ONLY" = 1 ]; then
  step "2-3. numerics and step benchmark skipped (--recipe-only)"
  else
  step "2. captured step (gpu-marked tests of tests/engine/test_static_step.py: graphed against static and eager)"
  BCE3S_TEST_DEVICE=cuda timeout 90 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/engine/test_static_step.py \
    2>&1 | tail -25
  rc=${PIPESTATUS[0]}
  if [ "$rc" = 124 ]; then  # too slow is no verdict: the recipe's probe still falls back if the step fails
    echo "captured step: tests timed out; the recipe keeps the default step"; status=1
  elif [ "$rc" != 0 ] && [ "$rc" != 5 ]; then
    echo "captured step: pytest exit $rc; the recipe below runs with runtime.step=eager (the reference step)"
    RECIPE_STEP="runtime.step=eager"; status=1
  fi
  step "3. training-step benchmark: eager, static, graphed; resnet32 and resnet34_cifar"
  timeout 90 "$PY" bench/train_step.py --device cuda --variants base --models resnet32 resnet34_cifar --steps 20 \
    --out "$RESULTS/train_step.json" || status=1
  "$PY" - "$RESULTS/train_step.json" <<'EOF' || true
import json, math, sys
rows = json.load(open(sys.argv[1]))["rows"]
r34 = [r for r in rows if r["model"] == "resnet34_cifar" and "bce3s_ms" in r and not r.get("capture_error")]
if r34:
    best = min(r34, key=lambda r: r["bce3s_ms"])
    steps = math.ceil(10847 / 64)  # CIFAR-100-LT IF 100: 10,847 training images, batch 64
    stage1 = 320 * steps * best["bce3s_ms"] / 1e3
    stage2 = 10 * steps * best["ce_ms"] / 3 / 1e3
    print(f"CIFAR-100-LT ResNet-34 recipe (synthetic 100-class data, {best['variant']} step {best['bce3s_ms']:.1f} ms):"
          f" projected {(stage1 + stage2) / 60:.1f} min of training steps for 320 + 10 epochs (evaluation excluded)")
EOF
  fi  # --recipe-only
  # the recipe gets all the time left: full-schedule runs first (recipe_run.py --fit runs), extras only after
  BUDGET=$(( $(left) - 30 ))
  step "4. recipe: BCE3S and CE, CIFAR-10-LT IF 100, ResNet-32, seeds 0 1 2 (budget ${BUDGET} s)"
  "$PY" bench/recipe_run.py --data-root "$DATA_ROOT" --out /tmp/bce3s-runs --device cuda --seeds 0 1 2 \
    --budget-s "$BUDGET" ${RECIPE_STEP:+--set "$RECIPE_STEP"} || status=1
  cp /tmp/bce3s-runs/summary.json "$RESULTS/recipe_summary.json" 2>/dev/null
  # one archive for the per-run files and logs: the device tool returns at most 8 files from $OUT
  (cd /tmp/bce3s-runs && tar czf "$RESULTS/runs.tar.gz" --ignore-failed-read \
    $(ls -d ./*_seed*/final.json ./*_seed*/metrics.jsonl ./*.log ./probe*/*.log ./eager/probe/*.log 2>/dev/null)) \
    2>/dev/null
  if [ "$RECIPE_ONLY" != 1 ]; then
    if [ "$(left)" -gt 40 ]; then
      step "5. time left ($(left) s): N ResNet-32s as one grouped model against N separate ones (several runs per GPU)"
      timeout $(( $(left) > 80 ? 60 : $(left) - 20 )) "$PY" bench/multi_model.py --device cuda --models-n 1 3 6 \
        --out "$RESULTS/multi_model.json" || status=1
    fi
    if [ "$(left)" -gt 60 ]; then
      step "6. time left ($(left) s): the other gpu-marked tests (against CPU references)"
      BCE3S_TEST_DEVICE=cuda timeout $(( $(left) > 110 ? 90 : $(left) - 20 )) "$PY" -m pytest -q -p no:cacheprovider \
        -m gpu tests --ignore tests/engine/test_static_step.py 2>&1 | tail -15
      rc=${PIPESTATUS[0]}; [ "$rc" = 0 ] || { echo "numerics: pytest exit $rc"; status=1; }
    fi
    if [ "$(left)" -gt 60 ]; then
      step "7. time left ($(left) s): the step benchmark with compiled, bf16 and channels_last variants"
      timeout $(( $(left) - 10 )) "$PY" bench/train_step.py --device cuda --variants all \
        --models resnet32 resnet34_cifar --steps 20 --out "$RESULTS/train_step_all.json" || status=1
    fi
  fi
fi
step "done (status $status)"
exit $status
