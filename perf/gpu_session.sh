#!/usr/bin/env bash
# Everything that needs a GPU, in stages that each fit one 10-minute call on a lent machine:
#   bash perf/gpu_session.sh tests      # the whole test suite on the GPU (GPU tier included)
#   bash perf/gpu_session.sh tune       # python -m autotune for every layer's model shapes (bf16, batch 128)
#   bash perf/gpu_session.sh bench      # ceilings, perf run for every layer (bf16 + fp16, fwd and fwd+bwd), plots
# Logs and a tarball of perf/results land in $OUT when the device tool runs it, else perf/results/gpu-session.
# The tuning cache lives in .gpu-cache/ (git-ignored) so later stages on the same machine reuse it.
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TRITONCONV_CACHE_DIR="$PWD/.gpu-cache"
LOGS="${OUT:-perf/results/gpu-session}"
mkdir -p "$LOGS" "$TRITONCONV_CACHE_DIR"
status=0

stage_tests() {
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$LOGS/device.txt"
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$LOGS/device.txt"
    python3 -m pytest -q -n 4 tests 2>&1 | tee "$LOGS/tests.log" || status=1
}

stage_tune() {
    {
        python3 -m autotune --layer hetconv --shapes vgg16 --dtype bf16 --batch 128 --p 4
        python3 -m autotune --layer dwsep --shapes mobilenet_v2 --dtype bf16 --batch 64 --channels-last
        python3 -m autotune --layer shift --shapes resnet50 --dtype bf16 --batch 64
        python3 -m autotune --layer versatile --shapes vgg16 --dtype bf16 --batch 64
    } 2>&1 | tee "$LOGS/tune.log" || status=1
    cp "$TRITONCONV_CACHE_DIR/tuning.json" "$LOGS/tuning.json"
}

stage_bench() {
    {
        python3 -m perf ceilings
        for dtype in bf16 fp16; do
            for pass in fwd fwd+bwd; do
                python3 -m perf run --layer all --dtype "$dtype" --pass "$pass" --no-progress
            done
        done
        python3 -m perf plot
    } 2>&1 | tee "$LOGS/bench.log" || status=1
    tar czf "$LOGS/perf-results.tar.gz" perf/results
}

[ $# -gt 0 ] || { sed -n '2,7p' "$0"; exit 2; }
for stage in "$@"; do
    case "$stage" in
        tests|tune|bench) "stage_$stage" ;;
        *) echo "unknown stage '$stage'; expected tests, tune or bench" >&2; exit 2 ;;
    esac
done
exit $status
