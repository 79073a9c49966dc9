#!/usr/bin/env bash
# GPU check for maintainers, in one go (about 5 minutes on one recent GPU; budget 8). Installs
# nothing beyond this project. Prints the tables for docs/multi-gpu.md and writes them under $OUT
# (default runs/gpu_check), with summary.md holding all of them:
#   1. one LTU step (MetaHarmonizer.step) vs one fine-tuning step: CIFAR ResNet-18 at batch 128
#      and the small CNN at batch 64, fp32 and bf16 autocast, first and second order: time, peak
#      memory, and the host syncs per step (does the functional meta step stay on the device?);
#   2. quality and stage times on the full Fashion-MNIST (60,000 + 10,000 images, resized to
#      32x32) with a one-channel ResNet-18: original, retrain, LTU and FT (full access) through
#      `ltu benchmark` (scripts/gpu_check/fashion_mnist_resnet18.yaml), in fp32 and bf16-mixed;
#   3. with 2+ GPUs: the multi-process rule on 2 GPUs (NCCL, float64), and a tiny Lightning run
#      of LTU with configs/trainer/ddp.yaml on 2 GPUs.
#
# Usage: bash scripts/gpu_check.sh [--dry-run]
#   Fashion-MNIST: FASHION_MNIST_GZ=DIR with the four official .gz files (default: Debian's
#   `apt-get install dataset-fashion-mnist`, /usr/share/datasets/fashion-mnist), or
#   FASHION_MNIST_ROOT=DIR that already holds DIR/FashionMNIST/raw/ (torchvision's layout).
#   --dry-run: the same steps on the CPU at tiny size (one precision, two batches per stage);
#   needs FASHION_MNIST_ROOT (the tests write tiny files in the official format).
#   PYTHON=/path/to/python chooses the interpreter; OUT=DIR the output folder; PARTS="steps
#   quality" (the default) runs both parts, PARTS=quality or PARTS=steps one of them.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
DRY=0
case "${1:-}" in
  "") ;;
  --dry-run) DRY=1 ;;
  *) echo "gpu_check.sh: unknown argument '$1'; use no argument or --dry-run" >&2; exit 2 ;;
esac
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=$(command -v python3); fi
fi
OUT=${OUT:-$REPO/runs/gpu_check}
PARTS=${PARTS:-steps quality}
# Checkpoints and logs of the benchmark stages (a few hundred MB): RUNS=DIR puts them elsewhere.
RUNS=${RUNS:-$OUT}
export WANDB_MODE=${WANDB_MODE:-offline}
START=$SECONDS
elapsed() { echo "[gpu_check] $1 (at $((SECONDS - START)) s)"; }

"$PYTHON" -c "import ltu_lightning" 2>/dev/null || "$PYTHON" -m pip install -q -e "$REPO"
mkdir -p "$OUT"
SUMMARY=$OUT/summary.md

if [ "$DRY" = 1 ]; then
  DEVICE=cpu
  PRECISIONS=(32-true)
  : "${FASHION_MNIST_ROOT:?the dry run needs FASHION_MNIST_ROOT=DIR holding DIR/FashionMNIST/raw/}"
  BENCH_SIZE=(--batch 8 --steps 1 --warmup 0 --dtypes fp32 --orders 1)
  SMALL=(--data.init_args.holdout "100" --data.init_args.batch_size "16"
    --data.init_args.num_workers "0" --trainer.max_epochs "1" --trainer.limit_train_batches "2"
    --trainer.limit_val_batches "1" --trainer.accelerator cpu --data.init_args.image_size "8")
else
  DEVICE=cuda
  PRECISIONS=(32-true bf16-mixed)
  "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  BENCH_SIZE=()
  SMALL=()
  if [ -z "${FASHION_MNIST_ROOT:-}" ]; then
    GZ=${FASHION_MNIST_GZ:-/usr/share/datasets/fashion-mnist}
    FASHION_MNIST_ROOT=$RUNS/data
    mkdir -p "$FASHION_MNIST_ROOT/FashionMNIST/raw"
    for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
      if [ ! -f "$GZ/$f.gz" ]; then
        echo "gpu_check.sh: $GZ/$f.gz not found; install Debian's dataset-fashion-mnist or set FASHION_MNIST_GZ=DIR (the four official .gz files)" >&2
        exit 2
      fi
      gunzip -c "$GZ/$f.gz" > "$FASHION_MNIST_ROOT/FashionMNIST/raw/$f"
    done
  fi
