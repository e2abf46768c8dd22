#!/bin/bash
# Builds the fuzz targets with libFuzzer (clang, --config=fuzz) and runs each
# for SECONDS (default 30) seeded with the checkpoint fixtures and the hostile
# files.
#   tests/fuzz/run_fuzzers.sh [SECONDS]
set -euo pipefail
SECONDS_EACH="${1:-30}"
cd "$(dirname "$0")/../.."
FUZZERS=(zip_fuzzer pickle_fuzzer safetensors_fuzzer request_fuzzer)
targets=()
for f in "${FUZZERS[@]}"; do targets+=("//tests/fuzz:$f"); done
bazel build --config=fuzz "${targets[@]}"
BIN="$(bazel info --config=fuzz bazel-bin)/tests/fuzz"
status=0
for f in "${FUZZERS[@]}"; do
  corpus="$(mktemp -d)"
  if [ "$f" = request_fuzzer ]; then
    cp tests/fuzz/seeds/request/* "$corpus"/
  else
    cp tests/fixtures/data/* tests/fixtures/hostile/* "$corpus"/
  fi
  echo "== $f: ${SECONDS_EACH}s"
  if ! "$BIN/$f" -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 \
      -max_len=1048576 -print_final_stats=1 "$corpus" 2>&1 | tail -n 15; then
    echo "FAILED: $f"
    status=1
  fi
  rm -rf "$corpus"
done
exit $status
