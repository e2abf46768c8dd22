#!/usr/bin/env bash
# The soak (and with --report the hardening table) with Debian's Python against weightd.
set -euo pipefail
if ! /usr/bin/python3 -c 'import torch, grpc' 2>/dev/null; then
  echo "SKIPPED: /usr/bin/python3 cannot import torch and grpc (run scripts/setup)"
  exit 0
fi
weightd="$(readlink -f "$1")"
shift
package="$(dirname "$(readlink -f client/python/weightd/__init__.py)")/.."
here="$(dirname "$(readlink -f tests/hardening/harness.py)")"
fixtures="$(dirname "$(readlink -f tests/fixtures/data/many.pt)")"
exec /usr/bin/python3 "$here/soak.py" "$weightd" "$package" "$fixtures" "$@"
