#!/usr/bin/env bash
# The GPU checks of the scale issue, in one device call (about 6–8 minutes on an H200):
#   1. `deepblur bench` on CUDA, networks in bfloat16 (--precision auto) and in float32:
#      seconds at 256², 512², 2048² and the tiled 8192² image (target: 512² under 50 ms);
#   2. a real CUDA out-of-memory and the fallback to smaller tiles, then the CPU
#      (docs/experiments/gpu_oom.py);
#   3. the accuracy of half precision on the GPU: `deepblur evaluate` (table1, 10 pairs per
#      level at L0–L2) in float32 and in bfloat16, same inputs.
# Needs only the GPU machine's own Python (torch, scipy, scikit-image, tifffile,
# safetensors, tqdm, matplotlib); runs from the source tree without installing it (the
# benchmark's batch part needs dask and is skipped: --batch-images 0).
# Run from the repository root: `bash docs/experiments/gpu_check.sh [OUT_DIR]`; with the
# device tool: `run(command="bash docs/experiments/gpu_check.sh", timeout_s=590)`.
# Every step appends to OUT_DIR/log.txt and writes its JSON there (default $OUT, else
# /tmp/gpu_check; 7 files, within the device tool's 8) as it finishes, so a run cut short
# still returns what it measured. A dry run on a CPU: DEVICE=cpu SIZES=256 N=1 (step 2 then
# only says it needs CUDA).
set -u -o pipefail
out=${1:-${OUT:-/tmp/gpu_check}}
device=${DEVICE:-cuda} sizes=${SIZES:-256,512,2048,8192} n=${N:-10}
mkdir -p "$out"
log="$out/log.txt"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
deepblur=(python3 -m napari_deepblur.cli)  # an array, not a function: `timeout` runs it
step() {  # step NAME SECONDS COMMAND…: run it with a time limit, append its output to $log
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date -u +%H:%M:%S) UTC): $*" | tee -a "$log"
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    echo "== $name: exit ${PIPESTATUS[0]}" | tee -a "$log"
}

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available()
        and torch.cuda.get_device_name())"
    git log -1 --format='commit %H' 2>/dev/null
} 2>&1 | tee "$log"

step bench_auto 200 "${deepblur[@]}" bench --device "$device" --sizes "$sizes" --batch-images 0 \
    --json "$out/bench_${device}_auto.json" --overwrite --quiet
# float32 for comparison only: without the 8192² image, and without RL (timed just above)
step bench_f32 60 "${deepblur[@]}" bench --device "$device" --precision float32 \
    --sizes "${sizes%,8192}" --rl-iterations 0 --batch-images 0 \
    --json "$out/bench_${device}_f32.json" --overwrite --quiet
step oom 60 python3 docs/experiments/gpu_oom.py
for precision in float32 bfloat16; do
    step "table1_$precision" 120 "${deepblur[@]}" evaluate --device "$device" \
        --precision "$precision" --n "$n" --levels L0,L1,L2 \
        --out "$out/table1_$precision" --overwrite --quiet
done
date -u | tee -a "$log"
