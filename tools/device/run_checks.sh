#!/usr/bin/env bash
# The GPU checks, run on the GPU machine from the repository root after
# tools/device/bundle.sh packed .device/ here (carried with the call):
#   bash tools/device/run_checks.sh [tests|bench|all]      (default all)
# tests: cuda_device_test; the Python client against real torch (CUDA IPC tensors equal
#        torch.load(map_location="cuda"), warm 1,000-tensor model to a second client);
#        the client's unit tests; interop against the machine's PyTorch (2.x dtypes).
# bench: gpu_bench (pinned H2D baseline vs the staging pipeline, 1 and 4 GiB), load_bench
#        (4 GiB, host and GPU, peak host memory), gpu_compare.py (weightd vs torch.load and
#        safetensors on the same weights).
# Logs go to $OUT (or /tmp/weightd-device) and a summary table is printed last.
set -uo pipefail
cd "$(dirname "$0")/../.."
what="${1:-all}"
out="${OUT:-/tmp/weightd-device}"
mkdir -p "$out"
bin="$PWD/.device/bin"
py="${PYTHON:-python3}"
summary=()
step() {  # step NAME TIMEOUT_S COMMAND...
  local name="$1" limit="$2"
  shift 2
  local start=$SECONDS
  echo "=== $name: $*"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  tail -n 40 "$out/$name.log"
  summary+=("$(printf '%-22s rc=%-3s %4ss' "$name" "$rc" "$((SECONDS - start))")")
}
[ -x "$bin/weightd" ] || { echo "no .device/bin: run tools/device/bundle.sh here and carry .device"; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$py -c 'import torch, grpc, google.protobuf as p; print("torch", torch.__version__, "grpc", grpc.__version__, "protobuf", p.__version__)' || true
export PYTHONPATH="$PWD/client/python" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
if [ "$what" = tests ] || [ "$what" = all ]; then
  step cuda_device_test 120 "$bin/cuda_device_test"
  step python_client 300 $py tests/integration/python_client_test.py "$bin/weightd" client/python tests/fixtures/data
  step python_unit 120 env WEIGHTD_REPO_ROOT="$PWD" $py tests/python/run_tests.py
  step interop 240 $py tests/interop/interop_test.py --inspect "$bin/inspect_main" \
    --generator tests/fixtures/generate.py --workdir /tmp/weightd-interop --rounds 6
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  step gpu_bench 240 "$bin/gpu_bench" --sizes_mb=1024,4096
  step load_bench 240 "$bin/load_bench" --size_mib=4096 --dir=/tmp --iterations=3
  step gpu_compare 400 $py tests/bench/gpu_compare.py "$bin/weightd" --sizes 1,4 --dir /tmp
fi
echo "=== summary"
printf '%s\n' "${summary[@]}" | tee "$out/summary.txt"
