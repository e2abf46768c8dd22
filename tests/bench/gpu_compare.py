"""GPU load comparison, all measured in one run on the same weights (needs a CUDA GPU).

For a 1 GiB and a 4 GiB checkpoint (page cache warm), prints seconds and GiB/s for:
  baseline  pinned host-to-device copy of the same number of bytes (torch, one stream)
  weightd   client.load(path, device="cuda:0") through a running weightd, cold (unloaded first)
  weightd   the same model again from the cache (warm: IPC handles only)
  torch     torch.load(f, map_location="cuda")
  safetensors  safetensors.torch.load_file(f, device="cuda")   (if installed)

Usage: gpu_compare.py WEIGHTD_BINARY [--sizes 1,4] [--dir /tmp]
       (PYTHONPATH must include client/python)
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import torch


def timed(fn, repeat=3):
    best = float("inf")
    result = None
    for _ in range(repeat):
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
        del result
        result = None
    return best


def write_checkpoints(directory, gib):
    tensors = {}
    remaining = int(gib * (1 << 30))
    index = 0
    while remaining > 0:
        numel = min(64 << 20, remaining // 2)
        tensors[f"layers.{index}.weight"] = torch.randn(numel, dtype=torch.float32).to(
            torch.bfloat16)
        remaining -= numel * 2
        index += 1
    pt = os.path.join(directory, f"model-{gib}g.pt")
    torch.save(tensors, pt)
    st = None
    try:
        from safetensors.torch import save_file
        st = os.path.join(directory, f"model-{gib}g.safetensors")
        save_file(tensors, st)
    except ImportError:
        pass
    return pt, st, sum(t.numel() * t.element_size() for t in tensors.values())


def warm(path):
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("weightd")
    parser.add_argument("--sizes", default="1,4")
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("SKIPPED: no CUDA GPU visible to torch")
        return 0
    import weightd
    root = tempfile.mkdtemp(prefix="weightd-gpu-bench-", dir=args.dir)
    socket = os.path.join(root, "w.sock")
    daemon = subprocess.Popen([args.weightd, "--listen=unix:" + socket, "--model_root=" + root,
                               "--metrics_address="], stderr=subprocess.PIPE, text=True)
    for line in daemon.stderr:
        if "weightd ready" in line:
            print(line.strip())
            break
    try:
        client = weightd.Client("unix:" + socket)
        print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
        print(f"{'size':>5} {'measurement':<44} {'seconds':>9} {'GiB/s':>8} {'vs pinned':>9}")
        for gib in [float(s) for s in args.sizes.split(",")]:
            pt, st, nbytes = write_checkpoints(root, gib)
            g = nbytes / (1 << 30)
            pinned = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
            device = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
            base = timed(lambda: device.copy_(pinned, non_blocking=True))
            del pinned, device
            rows = [("baseline: pinned host-to-device copy", base)]

            for path in [p for p in (pt, st) if p]:
                warm(path)

                def cold(path=path):
                    for model in client.list().models:
                        client.unload(model.model_id, force=True)
                    return client.load(path, device="cuda:0")

                name = os.path.basename(path)
                rows.append((f"weightd cold load ({name})", timed(cold)))
                keep = client.load(path, device="cuda:0")
                rows.append((f"weightd warm load ({name})",
                             timed(lambda path=path: client.load(path, device="cuda:0"))))
                del keep
            rows.append(("torch.load(map_location='cuda')",
                         timed(lambda: torch.load(pt, map_location="cuda"), repeat=2)))
            if st:
                from safetensors.torch import load_file
                rows.append(("safetensors load_file(device='cuda')",
                             timed(lambda: load_file(st, device="cuda"), repeat=2)))
            for name, seconds in rows:
                print(f"{gib:>4}G {name:<44} {seconds:>9.4f} {g / seconds:>8.2f} "
                      f"{base / seconds:>9.2f}")
            for path in (pt, st):
                if path:
                    os.remove(path)
        client.close()
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
