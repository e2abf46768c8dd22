#!/usr/bin/env bash
# Runs tensor_parallel_test.py (tensor-parallel slices through the daemon, weightctl and the
# Python client) with Debian's Python, which has torch and grpcio.
set -euo pipefail
if ! /usr/bin/python3 -c 'import torch, grpc' 2>/dev/null; then
  echo "SKIPPED: /usr/bin/python3 cannot import torch and grpc (run scripts/setup)"
  exit 0
fi
package="$(dirname "$(readlink -f client/python/weightd/__init__.py)")/.."
export XML_OUTPUT_FILE="${XML_OUTPUT_FILE:-}"
exec /usr/bin/python3 tests/integration/tensor_parallel_test.py "$1" "$2" "$package"
