#!/usr/bin/env bash
# Everything that needs a GPU, as ONE command of at most 8 minutes for a lent GPU machine:
#
#   TRITONCONV_COMMIT=abc1234 bash perf/gpu_session.sh        # on the GPU machine (the hash written in)
#   DRY_RUN=1 PYTHON=.venv/bin/python bash perf/gpu_session.sh  # here, no GPU: check every command
#
# Stages, in order, each under its own time cap (`timeout`) and all under one 8-minute deadline (a
# stage gets what is left after what the last two stages need; one that would get under 10 s is
# skipped): the direct kernel launch checked against Triton's (where it fails, the rest launch through
# Triton), the GPU test tier (pytest -m gpu), the rest of the suite on the GPU, perf ceilings,
# tuning HetConv's VGG-16 shapes, perf run for the headline sets (hetconv vgg16 p=4 bf16 batch 128
# channels_last fwd, then fwd+bwd; then dwsep mobilenet_v2, shift, versatile fwd), the host cost per
# layer call with real launches (perf host), perf plot and perf audit. Everything lands in $OUT (the device tool's folder; else perf/results/gpu-session):
# logs/ (one per stage), device.txt, SUMMARY.md (every stage: command, cap, seconds, exit status,
# the test counts), tuning-cache/tuning.json, audit/, and a copy of perf/results (CSVs, plots,
# ceilings) as perf-results/.
#
# The GPU machine's python is `python3` (PYTHON overrides) and its repo is a copy of the working tree
# without .git: the commit comes from TRITONCONV_COMMIT. DRY_RUN=1 (or --dry-run) runs nothing on a
# GPU: it checks that every python command imports its module and parses its arguments (perf run and
# perf audit through --list, autotune through its spec resolution, pytest by collecting), that the
# paths the stages read exist and that the folders they write are writable.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY_RUN=${DRY_RUN:-0}
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1
PY=${PYTHON:-python3}
if [ -n "${OUT:-}" ]; then OUT_DIR=$OUT
elif [ "$DRY_RUN" = 1 ]; then OUT_DIR=${TMPDIR:-/tmp}/gpu-session-dry-run  # a check leaves perf/results alone
else OUT_DIR=$ROOT/perf/results/gpu-session; fi
LOGS=$OUT_DIR/logs
SUMMARY=$OUT_DIR/SUMMARY.md
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TRITONCONV_CACHE_DIR=$OUT_DIR/tuning-cache
# perf.results.git_commit() reads TRITONCONV_COMMIT where there is no .git (the GPU machine's copy).
COMMIT=${TRITONCONV_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo "unknown (set TRITONCONV_COMMIT)")}
unset TRITON_INTERPRET

TOTAL_S=460          # the whole session: 8 minutes less the slack a killed stage may take (--kill-after)
FINAL_S=70           # kept back for the last stages (plot, audit) and the copy
START=$(date +%s)
DEADLINE=$((START + TOTAL_S))
failures=0

mkdir -p "$LOGS" "$TRITONCONV_CACHE_DIR" || { echo "cannot create $OUT_DIR" >&2; exit 2; }
touch "$SUMMARY" "$LOGS/.writable" || { echo "$OUT_DIR is not writable" >&2; exit 2; }
rm -f "$LOGS/.writable"
for need in tests perf/results tritonconv autotune; do
    [ -e "$ROOT/$need" ] || { echo "missing $ROOT/$need" >&2; exit 2; }
done
command -v timeout >/dev/null || { echo "timeout (coreutils) is missing" >&2; exit 2; }
command -v "$PY" >/dev/null || { echo "python '$PY' not found (set PYTHON)" >&2; exit 2; }

{
    echo "# GPU session $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo
    echo "commit $COMMIT; dry run: $DRY_RUN; budget ${TOTAL_S} s"
    echo
    echo "| stage | cap s | took s | status | command |"
    echo "|---|---|---|---|---|"
} > "$SUMMARY"

# stage NAME CAP RESERVE -- python -m MODULE ARGS...: run it under min(CAP, time left - RESERVE).
stage() {
    local name=$1 cap=$2 reserve=$3
    shift 4
    local log="$LOGS/$name.log" started status rc left shown
    shown=$(printf '%q ' "$@")
    started=$(date +%s)
    if [ "$DRY_RUN" = 1 ]; then
        shift 2  # python -m
        "$PY" -m perf.session_check -m "$@" > "$log" 2>&1
        rc=$?
        status=$([ $rc = 0 ] && echo "checked" || echo "CHECK FAILED")
    else
        left=$((DEADLINE - started - reserve))
        [ "$left" -lt "$cap" ] && cap=$left
        if [ "$cap" -lt 10 ]; then
            echo "| $name | - | 0 | skipped: out of time | \`$shown\` |" >> "$SUMMARY"
            return
        fi
        echo "== $name (cap ${cap} s): $shown"
        timeout --kill-after=15 "$cap" "$@" > "$log" 2>&1
        rc=$?
        case $rc in
            0) status=ok ;;
            124|137) status="timed out (what finished is kept)" ;;
            *) status="failed (exit $rc)" ;;
        esac
    fi
    [ $rc = 0 ] || failures=$((failures + 1))
    echo "| $name | $cap | $(( $(date +%s) - started )) | $status | \`$shown\` |" >> "$SUMMARY"
    tail -n 3 "$log" | sed 's/^/    /'
    return $rc
}

