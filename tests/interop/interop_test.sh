#!/bin/bash
# Interop against real PyTorch: see interop_test.py.
set -euo pipefail
PY=/usr/bin/python3
if ! "$PY" -c 'import torch' >/dev/null 2>&1; then
  echo "SKIPPED: $PY cannot import torch (install python3-torch); interop not checked"
  exit 0
fi
HERE="$(dirname "$0")"
INSPECT="${TEST_SRCDIR:-$PWD/..}/${TEST_WORKSPACE:-weightd}/client/inspect/inspect_main"
[ -x "$INSPECT" ] || INSPECT="client/inspect/inspect_main"
export HOME="${TEST_TMPDIR:-/tmp}"
exec "$PY" tests/interop/interop_test.py --inspect "$INSPECT" \
  --generator tests/fixtures/generate.py --workdir "${TEST_TMPDIR:-/tmp}/interop" "$@"
