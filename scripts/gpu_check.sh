#!/usr/bin/env bash
# GPU check for maintainers, in one go (a few minutes; budget 8 on one recent GPU). Installs
# nothing beyond this project. Prints the tables for docs/multi-gpu.md and writes them as JSON
# under $OUT (default runs/gpu_check):
#   1. one LTU step (MetaHarmonizer.step) vs one fine-tuning step: CIFAR ResNet-18 at batch 128
#      and the small CNN at batch 64, fp32 and bf16 autocast, first and second order;
#   2. with 2+ GPUs: the multi-process rule on 2 GPUs (NCCL, float64), and a tiny Lightning run
#      of LTU with configs/trainer/ddp.yaml on 2 GPUs.
# Usage: bash scripts/gpu_check.sh        (PYTHON=/path/to/python to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=$(command -v python3); fi
fi
OUT=${OUT:-$REPO/runs/gpu_check}
export WANDB_MODE=${WANDB_MODE:-offline}

"$PYTHON" -c "import ltu_lightning" 2>/dev/null || "$PYTHON" -m pip install -q -e "$REPO"
"$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
mkdir -p "$OUT"
bench() { "$PYTHON" "$REPO/scripts/bench_step_cost.py" --device cuda "$@"; }

echo "## LTU step vs fine-tuning step"
bench --model resnet18 --batch 128 --steps 20 --warmup 5 --out "$OUT/resnet18.json"
bench --model small_cnn --batch 64 --steps 50 --warmup 10 --out "$OUT/small_cnn.json"

GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -lt 2 ]; then
  echo "only $GPUS GPU visible: the 2-GPU checks are skipped"
  exit 0
fi

echo "## Multi-process rule on 2 GPUs (rows with bn_train_syncbn are informational)"
bench --ddp-check --model resnet18 --batch 32 --out "$OUT/ddp_check.json"

echo "## Lightning: tiny original model on 1 GPU, then LTU on 2 GPUs (configs/trainer/ddp.yaml)"
RUN=$(mktemp -d)
TINY=(--trainer.max_epochs 1 --trainer.limit_train_batches 4 --trainer.limit_val_batches 2
  --trainer.enable_progress_bar false)
cd "$RUN"
"$PYTHON" -m ltu_lightning fit --config "$REPO/configs/pretrain/fmnist5k.yaml" \
  --config "$REPO/configs/trainer/gpu.yaml" "${TINY[@]}"
"$PYTHON" -m ltu_lightning fit --config "$REPO/configs/unlearn/ltu_fmnist5k.yaml" \
  --config "$REPO/configs/trainer/ddp.yaml" --trainer.devices 2 --data.batch_size 32 "${TINY[@]}"
test -f "$RUN/runs/fmnist5k/ltu/checkpoints/last.ckpt"
echo "gpu_check: all checks passed (results in $OUT, Lightning run in $RUN)"
