#!/usr/bin/env bash
# Regenerates the committed gRPC Python code from proto/weightd/v1/weightd.proto with Debian's
# protoc and grpc_python_plugin, and points the gRPC module at the committed weightd_pb2
# (relative import).
#   client/python/regenerate.sh           rewrite client/python/weightd/_proto/
#   client/python/regenerate.sh OUT_DIR   write weightd_pb2.py and weightd_pb2_grpc.py into OUT_DIR
# Environment: PROTOC (default /usr/bin/protoc), GRPC_PYTHON_PLUGIN (default
# /usr/bin/grpc_python_plugin).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$here/weightd/_proto}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$root"
"${PROTOC:-/usr/bin/protoc}" -I. --python_out="$tmp" \
  --plugin=protoc-gen-grpc_python="${GRPC_PYTHON_PLUGIN:-/usr/bin/grpc_python_plugin}" \
  --grpc_python_out="$tmp" proto/weightd/v1/weightd.proto
gen="$tmp/proto/weightd/v1"
sed -e 's/^from proto\.weightd\.v1 import weightd_pb2 as /from . import weightd_pb2 as /' \
  "$gen/weightd_pb2_grpc.py" >"$tmp/grpc.py"
if ! grep -q '^from \. import weightd_pb2 as ' "$tmp/grpc.py"; then
  echo "regenerate.sh: could not rewrite the weightd_pb2 import in weightd_pb2_grpc.py" >&2
  exit 1
fi
cp "$gen/weightd_pb2.py" "$out/weightd_pb2.py"
cp "$tmp/grpc.py" "$out/weightd_pb2_grpc.py"
