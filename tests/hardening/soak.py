"""The soak and the hardening report.

Many clients for a while (loads through the Python client with leases, ReadTensors, Describe,
List, Stats, unloads, bad requests), then thousands of bad inputs (fixtures truncated and
corrupted at random), against one daemon. Checks no unexpected status codes, flat descriptors,
memory and /dev/shm segments, and zero leases at the end; with --report it also runs the
hardening suite and prints the table the README shows.

Usage: soak.py WEIGHTD PYTHON_PACKAGE_DIR FIXTURES_DIR [--clients N] [--seconds S]
               [--bad_inputs N] [--seed N] [--report]
"""
import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import grpc

import harness
from harness import Daemon

# What a request may legitimately answer in the soak; anything else is a bug.
EXPECTED = {
    grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
}
# The Python client also refuses dtypes its PyTorch lacks (float8 in torch 1.13).
EXPECTED_CLIENT = EXPECTED | {grpc.StatusCode.UNIMPLEMENTED}
# Bad inputs may also be unsupported or too big for the daemon's bounds.
EXPECTED_BAD = EXPECTED | {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.OUT_OF_RANGE,
                           grpc.StatusCode.UNIMPLEMENTED}
TARGETS = ["cpu", "meta", "cuda:0", "cuda"]
CASTS = ["", "", "bfloat16", "float16"]


