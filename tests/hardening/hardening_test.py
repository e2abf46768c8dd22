"""The hardening suite: each fault an operator or a hostile file can cause, against the real
daemon, asserting the clear error and that the daemon keeps serving everyone else.

Usage: hardening_test.py WEIGHTD_BINARY PYTHON_PACKAGE_DIR [unittest args]
"""
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import grpc

import harness
from harness import Daemon, float_bytes, wait_until, write_safetensors

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None


def code_of(call):
    """The gRPC status code `call()` fails with (None when it succeeds)."""
    try:
        call()
    except grpc.RpcError as error:
        return error.code(), error.details()
    return None, ""


class HardeningTest(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="weightd-hard-root-")
        self.daemons = []

    def tearDown(self):
        for daemon in self.daemons:
            daemon.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def start(self, *extra, wrap=None):
        daemon = Daemon(self.root, extra=extra, wrap=wrap)
        self.daemons.append(daemon)
        return daemon

    def checkpoint(self, name, floats=1 << 20, tensors=1, seed=1):
        path = os.path.join(self.root, name)
        write_safetensors(path, {f"t{i}": ("F32", [floats], float_bytes(floats, seed + i))
                                 for i in range(tensors)})
        return path

    def assert_still_serving(self, daemon):
        self.assertTrue(daemon.alive(), "".join(daemon.log[-20:]))
        self.assertTrue(daemon.serving())
        small = self.checkpoint(f"alive-{time.monotonic_ns()}.safetensors", floats=64)
        model = daemon.load(small, "cpu")
        self.assertEqual(len(daemon.read_tensors(model.model_id)["t0"]), 256)

    # --- files that change or are not files ----------------------------------------------

    def test_file_truncated_under_a_mapped_model_is_data_loss(self):
        daemon = self.start()
        path = self.checkpoint("latest.safetensors", floats=4 << 20)
        session, close = daemon.open_session()
        # Mapped and parsed, leased; its bytes come from the file.
        model = daemon.load(path, "meta", session=session)
        os.truncate(path, 4096)  # a trainer re-saving latest.safetensors
        code, details = code_of(lambda: daemon.read_tensors(model.model_id))
        # Either the read faults on the truncated mapping, or the file watcher has
        # already marked the model stale: a clear error naming the file both ways.
        self.assertIn(code, (grpc.StatusCode.DATA_LOSS,
                             grpc.StatusCode.FAILED_PRECONDITION), details)
        self.assertIn(path, details)
        self.assertIn("offset" if code == grpc.StatusCode.DATA_LOSS else "changed on disk",
                      details)
        # The watcher marks it stale in any case; a new load reads the new file.
        self.assertTrue(wait_until(lambda: any(
            m.stale for m in daemon.stub.List(harness.pb.ListRequest()).models), 10))
        code, details = code_of(lambda: daemon.load(path, "meta"))
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT, details)
        close()
        self.assert_still_serving(daemon)

    def test_host_copy_survives_the_file_being_truncated(self):
        daemon = self.start()
        path = self.checkpoint("copied.safetensors", floats=1 << 16, seed=3)
        session, close = daemon.open_session()
        model = daemon.load(path, "cpu", session=session, host_copy=True)
        self.assertTrue(all(b.HasField("shared_memory") for b in model.buffers), model.buffers)
        self.assertIn("copy", model.placement)
        os.truncate(path, 0)
        # The watcher marks the model stale, but its bytes are the daemon's own copy.
        self.assertTrue(wait_until(lambda: any(
            m.stale for m in daemon.stub.List(harness.pb.ListRequest()).models), 10))
        got = daemon.read_tensors(model.model_id)["t0"]
        self.assertEqual(bytes(got), float_bytes(1 << 16, 3))
        close()
        self.assert_still_serving(daemon)

    def test_file_truncated_during_a_gpu_cast_load_is_data_loss(self):
        daemon = self.start("--fake_gpu_copy_delay_us=20000", "--staging_chunk=64K")
        path = self.checkpoint("train.safetensors", floats=4 << 20)
        started = threading.Event()
        result = {}

        def load():
            result["code"] = code_of(lambda: daemon.load(
                path, "cuda:0", cast="bfloat16",
                on_progress=lambda p: p.bytes_done > 0 and started.set()))
        thread = threading.Thread(target=load)
        thread.start()
        self.assertTrue(started.wait(30))
        os.truncate(path, 4096)
        thread.join(60)
        code, details = result["code"]
        self.assertEqual(code, grpc.StatusCode.DATA_LOSS, details)
        self.assertIn(path, details)
        stats = daemon.stats()
        self.assertEqual(stats.models, 0)
        self.assertTrue(all(t.used_bytes == 0 for t in stats.tiers), stats)
        self.assert_still_serving(daemon)

    def test_rewrite_in_place_with_the_same_size_and_mtime_is_never_a_hit(self):
        daemon = self.start()
        path = self.checkpoint("ckpt.safetensors", floats=1024, seed=1)
        before = os.stat(path)
        first = daemon.load(path, "cpu")
        old = daemon.read_tensors(first.model_id)["t0"]
        # cp -p / rsync --inplace -t: new bytes, same size, mtime restored.
        self.checkpoint("ckpt.safetensors", floats=1024, seed=7)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        self.assertEqual(os.stat(path).st_mtime_ns, before.st_mtime_ns)
        again = daemon.load(path, "cpu")
        self.assertFalse(again.cache_hit)
        new = daemon.read_tensors(again.model_id)["t0"]
        self.assertNotEqual(bytes(old), bytes(new))
        self.assertEqual(bytes(new), float_bytes(1024, 7))
        # Cast copies agree with zero-copy views of the same model.
        cast = daemon.load(path, "cpu", cast="float32")
        self.assertEqual(bytes(daemon.read_tensors(cast.model_id)["t0"]), bytes(new))

    def test_fifo_and_special_files_are_refused_at_once(self):
        daemon = self.start()
        fifo = os.path.join(self.root, "pipe.pt")
        os.mkfifo(fifo)
        start = time.monotonic()
        code, details = code_of(lambda: daemon.load(fifo, "cpu", timeout=20))
        self.assertLess(time.monotonic() - start, 10)
        self.assertIn(code, (grpc.StatusCode.INVALID_ARGUMENT,
                             grpc.StatusCode.FAILED_PRECONDITION), details)
        self.assertIn("FIFO", details)
        os.mkdir(os.path.join(self.root, "dir.pt"))
        code, details = code_of(lambda: daemon.load(os.path.join(self.root, "dir.pt")))
        self.assertIsNotNone(code)
        self.assert_still_serving(daemon)
        self.assertLess(daemon.stop(), 10)

    # --- shared memory ------------------------------------------------------------------

    def test_full_dev_shm_is_resource_exhausted(self):
        if not harness.can_unshare_mount():
            self.skipTest("needs root and unshare -m to mount a small /dev/shm")
        daemon = self.start(wrap=["unshare", "-m", "sh", "-c",
                                  'mount -t tmpfs -o size=16m tmpfs /dev/shm && exec "$@"',
                                  "sh"])
        big = self.checkpoint("big.safetensors", floats=16 << 20)  # 64 MiB
        for target, cast in (("cpu", "bfloat16"), ("cuda:0", "")):
            code, details = code_of(lambda: daemon.load(big, target, cast=cast))
            self.assertEqual(code, grpc.StatusCode.RESOURCE_EXHAUSTED, (target, details))
            self.assertIn("free", details)
        small = self.checkpoint("small.safetensors", floats=1 << 16)
        model = daemon.load(small, "cpu", cast="bfloat16")  # what fits still loads
        self.assertEqual(len(daemon.read_tensors(model.model_id)["t0"]), 2 << 16)
        self.assert_still_serving(daemon)

    def test_segments_of_a_killed_daemon_are_reclaimed(self):
        first = self.start()
        path = self.checkpoint("cast.safetensors", floats=1 << 16)
        model = first.load(path, "cpu", cast="bfloat16")
        segments = {b.shared_memory.name.lstrip("/") for b in model.buffers
                    if b.HasField("shared_memory")}
        self.assertTrue(segments)
        self.assertTrue(segments <= harness.shm_names())
        first.kill()  # SIGKILL: nothing unlinks them
        # Not asserted that they are still there now: any daemon starting beside this test
        # (tests run in parallel) reclaims a dead instance's segments, which is the point.
        second = self.start()
        self.assertFalse(segments & harness.shm_names())
        self.assert_still_serving(second)

    # --- bounds -------------------------------------------------------------------------

    def test_many_placements_of_one_file_hold_one_descriptor(self):
        daemon = self.start()
        path = self.checkpoint("many.safetensors", floats=16, tensors=300)
        daemon.load(path, "cpu")
        before = daemon.fds()
        for i in range(300):
            daemon.load(path, "cpu", filters=[f"t{i}"])
        self.assertLessEqual(daemon.fds(), before + 4)
        self.assert_still_serving(daemon)

    @unittest.skipIf(harness.UNDER_SANITIZER, "sanitizers keep freed memory")
    def test_read_tensors_holds_one_chunk_per_stream(self):
        daemon = self.start()
        path = self.checkpoint("huge.safetensors", floats=32 << 20)  # one 128 MiB tensor
        model = daemon.load(path, "meta")  # bytes produced from the file
        baseline = daemon.rss_anon_kib()
        peak = [baseline]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], daemon.rss_anon_kib())
                time.sleep(0.002)
        sampler = threading.Thread(target=sample)
        sampler.start()
        errors = []

        def read():
            try:
                got = daemon.read_tensors(model.model_id, chunk_bytes=1 << 20)
                if len(got["t0"]) != 128 << 20:
                    errors.append(len(got["t0"]))
            except grpc.RpcError as error:
                errors.append(error)
        readers = [threading.Thread(target=read) for _ in range(3)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join()
        done.set()
        sampler.join()
        self.assertEqual(errors, [])
        # Three whole tensors would be 384 MiB; three streams of 1 MiB chunks hold a few.
        self.assertLess(peak[0] - baseline, 64 << 10, (baseline, peak[0]))

    def test_queued_loads_are_bounded_and_shutdown_answers_them(self):
        daemon = self.start("--max_concurrent_loads=1", "--max_queued_loads=2",
                            "--fake_gpu_copy_delay_us=20000", "--staging_chunk=64K")
        paths = [self.checkpoint(f"q{i}.safetensors", floats=1 << 18, seed=i)
                 for i in range(8)]
        codes, lock = [], threading.Lock()

        def load(path):
            code, details = code_of(lambda: daemon.load(path, "cuda:0", timeout=120))
            with lock:
                codes.append((code, details))
        threads = [threading.Thread(target=load, args=(p,)) for p in paths]
        for thread in threads:
            thread.start()
        self.assertTrue(wait_until(
            lambda: sum(1 for c, _ in codes if c == grpc.StatusCode.RESOURCE_EXHAUSTED) >= 5,
            30), codes)
        threads_before_stop = daemon.threads()
        stopped_in = daemon.stop()
        for thread in threads:
            thread.join(30)
        self.assertLess(stopped_in, 15)
        exhausted = [d for c, d in codes if c == grpc.StatusCode.RESOURCE_EXHAUSTED]
        self.assertGreaterEqual(len(exhausted), 5, codes)
        self.assertIn("load queue is full", exhausted[0])
        self.assertEqual(len(codes), 8)
        self.assertLess(threads_before_stop, 64)

    def test_one_gpu_has_one_copy_whatever_its_name(self):
        daemon = self.start()
        path = self.checkpoint("gpu.safetensors", floats=1 << 16)
        info = daemon.stub.ServerInfo(harness.pb.ServerInfoRequest())
        uuid = info.gpus[0].uuid
        ids = {daemon.load(path, name).model_id
               for name in ("cuda:0", "cuda", "cuda:00", "cuda:" + uuid)}
        self.assertEqual(len(ids), 1, ids)
        casts = {daemon.load(path, "cpu", cast=c).model_id
                 for c in ("bfloat16", "torch.bfloat16")}
        self.assertEqual(len(casts), 1)

    def test_format_hint_is_checked_on_a_hit(self):
        daemon = self.start()
        path = self.checkpoint("hint.safetensors", floats=64)
        daemon.load(path, "cpu")
        code, details = code_of(lambda: daemon.load(path, "cpu", hint="torch-zip"))
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT, details)
        self.assertIn("safetensors", details)

    # --- hostile checkpoints ------------------------------------------------------------

    @unittest.skipIf(torch is None, "needs torch")
    def test_huge_stride_zero_view_costs_what_the_file_holds(self):
        daemon = self.start()
        path = os.path.join(self.root, "expand.pt")
        # Through a file object closed here: torch.save(obj, path) may flush its
        # last bytes when the writer is collected, which the daemon's file
        # watcher rightly reports as a change.
        with open(path, "wb") as f:
            torch.save({"x": torch.ones(1).expand(2 ** 40)}, f)
        self.assertLess(os.path.getsize(path), 4096)
        model = daemon.load(path, "cpu")  # metadata and a view: fine
        start = time.monotonic()
        code, details = code_of(lambda: daemon.read_tensors(model.model_id, timeout=60))
        self.assertLess(time.monotonic() - start, 30)
        self.assertIsNotNone(code, "4 TiB of ones were streamed")
        self.assertIn("x", details)
        self.assert_still_serving(daemon)

    # --- tensor-parallel groups ---------------------------------------------------------

    def metrics(self, daemon):
        """{name: value} of the daemon's unlabelled /metrics samples."""
        import urllib.request
        line = next(l for l in daemon.log if "metrics on http://" in l)
        url = line.split("metrics on ")[1].split()[0].rstrip(";,")
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
        values = {}
        for row in text.splitlines():
            if row and not row.startswith("#") and "{" not in row:
                name, value = row.split()[:2]
                values[name] = float(value)
        return values

    def sharded_load(self, daemon, path, rank, world, rules, timeout=120):
        request = harness.pb.LoadRequest(path=path)
        request.placement.target = "cuda:%d" % rank
        request.shard.rank = rank
        request.shard.world_size = world
        for pattern, dim in rules:
            request.shard.rules.add(pattern=pattern, dim=dim)
        model = None
        for event in daemon.stub.Load(request, timeout=timeout):
            if event.HasField("model"):
                model = event.model
        return model

    def test_a_rank_killed_mid_load_leaves_the_others_their_slices(self):
        world, killed = 4, 2
        daemon = self.start("--fake_gpus=4", "--fake_gpu_copy_delay_us=20000",
                            "--staging_chunk=64K", "--metrics_address=127.0.0.1:0")
        rows, cols = 256, 1024  # 1 MiB matrices, split on dim 0 and dim 1
        tensors = {"rep": ("F32", [3 << 20], float_bytes(3 << 20, 7)),  # 12 MiB, 3 blocks
                   "col": ("F32", [rows, cols], float_bytes(rows * cols, 8)),
                   "row": ("F32", [rows, cols], float_bytes(rows * cols, 9))}
        path = os.path.join(self.root, "tp.safetensors")
        write_safetensors(path, tensors)
        rules = [("col", 0), ("row", 1)]

        def expected(name, rank):
            data = tensors[name][2]
            if name == "rep":
                return data
            if name == "col":
                part = len(data) // world
                return data[rank * part:(rank + 1) * part]
            width = cols // world * 4
            return b"".join(data[r * cols * 4 + rank * width:r * cols * 4 + (rank + 1) * width]
                            for r in range(rows))

        # The killed rank is its own client process, SIGKILLed once its load is under way.
        script = (
            "import sys\n"
            "sys.path.insert(0, sys.argv[1])\n"
            "import grpc\n"
            "from weightd._proto import weightd_pb2 as pb, weightd_pb2_grpc as pbg\n"
            "stub = pbg.WeightServiceStub(grpc.insecure_channel(sys.argv[2]))\n"
            "r = pb.LoadRequest(path=sys.argv[3])\n"
            "r.placement.target = 'cuda:%d' % int(sys.argv[4])\n"
            "r.shard.rank, r.shard.world_size = int(sys.argv[4]), int(sys.argv[5])\n"
            "r.shard.rules.add(pattern='col', dim=0)\n"
            "r.shard.rules.add(pattern='row', dim=1)\n"
            "for e in stub.Load(r, timeout=120):\n"
            "    if e.HasField('progress') and e.progress.bytes_done > 0:\n"
            "        print('started', flush=True)\n"
            "        break\n"
            "import time\n"
            "time.sleep(120)\n")
        victim = subprocess.Popen(
            [sys.executable, "-c", script, harness.PACKAGE_DIR, daemon.address, path,
             str(killed), str(world)], stdout=subprocess.PIPE, text=True)
        results = {}

        def load(rank):
            try:
                results[rank] = self.sharded_load(daemon, path, rank, world, rules)
            except grpc.RpcError as error:
                results[rank] = error
        threads = [threading.Thread(target=load, args=(r,)) for r in range(world)
                   if r != killed]
        for thread in threads:
            thread.start()
        self.assertEqual(victim.stdout.readline().strip(), "started")
        victim.kill()
        victim.wait(10)
        for thread in threads:
            thread.join(120)
        for rank in range(world):
            if rank == killed:
                continue
            model = results[rank]
            self.assertNotIsInstance(model, grpc.RpcError, model)
            got = daemon.read_tensors(model.model_id)
            for name in tensors:
                self.assertEqual(bytes(got[name]), expected(name, rank), (rank, name))
        # The killed rank's load is cancelled; no block stays kept for it.
        self.assertTrue(wait_until(
            lambda: self.metrics(daemon)["weightd_shared_read_held_bytes"] == 0, 30),
            self.metrics(daemon))
        gpus = {g.index: g.uuid for g in
                daemon.stub.ServerInfo(harness.pb.ServerInfoRequest()).gpus}
        self.assertTrue(wait_until(lambda: daemon.stats().models == world - 1, 30),
                        daemon.stats())
        stats = daemon.stats()
        tiers = {t.tier: t.used_bytes for t in stats.tiers}
        self.assertEqual(tiers[gpus[killed]], 0, stats)
        total = sum(len(t[2]) for t in tensors.values())
        self.assertLessEqual(stats.bytes_read, total)  # never more than once
        self.assertGreater(self.metrics(daemon)["weightd_shared_read_bytes_total"], 0)
        # Its retry, alone, gets its slices; what it keeps for ranks that will not come
        # is at most the replicated bytes, freed after the linger (unit-tested).
        model = self.sharded_load(daemon, path, killed, world, rules)
        got = daemon.read_tensors(model.model_id)
        for name in tensors:
            self.assertEqual(bytes(got[name]), expected(name, killed), name)
        self.assertLessEqual(self.metrics(daemon)["weightd_shared_read_held_bytes"],
                             len(tensors["rep"][2]))
        self.assert_still_serving(daemon)

    def test_a_burst_of_bad_shard_specs_is_refused_quickly(self):
        daemon = self.start("--fake_gpus=2")
        # Long names make a backtracking glob expensive.
        names = {("a" * 2000) + str(i): ("F32", [4], float_bytes(4, i)) for i in range(64)}
        path = os.path.join(self.root, "long_names.safetensors")
        write_safetensors(path, names)
        # A star then a long literal: the two-pointer matcher backtracks |literal| per
        # character of every name, for every rule, until the plan's step budget ends.
        pathological = "*" + "a" * 254 + "b"
        bad = [
            (dict(rank=2, world_size=2), [], "rank 2"),
            (dict(rank=-1, world_size=2), [], "rank -1"),
            (dict(rank=0, world_size=0), [("*", 0)], "world_size is 0"),
            (dict(rank=0, world_size=1 << 30), [], "world"),
            (dict(rank=0, world_size=2), [("x%d" % i, 0) for i in range(1025)], "rules"),
            (dict(rank=0, world_size=2), [("a" * 10240, 0)], "pattern"),
            (dict(rank=0, world_size=2), [("", 0)], "empty"),
            (dict(rank=0, world_size=2, rule_set="x" * 10240), [], "rule_set"),
            (dict(rank=0, world_size=2), [(pathological, 0)] * 1024, "too long to match"),
            (dict(rank=0, world_size=2), [("*a*", 5)], "on dim 5"),
            (dict(rank=0, world_size=3), [("*", 0)], "does not split evenly"),
        ]
        codes, lock = [], threading.Lock()

        def send(i):
            spec, rules, reason = bad[i % len(bad)]
            request = harness.pb.LoadRequest(path=path)
            request.placement.target = "cuda:%d" % (i % 2)
            for key, value in spec.items():
                setattr(request.shard, key, value)
            for pattern, dim in rules:
                request.shard.rules.add(pattern=pattern, dim=dim)
            code, details = code_of(lambda: list(daemon.stub.Load(request, timeout=60)))
            with lock:
                codes.append((code, details, reason))
        started = time.monotonic()
        threads = [threading.Thread(target=send, args=(i,)) for i in range(330)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        elapsed = time.monotonic() - started
        self.assertEqual(len(codes), 330)
        for code, details, reason in codes:
            self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT, (details, reason))
            self.assertIn(reason, details)
            self.assertLess(len(details), 4096)  # a 10 KB pattern is not echoed whole
        print("330 bad shard specs answered in %.2f s" % elapsed, file=sys.stderr)
        stats = daemon.stats()
        self.assertEqual(stats.models, 0)
        self.assertTrue(all(t.used_bytes == 0 for t in stats.tiers), stats)
        # Many stars are linear for this matcher: 256 such rules plan at once (no
        # name matches, every tensor is whole); 1024 of them would pass the step budget.
        start = time.monotonic()
        model = self.sharded_load(daemon, path, 0, 2, [("*a" * 127 + "*b", 0)] * 256)
        self.assertEqual(len(model.tensors), len(names))
        self.assertLess(time.monotonic() - start, 30)
        self.assert_still_serving(daemon)


def main():
    harness.configure(sys.argv[1], sys.argv[2])
    # The Python client suite's runner: one JUnit case per test for the results count.
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                    "python"))
    import run_tests
    loader = unittest.TestLoader()
    suite = (loader.loadTestsFromNames(sys.argv[3:], sys.modules[__name__]) if sys.argv[3:]
             else loader.loadTestsFromTestCase(HardeningTest))
    runner = unittest.TextTestRunner(verbosity=2, resultclass=run_tests.RecordingResult)
    started = time.monotonic()
    result = runner.run(suite)
    if os.environ.get("XML_OUTPUT_FILE"):
        run_tests.write_xml(os.environ["XML_OUTPUT_FILE"], result.cases,
                            time.monotonic() - started)
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
