#!/usr/bin/env bash
# Runs python_access_test.py with Debian's Python (which has grpcio and protobuf).
set -euo pipefail
if ! /usr/bin/python3 -c 'import grpc, numpy' 2>/dev/null; then
  echo "SKIPPED: /usr/bin/python3 cannot import grpc and numpy (run scripts/setup)"
  exit 0
fi
package="$(dirname "$(readlink -f client/python/weightd/__init__.py)")/.."
exec /usr/bin/python3 tests/integration/python_access_test.py "$1" "$package"