def percentile(values, fraction):
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Soak:
    def __init__(self, daemon, models, seed):
        self.daemon = daemon
        self.models = models  # readable checkpoint paths
        self.seed = seed
        self.lock = threading.Lock()
        self.latencies = []
        self.requests = 0
        self.unexpected = []  # (operation, code, details)

    def record(self, operation, started, code, details=""):
        elapsed = time.monotonic() - started
        with self.lock:
            self.requests += 1
            self.latencies.append(elapsed)
            if code not in (EXPECTED_CLIENT if operation.startswith("client.")
                            else EXPECTED):
                self.unexpected.append((operation, code, details[:300]))

    def call(self, operation, function):
        started = time.monotonic()
        try:
            result = function()
        except grpc.RpcError as error:
            self.record(operation, started, error.code(), error.details() or "")
            return None
        except Exception as error:  # the Python client's WeightdError
            code = getattr(error, "code", None)
            code = code() if callable(code) else code
            self.record(operation, started, code, str(error))
            return None
        self.record(operation, started, grpc.StatusCode.OK)
        return result

    def client_loop(self, index, deadline):
        import weightd
        rng = random.Random(self.seed * 1000 + index)
        client = weightd.Client(self.daemon.address)
        stub = self.daemon.stub
        pb = harness.pb
        kept, ids = [], []
        try:
            while time.monotonic() < deadline:
                path = rng.choice(self.models)
                roll = rng.random()
                if roll < 0.35:
                    tensors = self.call("client.load", lambda: client.load(
                        path, device=rng.choice(["cpu", "cuda:0"]),
                        dtype=rng.choice([None, None, "bfloat16"])))
                    if tensors is not None:
                        kept.append(tensors)
                        del kept[:-3]  # leases released as tensors go
                elif roll < 0.55:
                    model = self.call("load", lambda: self.daemon.load(
                        path, rng.choice(TARGETS), cast=rng.choice(CASTS)))
                    if model is not None:
                        ids.append(model.model_id)
                        del ids[:-20]
                elif roll < 0.70 and ids:
                    self.call("read_tensors", lambda: self.daemon.read_tensors(
                        rng.choice(ids), chunk_bytes=rng.choice([0, 4096, 65536])))
                elif roll < 0.78 and ids:
                    self.call("describe", lambda: stub.Describe(
                        pb.DescribeRequest(model_id=rng.choice(ids)), timeout=30))
                elif roll < 0.84:
                    self.call(rng.choice(["list", "stats"]), lambda: (
                        stub.List(pb.ListRequest(), timeout=30) if rng.random() < 0.5
                        else stub.Stats(pb.StatsRequest(), timeout=30)))
                elif roll < 0.88 and ids:
                    self.call("unload", lambda: stub.Unload(
                        pb.UnloadRequest(model_id=rng.choice(ids)), timeout=30))
                else:
                    self.bad_request(rng)
        finally:
            kept.clear()
            client.close()

    def bad_request(self, rng):
        pb = harness.pb
        root = os.path.dirname(self.models[0])
        kind = rng.randrange(7)
        if kind == 0:
            call = lambda: self.daemon.load("/etc/passwd")
        elif kind == 1:
            call = lambda: self.daemon.load(os.path.join(root, "missing-%d.pt" % rng.randrange(9)))
        elif kind == 2:
            call = lambda: self.daemon.load(rng.choice(self.models), "cuda:%d" % rng.randrange(1, 99))
        elif kind == 3:
            call = lambda: self.daemon.load(rng.choice(self.models), "cpu", cast="int8")
        elif kind == 4:
            call = lambda: self.daemon.load(rng.choice(self.models), "cpu",
                                            filters=["no.such.tensor"])
        elif kind == 5:
            call = lambda: self.daemon.stub.Describe(pb.DescribeRequest(model_id="m-nope"))
        else:
            call = lambda: self.daemon.load(rng.choice(self.models), "cpu",
                                            session="made-up-session")
        self.call("bad_request", call)

    def run(self, clients, seconds):
        deadline = time.monotonic() + seconds
        threads = [threading.Thread(target=self.client_loop, args=(i, deadline))
                   for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def corrupt(source, rng, out_path):
    data = bytearray(open(source, "rb").read())
    how = rng.randrange(4)
    if how == 0 and len(data) > 1:
        del data[rng.randrange(1, len(data)):]  # truncated
    elif how == 1:
        for _ in range(rng.randrange(1, 16)):  # bytes flipped
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif how == 2:
        start = rng.randrange(len(data))  # a run overwritten with garbage
        for i in range(start, min(len(data), start + rng.randrange(1, 256))):
            data[i] = rng.randrange(256)
    else:
        data[rng.randrange(len(data)):] = os.urandom(rng.randrange(1, 64))  # new tail
    with open(out_path, "wb") as f:
        f.write(data)


def bad_inputs(daemon, sources, root, count, seed):
    """Loads `count` corrupted checkpoints; returns (tried, unexpected codes)."""
    rng = random.Random(seed)
    unexpected = []
    for i in range(count):
        path = os.path.join(root, "bad-%d.bin" % i)
        corrupt(rng.choice(sources), rng, path)
        target, cast = rng.choice(TARGETS), rng.choice(CASTS)
        try:
            model = daemon.load(path, target, cast=cast, timeout=30)
            daemon.read_tensors(model.model_id, timeout=30)
            daemon.stub.Unload(harness.pb.UnloadRequest(model_id=model.model_id), timeout=30)
        except grpc.RpcError as error:
            if error.code() not in EXPECTED_BAD:
                unexpected.append((path, error.code(), (error.details() or "")[:300]))
        os.unlink(path)
        if not daemon.alive():
            unexpected.append((path, "daemon died", "".join(daemon.log[-5:])))
            break
    return count, unexpected


def prepare_models(fixtures, root):
    """Readable fixtures copied into the daemon's root."""
    models = []
    for name in sorted(os.listdir(fixtures)):
        if name.startswith("bad_") or name.endswith(".json"):
            continue
        shutil.copy(os.path.join(fixtures, name), os.path.join(root, name))
        models.append(os.path.join(root, name))
    return models


def resources(daemon):
    return {"fds": daemon.fds(), "rss_anon_mib": daemon.rss_anon_kib() / 1024.0,
            "segments": len(daemon.shm_segments())}


def run(args):
    harness.configure(args.weightd, args.package)
    sys.path.insert(0, args.package)
    root = tempfile.mkdtemp(prefix="weightd-soak-")
    daemon = Daemon(root)
    try:
        models = prepare_models(args.fixtures, root)
        soak = Soak(daemon, models, args.seed)
        soak.run(min(args.clients, 2), 1.0)  # warm-up: the daemon's pools and caches
        for model in daemon.stub.List(harness.pb.ListRequest()).models:
            daemon.stub.Unload(harness.pb.UnloadRequest(model_id=model.model_id, force=True))
        before = resources(daemon)
        soak = Soak(daemon, models, args.seed + 1)
        soak.run(args.clients, args.seconds)
        leases_gone = harness.wait_until(lambda: daemon.stats().active_leases == 0, 20)
        for model in daemon.stub.List(harness.pb.ListRequest()).models:
            daemon.stub.Unload(harness.pb.UnloadRequest(model_id=model.model_id, force=True))
        harness.wait_until(lambda: resources(daemon)["segments"] <= before["segments"], 10)
        after = resources(daemon)
        tried, bad_unexpected = bad_inputs(daemon, models, root, args.bad_inputs, args.seed)
        alive = daemon.alive() and daemon.serving()
        stop_seconds = daemon.stop()
    finally:
        daemon.kill()
        shutil.rmtree(root, ignore_errors=True)
    return {
        "clients": args.clients, "seconds": args.seconds, "requests": soak.requests,
        "p50_ms": percentile(soak.latencies, 0.5) * 1000,
        "p99_ms": percentile(soak.latencies, 0.99) * 1000,
        "unexpected": soak.unexpected, "leases_gone": leases_gone,
        "before": before, "after": after, "bad_inputs": tried,
        "bad_unexpected": bad_unexpected, "alive": alive, "stop_seconds": stop_seconds,
    }


def check(result):
    """The soak's invariants; returns the list of what broke."""
    problems = []
    if result["unexpected"]:
        problems.append("unexpected codes: %r" % result["unexpected"][:5])
    if not result["leases_gone"]:
        problems.append("leases left after every client closed")
    before, after = result["before"], result["after"]
    if after["fds"] > before["fds"] + 8:
        problems.append("descriptors grew %d -> %d" % (before["fds"], after["fds"]))
    if after["segments"] > before["segments"]:
        problems.append("segments grew %d -> %d" % (before["segments"], after["segments"]))
    if (not harness.UNDER_SANITIZER and
            after["rss_anon_mib"] > before["rss_anon_mib"] + 128):
        problems.append("anonymous memory grew %.0f -> %.0f MiB" %
                        (before["rss_anon_mib"], after["rss_anon_mib"]))
    if result["bad_unexpected"]:
        problems.append("bad inputs: %r" % result["bad_unexpected"][:5])
    if not result["alive"]:
        problems.append("the daemon stopped serving")
    return problems


def hardening_suite(args):
    """(passed, total) of the hardening suite's cases."""
    here = os.path.dirname(os.path.abspath(__file__))
    run_ = subprocess.run([sys.executable, os.path.join(here, "hardening_test.py"),
                           args.weightd, args.package], capture_output=True, text=True)
    lines = [l for l in run_.stderr.splitlines() if " ... " in l]
    passed = sum(1 for l in lines if l.endswith(" ok") or l.endswith("skipped"))
    return passed, len(lines)


def report(result, faults):
    rows = [
        ("load held", "%d clients x %d s: %d requests, p50 %.1f ms, p99 %.1f ms" % (
            result["clients"], result["seconds"], result["requests"], result["p50_ms"],
            result["p99_ms"])),
        ("unexpected status codes", str(len(result["unexpected"]))),
        ("faults survived", "%d/%d (tests/hardening/hardening_test.py)" % faults),
        ("bad inputs tried", "%d, %d crashes, %d unexpected codes" % (
            result["bad_inputs"], 0 if result["alive"] else 1,
            len(result["bad_unexpected"]))),
        ("nothing lost", "fds %d -> %d, anon memory %.0f -> %.0f MiB, segments %d -> %d, "
         "leases at the end: %s" % (
             result["before"]["fds"], result["after"]["fds"],
             result["before"]["rss_anon_mib"], result["after"]["rss_anon_mib"],
             result["before"]["segments"], result["after"]["segments"],
             "0" if result["leases_gone"] else "some")),
        ("SIGTERM at the end", "stopped in %.2f s" % result["stop_seconds"]),
    ]
    width = max(len(r[0]) for r in rows)
    print("| %-*s | %s |" % (width, "what", "measured"))
    print("| %s | --- |" % ("-" * width))
    for name, value in rows:
        print("| %-*s | %s |" % (width, name, value))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("weightd")
    parser.add_argument("package")
    parser.add_argument("fixtures")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--bad_inputs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    args.weightd = os.path.abspath(args.weightd)
    args.package = os.path.abspath(args.package)
    args.fixtures = os.path.abspath(args.fixtures)
    print("soak seed %d" % args.seed, file=sys.stderr)
    result = run(args)
    problems = check(result)
    if args.report:
        report(result, hardening_suite(args))
    for problem in problems:
        print("FAILED: " + problem, file=sys.stderr)
    if not problems:
        print("soak: %d requests, no unexpected codes, nothing lost" % result["requests"],
              file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
