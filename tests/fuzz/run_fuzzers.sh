#!/bin/bash
# Builds the fuzz targets with libFuzzer (clang, --config=fuzz) and runs each
# for SECONDS (default 30) seeded with the checkpoint fixtures and the hostile
# files (json_fuzzer: tests/fuzz/json_seeds; request_fuzzer:
# tests/fuzz/request_seeds). Names after SECONDS pick some of the fuzzers.
#   tests/fuzz/run_fuzzers.sh [SECONDS [FUZZER...]]
set -euo pipefail
SECONDS_EACH="${1:-30}"
cd "$(dirname "$0")/../.."
FUZZERS=(zip_fuzzer pickle_fuzzer safetensors_fuzzer json_fuzzer request_fuzzer)
if [ $# -gt 1 ]; then FUZZERS=("${@:2}"); fi
targets=()
for f in "${FUZZERS[@]}"; do targets+=("//tests/fuzz:$f"); done
bazel build --config=fuzz "${targets[@]}"
BIN="$(bazel info --config=fuzz bazel-bin)/tests/fuzz"
status=0
for f in "${FUZZERS[@]}"; do
  corpus="$(mktemp -d)"
  case "$f" in
    json_fuzzer) cp tests/fuzz/json_seeds/* "$corpus"/ ;;
    request_fuzzer) cp tests/fuzz/request_seeds/* "$corpus"/ ;;
    *) cp tests/fixtures/data/* tests/fixtures/hostile/* "$corpus"/ ;;
  esac
  echo "== $f: ${SECONDS_EACH}s"
  if ! "$BIN/$f" -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 \
      -max_len=1048576 -print_final_stats=1 "$corpus" 2>&1 | tail -n 15; then
    echo "FAILED: $f"
    status=1
  fi
  rm -rf "$corpus"
done
exit $status
