"""Warm attach rows of read_bench: a fresh Python process obtaining every tensor of a warm
model through weightd.Client(...).load(...), against numpy.memmap + torch.from_numpy of the
same safetensors file; in-process seconds after imports, median of --repeats fresh processes.

  attach_bench.py --weightd=PATH --package=client/python --harness=tests/hardening/harness.py
                  --dir=/tmp/x --counts=100,1000,10000 --repeats=3
Prints one line per row: "ROW <name>\t<seconds>\t<tensors>" (tensors 0: a latency row, the
first call of a fresh client after the daemon sat idle longer than gRPC's callback threads wait
for an event; see server/callback_poller_keepalive.h).
"""
import json
import os
import statistics
import struct
import subprocess
import sys
import time

import bench_daemon

PYTHON = "/usr/bin/python3"  # real torch 1.13

# Each child prints the in-process seconds from after its imports until it holds every tensor.
WEIGHTD_CHILD = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
import torch, weightd
start = time.perf_counter()
client = weightd.Client(sys.argv[2])
model = client.load(sys.argv[3])
tensors = [model[name] for name in model]
elapsed = time.perf_counter() - start
assert len(tensors) == int(sys.argv[4]), len(tensors)
print(elapsed)
"""

# The first call of a fresh client: connect plus one small unary call.
FIRST_CALL_CHILD = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
import weightd
start = time.perf_counter()
client = weightd.Client(sys.argv[2])
client.server_info()
elapsed = time.perf_counter() - start  # before the client closes
print(elapsed)
"""

MEMMAP_CHILD = r"""
import json, struct, sys, time
import numpy, torch
start = time.perf_counter()
path = sys.argv[1]
with open(path, "rb") as f:
    header_size = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(header_size))
data = numpy.memmap(path, dtype=numpy.uint8, mode="r", offset=8 + header_size)
tensors = {}
for name, info in header.items():
    if name == "__metadata__":
        continue
    begin, end = info["data_offsets"]
    tensors[name] = torch.from_numpy(
        data[begin:end].view(numpy.float32).reshape(info["shape"]))
elapsed = time.perf_counter() - start
assert len(tensors) == int(sys.argv[2]), len(tensors)
print(elapsed)
"""


def write_safetensors(path, count, elements):
    header = {}
    for i in range(count):
        begin = i * elements * 4
        header["layers.%d.weight" % i] = {"dtype": "F32", "shape": [elements],
                                          "data_offsets": [begin, begin + elements * 4]}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        f.write(bytes(range(256)) * (count * elements * 4 // 256))


def child_seconds(code, *args):
    out = subprocess.run([PYTHON, "-c", code, *map(str, args)], check=True,
                         capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    parser = bench_daemon.argument_parser()
    parser.add_argument("--counts", default="100,1000,10000")
    parser.add_argument("--elements", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--idle_samples", type=int, default=8)
    parser.add_argument("--idle_seconds", type=float, default=1.2)
    args = parser.parse_args()
    package = os.path.abspath(args.package)
    harness = bench_daemon.load_harness(args)
    counts = [int(c) for c in args.counts.split(",") if c]
    paths = {}
    for count in counts:
        paths[count] = os.path.join(args.dir, "attach-%d.safetensors" % count)
        write_safetensors(paths[count], count, args.elements)
    with bench_daemon.running_daemon(harness, args.dir, paths.values()) as daemon:
        for count in counts:
            # Warm: the daemon holds the model; the children only attach.
            child_seconds(WEIGHTD_CHILD, package, daemon.address, paths[count], count)
            client = [child_seconds(WEIGHTD_CHILD, package, daemon.address, paths[count],
                                    count) for _ in range(args.repeats)]
            memmap = [child_seconds(MEMMAP_CHILD, paths[count], count)
                      for _ in range(args.repeats)]
            print("ROW weightd client, %d tensors\t%.6f\t%d"
                  % (count, statistics.median(client), count))
            print("ROW numpy.memmap + torch.from_numpy, %d tensors\t%.6f\t%d"
                  % (count, statistics.median(memmap), count))
            sys.stdout.flush()
        if args.idle_samples > 0:
            first = []
            for _ in range(args.idle_samples):
                time.sleep(args.idle_seconds)
                first.append(child_seconds(FIRST_CALL_CHILD, package, daemon.address))
            what = "first call of a fresh client, daemon idle %.1f s" % args.idle_seconds
            print("ROW %s, median of %d\t%.6f\t0" % (what, len(first), statistics.median(first)))
            print("ROW %s, max of %d\t%.6f\t0" % (what, len(first), max(first)))


if __name__ == "__main__":
    main()
