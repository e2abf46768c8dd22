"""Warm attach: a fresh Python process obtaining every tensor of a warm model through the client,
against numpy.memmap + torch.from_numpy of the same safetensors file. A measuring program, not a
test: it prints a table.

  /usr/bin/python3 tests/python/warm_attach_bench.py WEIGHTD client/python [--counts 100,1000,10000]
      [--dtype F32|BF16]
first: the first client.load of the process (the lease session opens in it); best: of three.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir, "hardening"))
import harness  # noqa: E402

CHILD = r"""
import json, sys, time, struct
sys.path.insert(0, sys.argv[1])
import numpy, torch, weightd
path, address, mode, repeat = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
times = []
if mode == "weightd":
    client = weightd.Client(address)
    for _ in range(repeat):
        start = time.perf_counter()
        model = client.load(path)
        n = len(model)
        times.append(time.perf_counter() - start)
        del model
    if len(sys.argv) > 6:
        import cProfile, pstats
        cProfile.run("client.load(path)", sys.argv[6])
else:
    for _ in range(repeat):
        start = time.perf_counter()
        with open(path, "rb") as f:
            size = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(size))
        raw = numpy.memmap(path, dtype=numpy.uint8, mode="r")
        base = 8 + size
        out = {}
        for name, t in header.items():
            a, b = t["data_offsets"]
            if t["dtype"] == "BF16":
                tensor = torch.from_numpy(raw[base + a:base + b].view(numpy.int16))
                tensor = tensor.view(torch.bfloat16)
            else:
                tensor = torch.from_numpy(raw[base + a:base + b].view(numpy.float32))
            out[name] = tensor.view(t["shape"])
        n = len(out)
        times.append(time.perf_counter() - start)
print(json.dumps({"n": n, "first": times[0], "best": min(times)}))
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("weightd")
    parser.add_argument("package_dir")
    parser.add_argument("--counts", default="100,1000,3000,10000")
    parser.add_argument("--python", default="/usr/bin/python3")
    parser.add_argument("--profile", default="")
    parser.add_argument("--dtype", default="F32", choices=["F32", "BF16"])
    args = parser.parse_args()
    harness.configure(os.path.abspath(args.weightd), os.path.abspath(args.package_dir))
    root = tempfile.mkdtemp(prefix="weightd-attach-")
    daemon = harness.Daemon(root)
    try:
        print("%8s %14s %14s %14s %8s" % ("tensors", "weightd first", "weightd best",
                                          "memmap first", "ratio"))
        for count in [int(c) for c in args.counts.split(",")]:
            path = os.path.join(root, "m%d.safetensors" % count)
            path = path.replace(".safetensors", "-%s.safetensors" % args.dtype)
            shape = (4, 8) if args.dtype == "F32" else (4, 16)  # 128 bytes either way
            harness.write_safetensors(path, {
                "layers.%d.w" % i: (args.dtype, shape, harness.float_bytes(32, seed=i))
                for i in range(count)})
            daemon.load(path)  # warm
            def child(mode, *extra):
                out = subprocess.run([args.python, "-c", CHILD, os.path.abspath(args.package_dir),
                                      path, daemon.address, mode, "3", *extra],
                                     check=True, capture_output=True, text=True)
                return json.loads(out.stdout.strip().splitlines()[-1])
            w = child("weightd", *([args.profile + str(count)] if args.profile else []))
            m = child("memmap")
            assert w["n"] == count and m["n"] == count, (w, m)
            print("%8d %12.2fms %12.2fms %12.2fms %8.2f" % (
                count, w["first"] * 1e3, w["best"] * 1e3, m["first"] * 1e3,
                m["first"] / w["first"]))
    finally:
        daemon.stop()


if __name__ == "__main__":
    main()
