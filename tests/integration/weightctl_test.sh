#!/usr/bin/env bash
# DESIGN.md's contract: `weightctl load FILE --device DEV --json --hash` (bytes read by the client
# from what the daemon hands it) prints exactly what `weightctl inspect --json --hash FILE`
# prints, for every fixture, on the host and on the fake GPU. Bad files: exit 1, one line.
set -euo pipefail
weightd="$PWD/$1"
weightctl="$PWD/$2"
fixtures="$(dirname "$(readlink -f tests/fixtures/data/many.pt)")"
dir="$(mktemp -d /tmp/weightctl-test.XXXXXX)"
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
"$weightd" --listen="unix:$dir/w.sock" --model_root="$fixtures" --metrics_address= \
  --fake_gpus=1 2>"$dir/log" &
pid=$!
for _ in $(seq 100); do grep -q "weightd ready" "$dir/log" && break; sleep 0.1; done
export WEIGHTD_ADDRESS="unix:$dir/w.sock"
passed=0 failed=0
for file in "$fixtures"/*; do
  case "$file" in *.json) continue ;; esac
  if ! "$weightctl" inspect --json --hash "$file" >"$dir/inspect" 2>"$dir/err"; then
    # A bad file: the daemon refuses it too, with one line naming it.
    if "$weightctl" load "$file" --quiet >/dev/null 2>"$dir/load_err" ||
       [ "$(wc -l <"$dir/load_err")" -ne 1 ] || ! grep -q "$(basename "$file")" "$dir/load_err"; then
      echo "FAIL: $file: expected one error line from load"; failed=$((failed + 1))
    else
      passed=$((passed + 1))
    fi
    continue
  fi
  for device in cpu cuda:0; do
    if "$weightctl" load "$file" --device "$device" --json --hash --quiet >"$dir/load" &&
       cmp -s "$dir/inspect" "$dir/load"; then
      passed=$((passed + 1))
    else
      echo "FAIL: $file on $device: load --json --hash differs from inspect"
      diff "$dir/inspect" "$dir/load" | head -5 || true
      failed=$((failed + 1))
    fi
  done
done
# --map goes through the daemon's map_location parser: a remap places the
# storages it names, a malformed one is one clear line and exit 1.
if "$weightctl" load "$fixtures/training.pt" --map " cpu -> cuda:00" --quiet \
    >/dev/null; then
  passed=$((passed + 1))
else
  echo "FAIL: load --map cpu->cuda:0"; failed=$((failed + 1))
fi
if "$weightctl" load "$fixtures/training.pt" --map "cpu=>cuda:0" --quiet \
    >/dev/null 2>"$dir/map_err" || [ "$(wc -l <"$dir/map_err")" -ne 1 ] ||
   ! grep -q "FROM->TO" "$dir/map_err"; then
  echo "FAIL: a malformed --map must be one error line naming FROM->TO"
  cat "$dir/map_err"; failed=$((failed + 1))
else
  passed=$((passed + 1))
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 10 ]
