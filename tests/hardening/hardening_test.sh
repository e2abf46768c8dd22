#!/usr/bin/env bash
# Runs the hardening suite with Debian's Python (torch, grpcio, protobuf) against weightd.
set -euo pipefail
if ! /usr/bin/python3 -c 'import torch, grpc' 2>/dev/null; then
  echo "SKIPPED: /usr/bin/python3 cannot import torch and grpc (run scripts/setup)"
  exit 0
fi
weightd="$(readlink -f "$1")"
shift
package="$(dirname "$(readlink -f client/python/weightd/__init__.py)")/.."
here="$(dirname "$(readlink -f tests/hardening/harness.py)")"
exec /usr/bin/python3 "$here/hardening_test.py" "$weightd" "$package" "$@"
