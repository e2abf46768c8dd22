"""Warm Load and Describe of many-tensor models: per-call seconds from one Python process
with its connection open (median of --calls), and the daemon's CPU seconds per call (its
utime + stime from /proc over the same calls).

  describe_bench.py --weightd=PATH --package=client/python --harness=tests/hardening/harness.py
                    --dir=/tmp/x --counts=1000,10000 --calls=50
Prints one line per row: "ROW <rpc>, <tensors> tensors\t<median s>\t<daemon cpu s per call>".
"""
import os
import statistics
import sys
import time

import bench_daemon


def daemon_cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 (1-based) of the whole line.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(daemon, call, calls):
    call()  # the first answer builds whatever the daemon memoizes
    seconds = []
    cpu_before = daemon_cpu_seconds(daemon.pid)
    for _ in range(calls):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    cpu = (daemon_cpu_seconds(daemon.pid) - cpu_before) / calls
    return statistics.median(seconds), cpu


def main():
    parser = bench_daemon.argument_parser()
    parser.add_argument("--counts", default="1000,10000")
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    harness = bench_daemon.load_harness(args)
    pb = harness.pb
    counts = [int(c) for c in args.counts.split(",") if c]
    paths = {}
    for count in counts:
        paths[count] = os.path.join(args.dir, "describe-%d.safetensors" % count)
        harness.write_safetensors(paths[count], {
            "model.layers.%d.self_attn.q_proj.weight" % i: ("F32", [4, 4], bytes(64))
            for i in range(count)})
    with bench_daemon.running_daemon(harness, args.dir, paths.values()) as daemon:
        for count in counts:
            load = pb.LoadRequest(path=paths[count], compact_description=True)
            load.placement.target = "cpu"
            model_id = daemon.load(paths[count]).model_id

            def load_compact():
                events = list(daemon.stub.Load(load, timeout=60))
                assert events[-1].model.packed_tensors

            def describe(compact):
                request = pb.DescribeRequest(model_id=model_id,
                                             compact_description=compact)
                return lambda: daemon.stub.Describe(request, timeout=60)

            for name, call in (("Load compact", load_compact),
                               ("Describe compact", describe(True)),
                               ("Describe repeated", describe(False))):
                median, cpu = measure(daemon, call, args.calls)
                print("ROW %s, %d tensors\t%.6f\t%.6f" % (name, count, median, cpu))
                sys.stdout.flush()


if __name__ == "__main__":
    main()
