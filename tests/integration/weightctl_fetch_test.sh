#!/usr/bin/env bash
# Runs weightctl_fetch_test.py (weightctl fetch against the daemon) with Debian's Python.
set -euo pipefail
if ! /usr/bin/python3 -c 'import grpc' 2>/dev/null; then
  echo "SKIPPED: /usr/bin/python3 cannot import grpc (run scripts/setup)"
  exit 0
fi
package="$(dirname "$(readlink -f client/python/weightd/__init__.py)")/.."
fixtures="$(dirname "$(readlink -f tests/fixtures/data/many.pt)")"
export XML_OUTPUT_FILE="${XML_OUTPUT_FILE:-}"
exec /usr/bin/python3 tests/integration/weightctl_fetch_test.py "$1" "$2" "$package" "$fixtures"
