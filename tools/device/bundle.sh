#!/usr/bin/env bash
# Packs what the GPU checks need into .device/ (git-ignored) for the device tool to carry:
# the GPU-facing programs built here with -c opt (static CUDA runtime), the shared libraries
# they load from Debian (the GPU machine has no Debian dev packages), and a wrapper per
# program that points the loader at those libraries for that program alone (PyTorch on the
# GPU machine keeps its own libstdc++).
#   tools/device/bundle.sh
#   then, with the device tool: command "bash tools/device/run_checks.sh", carry [".device"]
set -euo pipefail
cd "$(dirname "$0")/../.."
programs=(
  loader/device:cuda_device_test
  tests/bench:gpu_bench
  tests/bench:load_bench
  server:weightd
  client:weightctl
  client/inspect:inspect_main
)
bazel build -c opt "${programs[@]/#/\/\/}"
rm -rf .device
mkdir -p .device/bin .device/lib
for target in "${programs[@]}"; do
  path="bazel-bin/${target/://}"
  name="$(basename "$path")"
  cp "$path" ".device/lib/$name.bin"
  cat >".device/bin/$name" <<WRAP
#!/bin/sh
here="\$(dirname "\$(readlink -f "\$0")")/../lib"
LD_LIBRARY_PATH="\$here" exec "\$here/$name.bin" "\$@"
WRAP
  chmod +x ".device/bin/$name"
  # Every shared library but the C library itself (same or newer glibc there).
  ldd "$path" | awk '/=> \//{print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
      libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*|ld-linux*) ;;
      *) cp -nL "$lib" .device/lib/ ;;
    esac
  done
done
strip --strip-unneeded .device/lib/*.bin 2>/dev/null || true
du -sh .device
