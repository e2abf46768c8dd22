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
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 10 ]