# ---- the machine ----
{
    echo "commit: $COMMIT"
    if [ "$DRY_RUN" = 1 ]; then echo "dry run on $(hostname)"; else nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; fi
    "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'gpus', torch.cuda.device_count())"
} > "$OUT_DIR/device.txt" 2>&1 || failures=$((failures + 1))
cat "$OUT_DIR/device.txt"

PY_M=("$PY" -m)
# ---- 0. the direct kernel launch (tritonconv/_launcher.py) against Triton's own, and the replayed calls
# (tritonconv/_replay.py) against their bodies, bit for bit: where it fails, every later stage launches
# through Triton and runs every body (TRITONCONV_DIRECT_LAUNCH=0 TRITONCONV_REPLAY=0), so the session still
# measures the kernels ----
if ! stage direct-launch 50 "$FINAL_S" -- "${PY_M[@]}" pytest -q -rfE -m gpu -p no:cacheprovider tests/test_launcher.py tests/test_replay.py; then
    export TRITONCONV_DIRECT_LAUNCH=0 TRITONCONV_REPLAY=0
    echo "| direct-launch | - | 0 | failed: later stages launch through Triton, no call replayed (TRITONCONV_DIRECT_LAUNCH=0 TRITONCONV_REPLAY=0) | - |" >> "$SUMMARY"
fi
# ---- 1. tests: the GPU tier first, then the rest of the suite on the GPU as time allows ----
stage tests-gpu 90 "$FINAL_S" -- "${PY_M[@]}" pytest -q -rfE -m gpu -n 4 -p no:cacheprovider tests
stage tests-rest 45 "$FINAL_S" -- "${PY_M[@]}" pytest -q -rfE -m "not gpu" -n 8 -p no:cacheprovider tests
# ---- 2. ceilings ----
stage ceilings 35 "$FINAL_S" -- "${PY_M[@]}" perf ceilings
# ---- 3. tuning and the headline benchmarks (rows reach the CSV spec by spec: a cut run keeps them) ----
HETCONV=(--layer hetconv --shapes vgg16 --p 4 --dtype bf16 --batch 128 --channels-last)
BENCH=(--backends triton fallback dense --no-progress)
stage tune-hetconv 60 "$FINAL_S" -- "${PY_M[@]}" autotune "${HETCONV[@]}" --pass both --max-tiles 3
stage bench-hetconv-fwd 45 "$FINAL_S" -- "${PY_M[@]}" perf run "${HETCONV[@]}" --pass fwd "${BENCH[@]}"
stage bench-hetconv-fwdbwd 55 "$FINAL_S" -- "${PY_M[@]}" perf run "${HETCONV[@]}" --pass fwd+bwd "${BENCH[@]}"
stage bench-dwsep 30 "$FINAL_S" -- "${PY_M[@]}" perf run --layer dwsep --shapes mobilenet_v2 --dtype bf16 --batch 128 --channels-last --pass fwd "${BENCH[@]}"
stage bench-shift 25 "$FINAL_S" -- "${PY_M[@]}" perf run --layer shift --shapes shiftresnet20 --dtype bf16 --batch 128 --channels-last --pass fwd "${BENCH[@]}"
stage bench-versatile 25 "$FINAL_S" -- "${PY_M[@]}" perf run --layer versatile --shapes vgg16 --dtype bf16 --batch 128 --channels-last --pass fwd "${BENCH[@]}"
stage host 30 "$FINAL_S" -- "${PY_M[@]}" perf host --layer hetconv dwsep shift depthwise
# ---- 4. figures and the static audit (compiled on this machine's CPUs) ----
stage plot 10 55 -- "${PY_M[@]}" perf plot
stage audit 50 5 -- "${PY_M[@]}" perf audit --first-shape --out "$OUT_DIR/audit"

# ---- what comes back: perf/results (CSVs, plots, ceilings) unless $OUT_DIR is already inside it ----
case "$OUT_DIR/" in
    "$ROOT/perf/results/"*) ;;
    *) if [ "$DRY_RUN" != 1 ]; then
           rm -rf "$OUT_DIR/perf-results" && mkdir -p "$OUT_DIR/perf-results" \
               && cp -r perf/results/. "$OUT_DIR/perf-results/" || failures=$((failures + 1))
       fi ;;
esac
{
    echo
    echo "tests:"
    for log in "$LOGS"/tests-*.log; do
        [ -e "$log" ] || continue
        counts=$(grep -E '[0-9]+ (passed|failed|error|skipped|deselected)|no tests ran' "$log" | tail -n 1)
        echo "- $(basename "$log" .log): ${counts:-no pytest summary (cut by its cap, see the log)}"
    done
    echo
    echo "$failures stage(s) not ok; session took $(( $(date +%s) - START )) s of ${TOTAL_S} s."
} >> "$SUMMARY"
cat "$SUMMARY"
exit $(( failures > 0 ))
