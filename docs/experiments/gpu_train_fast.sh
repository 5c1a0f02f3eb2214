#!/usr/bin/env bash
# Train a "fast" Zernike model on a GPU, in one device call (about 8 minutes on an H200):
# the compact identification network (1.6 M parameters; 49 windows at 512² in 0.063 s on
# our 2-core CPU against 0.171 s for the shipped 7.0 M one) and a deblurring network of
# U-Net widths 16, 32 (0.020 s per U-Net at 512² against 0.054 s), which together would
# make 512² identify + deblur about 0.21 s on that CPU: faster than scikit-image's 30
# Richardson–Lucy iterations (0.25–0.28 s), which the shipped model is not (0.44 s;
# docs/benchmarks.md, 2026-12-03 noon). Then the same speed on the GPU.
# Back here, on the CPU, before shipping it as a second model: `deepblur evaluate --model
# DIR/model.safetensors` against the shipped table (docs/experiments/compare_tables.py),
# `python docs/experiments/measured_psf.py "" DIR/model.safetensors` (the lighter DN trained
# on the CPU failed this one), and `deepblur bench --model DIR/model.safetensors`.
# Needs only the GPU machine's own Python (torch, scipy, scikit-image, tifffile,
# safetensors, tqdm); runs from the source tree. With the device tool:
#   run(command="DEEPBLUR_GIT_COMMIT=<hash of HEAD> bash docs/experiments/gpu_train_fast.sh",
#       timeout_s=590)
# Writes to OUT_DIR (default $OUT, else /tmp/gpu_train_fast): log.txt, model.safetensors,
# model.json, bench_cuda_fast.json. A dry run on a CPU: DEVICE=cpu MINUTES_IN=0.2
# MINUTES_DN=0.2 SIZES=256 BANK=500.
set -u -o pipefail
out=${1:-${OUT:-/tmp/gpu_train_fast}}
device=${DEVICE:-cuda} sizes=${SIZES:-256,512,2048}
minutes_in=${MINUTES_IN:-4.5} minutes_dn=${MINUTES_DN:-2.0} bank=${BANK:-16000}
run_dir=/tmp/fast-train
mkdir -p "$out"
log="$out/log.txt"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
deepblur=(python3 -m napari_deepblur.cli)
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
    python3 -c "import torch; print('torch', torch.__version__)"
    echo "commit ${DEEPBLUR_GIT_COMMIT:-unknown}"
} 2>&1 | tee "$log"

# The shipped model's recipe (docs/logs/h100-2026-11-25-train.sh) with the compact
# architecture and narrower U-Nets; same data, seed and time budget.
timeout 480 "${deepblur[@]}" train --out "$run_dir" --arch compact --deblurring-widths 16,32 \
    --device "$device" --batch-size 128 --deblurring-batch-size 32 \
    --identification-steps 1000000 --deblurring-steps 1000000 \
    --identification-minutes "$minutes_in" --deblurring-minutes "$minutes_dn" \
    --bank-size "$bank" --seed 0 --quiet 2>&1 | tee -a "$log"
echo "== train: exit ${PIPESTATUS[0]} ($(date -u +%H:%M:%S) UTC)" | tee -a "$log"
cp "$run_dir/model.safetensors" "$run_dir/model.json" "$out/" 2>&1 | tee -a "$log"

timeout 90 "${deepblur[@]}" bench --device "$device" --model "$run_dir/model.safetensors" \
    --sizes "$sizes" --batch-images 0 --json "$out/bench_${device}_fast.json" --overwrite \
    --quiet 2>&1 | tee -a "$log"
echo "== bench: exit ${PIPESTATUS[0]}" | tee -a "$log"
date -u | tee -a "$log"
