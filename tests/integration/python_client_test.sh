#!/usr/bin/env bash
# Runs python_client_test.py with Debian's Python (which has torch, grpcio, protobuf).
set -euo pipefail
if ! /usr/bin/python3 -c 'import torch, grpc' 2>/dev/null; then
  echo "SKIPPED: /usr/bin/python3 cannot import torch and grpc (run scripts/setup)"
  exit 0
fi
weightd="$1"
package="$(dirname "$(readlink -f client/python/weightd/__init__.py)")/.."
fixtures="$(dirname "$(readlink -f tests/fixtures/data/many.pt)")"
export XML_OUTPUT_FILE="${XML_OUTPUT_FILE:-}"
exec /usr/bin/python3 tests/integration/python_client_test.py "$weightd" "$package" "$fixtures"