fi
"$PYTHON" -c "import torch, lightning; print(f'torch {torch.__version__}, lightning {lightning.__version__}')" | tee "$SUMMARY"

bench() { "$PYTHON" "$REPO/scripts/bench_step_cost.py" --device "$DEVICE" "$@" "${BENCH_SIZE[@]}"; }
[[ " $PARTS " == *" steps "* ]] && elapsed "LTU step vs fine-tuning step" && {
  echo "## LTU step vs fine-tuning step"
  bench --model resnet18 --batch 128 --steps 20 --warmup 5 --out "$OUT/resnet18.json"
  bench --model small_cnn --batch 64 --steps 50 --warmup 10 --out "$OUT/small_cnn.json"
} | tee -a "$SUMMARY"

[[ " $PARTS " == *" quality "* ]] || PRECISIONS=()
for precision in "${PRECISIONS[@]}"; do
  elapsed "Fashion-MNIST ResNet-18 benchmark, $precision"
  echo "## Full Fashion-MNIST, ResNet-18, $precision" >> "$SUMMARY"
  # the YAML's overrides plus the data root, the precision and (dry run) the tiny sizes
  OVERRIDES=$("$PYTHON" -c 'import json, sys, yaml
base = yaml.safe_load(open(sys.argv[1]))["overrides"]
extra = {k.removeprefix("--"): yaml.safe_load(v) for k, v in zip(sys.argv[2::2], sys.argv[3::2])}
print(json.dumps({**base, **extra}))' "$REPO/scripts/gpu_check/fashion_mnist_resnet18.yaml" \
    data.init_args.root "$FASHION_MNIST_ROOT" trainer.precision "$precision" "${SMALL[@]}")
  "$PYTHON" -m ltu_lightning benchmark --config "$REPO/scripts/gpu_check/fashion_mnist_resnet18.yaml" \
    --out "$RUNS/quality_$precision" --overwrite true --overrides "$OVERRIDES"
  mkdir -p "$OUT/quality_$precision"
  [ "$RUNS" = "$OUT" ] || cp "$RUNS/quality_$precision"/results.{json,md} "$OUT/quality_$precision/"
  cat "$OUT/quality_$precision/results.md" >> "$SUMMARY"
done

GPUS=0
[ "$DRY" = 1 ] || GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -lt 2 ]; then
  elapsed "only $GPUS GPU in use: the 2-GPU checks are skipped"
  echo "gpu_check: all checks passed (tables in $SUMMARY)"
  exit 0
fi

elapsed "Multi-process rule on 2 GPUs (rows with bn_train_syncbn are informational)"
bench --ddp-check --model resnet18 --batch 32 --out "$OUT/ddp_check.json" | tee -a "$SUMMARY"

elapsed "Lightning: tiny original model on 1 GPU, then LTU on 2 GPUs (configs/trainer/ddp.yaml)"
RUN=$(mktemp -d)
TINY=(--trainer.max_epochs 1 --trainer.limit_train_batches 4 --trainer.limit_val_batches 2
  --trainer.enable_progress_bar false)
cd "$RUN"
"$PYTHON" -m ltu_lightning fit --config "$REPO/configs/pretrain/fmnist5k.yaml" \
  --config "$REPO/configs/trainer/gpu.yaml" "${TINY[@]}"
"$PYTHON" -m ltu_lightning fit --config "$REPO/configs/unlearn/ltu_fmnist5k.yaml" \
  --config "$REPO/configs/trainer/ddp.yaml" --trainer.devices 2 --data.batch_size 32 "${TINY[@]}"
test -f "$RUN/runs/fmnist5k/ltu/checkpoints/last.ckpt"
echo "gpu_check: all checks passed (tables in $SUMMARY, Lightning run in $RUN)"
