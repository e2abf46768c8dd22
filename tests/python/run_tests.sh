#!/usr/bin/env bash
# Bazel sh_test entry: runs the Python client's tests with Debian's Python, the package taken
# from runfiles (//client/python:weightd). Arguments: optional unittest names.
set -euo pipefail
root="${TEST_SRCDIR:-$(dirname "$0")/../..}/${TEST_WORKSPACE:-weightd}"
if [ ! -d "$root/client/python/weightd" ]; then
  root="$(cd "$(dirname "$0")/../.." && pwd)"  # run from a checkout
fi
export PYTHONPATH="$root/client/python${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
export WEIGHTD_REPO_ROOT="$root"
exec /usr/bin/python3 "$root/tests/python/run_tests.py" "$@"
