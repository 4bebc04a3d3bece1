#!/usr/bin/env bash
# GPU check: the device-sensitive tests on CUDA, a smoke test of every path on the
# device (the model zoo on both execution paths and mixed precision included), and
# the benchmarks against torch_blue (and bayesian-torch, if installed), the
# ResNet-18 of the zoo benchmark among them.
#
# Assumes the environment is ready: the repository's virtual environment, or
#   pip install -e ".[dev,bench]"   (and optionally: pip install --no-deps bayesian-torch)
# with a CUDA build of torch. Run from anywhere:
#   bash benchmarks/gpu_check.sh
# Results go to "$OUT" if set, else to ./gpu_results (relative to the repository
# root): one .txt file per step and summary.txt. About 6 to 9 minutes on an H100 or
# H200 (the zoo benchmark about one of them).
#
# Environment overrides:
#   PYTHON            interpreter (default: python)
#   GPU_CHECK_DEVICE  device (default: cuda; "cpu" runs the same steps on CPU as a
#                     dry run of this script)
#   GPU_CHECK_TESTS   test paths run with the default device set (see below);
#                     tests/vi holds the zoo's path and autocast tests
#                     (test_paths.py, test_autocast.py)
#   GPU_CHECK_TEST_FILTER  pytest -k expression; the default leaves out the slow
#                     statistical tests (NUTS, moment checks, training until it
#                     learns: 81 tests, three quarters of the time on CPU); set it
#                     empty to run them all
#   STEP_ARGS         extra arguments of step_benchmark.py (e.g. "--rounds 5")
#   SCALING_ARGS      arguments of scaling_benchmark.py (default: --quick)
#   ZOO_ARGS          extra arguments of zoo_benchmark.py (default none: on cuda 10
#                     rounds x 5 steps; "--quick" for a smoke run)
#   GPU_CHECK_COMPILE set to 1 to run compile_benchmark.py too (a few minutes more)
#   STEP_TIMEOUT      seconds allowed per benchmark step (default 240)
#   TESTS_TIMEOUT     seconds allowed for the tests (default 240)
#
# The tests run with pytest's --device option (tests/conftest.py): it sets torch's
# default device for the whole run, since the tests build their tensors and layers
# without a device argument, and skips the tests marked cpu_only. A test that names
# the CPU in an expected error message fails on the GPU for that reason alone; read
# the failures in tests.txt.
#
# Exit status: the number of failed steps (0 when all passed), at most 125.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT="$(pwd)"
PYTHON="${PYTHON:-python}"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
OUT_DIR="${OUT:-$REPO_ROOT/gpu_results}"
STEP_TIMEOUT="${STEP_TIMEOUT:-240}"
TESTS_TIMEOUT="${TESTS_TIMEOUT:-240}"
GPU_CHECK_TESTS="${GPU_CHECK_TESTS:-tests/vi tests/poutine tests/test_functional.py tests/test_bad_input.py tests/test_checkpoints.py tests/test_reproducibility.py}"
GPU_CHECK_TEST_FILTER="${GPU_CHECK_TEST_FILTER-not nuts and not moments and not learn and not trains}"
read -r -a TEST_PATHS <<<"$GPU_CHECK_TESTS"
TEST_FILTER=()
if [ -n "$GPU_CHECK_TEST_FILTER" ]; then
    TEST_FILTER=(-k "$GPU_CHECK_TEST_FILTER")
fi
read -r -a STEP_EXTRA <<<"${STEP_ARGS:-}"
read -r -a SCALING_EXTRA <<<"${SCALING_ARGS:---quick}"
read -r -a ZOO_EXTRA <<<"${ZOO_ARGS:-}"

mkdir -p "$OUT_DIR"
SUMMARY="$OUT_DIR/summary.txt"
: >"$SUMMARY"
failures=0

# run_step NAME TIMEOUT COMMAND...: runs COMMAND with its output in NAME.txt, records
# the exit status in summary.txt and goes on whatever it is.
run_step() {
    local name="$1" limit="$2"
    shift 2
    local log="$OUT_DIR/$name.txt" status=0 start end
    echo "== $name: $*"
    start=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1 || status=$?
    end=$(date +%s)
    if [ "$status" -eq 0 ]; then
        echo "$name: ok ($((end - start)) s)" | tee -a "$SUMMARY"
    else
        failures=$((failures + 1))
        local why="exit $status"
        if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
            why="timed out after $limit s"
        fi
        echo "$name: FAILED, $why ($((end - start)) s); see $log" | tee -a "$SUMMARY"
        tail -n 5 "$log" | sed 's/^/    /'
    fi
}

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    if commit=$(git rev-parse --short HEAD 2>/dev/null); then
        git diff --quiet HEAD -- 2>/dev/null || commit="$commit (with uncommitted changes)"
        echo "commit: $commit"
    fi
    echo "device: $DEVICE"
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    fi
    "$PYTHON" -c 'import torch, pyro; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available()); print("pyro", pyro.__version__)'
    "$PYTHON" -c 'import torch_blue; print("torch_blue", torch_blue.__version__)' 2>/dev/null || echo "torch_blue: not installed"
    "$PYTHON" -c 'import importlib.metadata as m; print("bayesian-torch", m.version("bayesian-torch"))' 2>/dev/null || echo "bayesian-torch: not installed"
} | tee "$OUT_DIR/environment.txt"

if [ "$DEVICE" = "cuda" ] && ! "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "CUDA is not available to $PYTHON: nothing to check (GPU_CHECK_DEVICE=cpu for a dry run)" | tee -a "$SUMMARY"
    exit 1
fi

# 1. Every public path on the device, and the host-device synchronisations per step.
run_step smoke "$STEP_TIMEOUT" "$PYTHON" benchmarks/cuda_smoke.py --device "$DEVICE"

# 2. The device-sensitive tests with the default device set to the GPU.
run_step tests "$TESTS_TIMEOUT" "$PYTHON" -m pytest -q --device "$DEVICE" \
    -p no:cacheprovider --junitxml="$OUT_DIR/tests.xml" \
    ${TEST_FILTER[@]+"${TEST_FILTER[@]}"} "${TEST_PATHS[@]}"

# 3. The benchmarks on the device.
run_step step_benchmark "$STEP_TIMEOUT" "$PYTHON" benchmarks/step_benchmark.py \
    --all --device "$DEVICE" ${STEP_EXTRA[@]+"${STEP_EXTRA[@]}"}
run_step memory_benchmark "$STEP_TIMEOUT" "$PYTHON" benchmarks/memory_benchmark.py \
    --all --device "$DEVICE"
run_step zoo_benchmark "$STEP_TIMEOUT" "$PYTHON" benchmarks/zoo_benchmark.py \
    --device "$DEVICE" ${ZOO_EXTRA[@]+"${ZOO_EXTRA[@]}"}
run_step scaling_benchmark "$STEP_TIMEOUT" "$PYTHON" benchmarks/scaling_benchmark.py \
    --device "$DEVICE" ${SCALING_EXTRA[@]+"${SCALING_EXTRA[@]}"}
run_step pyro_mode_benchmark "$STEP_TIMEOUT" "$PYTHON" benchmarks/pyro_mode_benchmark.py \
    --device "$DEVICE" --rounds 10 --steps 10
if [ "${GPU_CHECK_COMPILE:-0}" = "1" ]; then
    run_step compile_benchmark "$STEP_TIMEOUT" "$PYTHON" benchmarks/compile_benchmark.py \
        --device "$DEVICE"
fi

echo "== results in $OUT_DIR"
cat "$SUMMARY"
exit $((failures > 125 ? 125 : failures))
