"""The daemon with the Python client against real PyTorch.

Starts bazel-bin's weightd on a temporary Unix socket, writes fresh checkpoints with real torch
(zip and legacy torch.save, nested training checkpoints, views, TorchScript with extra files),
and checks that every tensor the Python client gets equals what torch.load / torch.jit.load
return: values, dtype, shape, stride. Also: one read for two client processes, a killed
client's lease going away, and (where a CUDA GPU exists) CUDA tensors through IPC handles.

Usage: python_client_test.py WEIGHTD_BINARY PYTHON_PACKAGE_DIR [FIXTURES_DIR]
"""
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

WEIGHTD = None
FIXTURES = None
# torch.load honours the zip `byteorder` record only in releases that write it (2.x).
TORCH_READS_BYTEORDER = torch is not None and re.search(
    r"""['"]byteorder['"]""", open(torch.serialization.__file__).read()) is not None


def flatten(value, prefix=""):
    """Dotted names of every tensor in a torch.load result (DESIGN.md's naming)."""
    out = collections.OrderedDict()
    if isinstance(value, torch.Tensor):
        out[prefix] = value
    elif isinstance(value, dict):
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            out.update(flatten(item, f"{prefix}.{index}" if prefix else str(index)))
    return out


def same_tensor(test, name, got, want):
    test.assertEqual(got.dtype, want.dtype, name)
    test.assertEqual(tuple(got.shape), tuple(want.shape), name)
    test.assertEqual(got.stride(), want.stride(), name)
    if want.is_quantized or want.dtype in (torch.bool,):
        test.assertTrue(torch.equal(got.cpu(), want.cpu()), name)
        return
    a = got.detach().cpu()
    b = want.detach().cpu()
    if a.dtype.is_complex:
        a, b = torch.view_as_real(a.resolve_conj()), torch.view_as_real(b.resolve_conj())
    test.assertTrue(torch.equal(a, b) or (a.is_floating_point() and
                                          torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))),
                    name)


class Daemon:
    def __init__(self, model_root, extra=()):
        self.dir = tempfile.mkdtemp(prefix="weightd-py-")
        self.socket = os.path.join(self.dir, "w.sock")
        self.address = "unix:" + self.socket
        args = [WEIGHTD, "--listen=" + self.address, "--model_root=" + model_root,
                "--metrics_address=", "--fake_gpus=1", *extra]
        if FIXTURES:
            args.append("--model_root=" + FIXTURES)
        self.process = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        seen = []
        for line in self.process.stderr:  # ends when the daemon exits
            seen.append(line)
            if "weightd ready" in line:
                break
        else:
            raise RuntimeError("weightd did not start:\n" + "".join(seen))
        # Keep draining the daemon's log so it never blocks on a full pipe.
        self.log = seen
        threading.Thread(target=lambda: self.log.extend(self.process.stderr),
                         daemon=True).start()

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=20)
        self.process.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@unittest.skipIf(torch is None, "torch is not importable by " + sys.executable)
class PythonClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="weightd-models-")
        torch.manual_seed(int(time.time()))
        cls.files = cls.write_checkpoints(cls.root)
        cls.daemon = Daemon(cls.root)
        import weightd
        cls.weightd = weightd
        cls.client = weightd.Client(cls.daemon.address)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.daemon.stop()
        shutil.rmtree(cls.root, ignore_errors=True)

    @staticmethod
    def write_checkpoints(root):
        files = {}
        base = torch.randn(6, 8)
        state = collections.OrderedDict(
            [("fc.weight", torch.randn(4, 3)), ("fc.bias", torch.randn(4)),
             ("emb.weight", torch.randn(10, 5).to(torch.bfloat16)),
             ("half", torch.randn(3, 2).half()), ("steps", torch.tensor(7)),
             ("mask", torch.rand(5) > 0.5), ("ids", torch.randint(0, 100, (2, 3))),
             ("view.t", base.t()), ("view.slice", base[2:4, 1:7]), ("view.base", base),
             ("expand", torch.randn(3, 1).expand(3, 4)), ("empty", torch.zeros(0, 3)),
             ("complex", torch.randn(3, dtype=torch.complex64))])
        files["state_dict.pt"] = state
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
                                    torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
        optimizer = torch.optim.Adam(model.parameters())
        model(torch.randn(3, 4)).sum().backward()
        optimizer.step()
        files["training.pt"] = {"model": model.state_dict(),
                                "optimizer": optimizer.state_dict(), "epoch": 3,
                                "config": {"lr": 0.001, "name": "run"},
                                "params": [torch.nn.Parameter(torch.randn(2, 2))]}
        for name, value in files.items():
            torch.save(value, os.path.join(root, name))
        torch.save(state, os.path.join(root, "legacy.pt"),
                   _use_new_zipfile_serialization=False)
        files["legacy.pt"] = state
        scripted = torch.jit.script(model.eval())
        torch.jit.save(scripted, os.path.join(root, "scripted.pt"),
                       _extra_files={"config.json": '{"layers": 4}',
                                     "vocab.bin": b"\xff\x00\x80binary"})
        many = collections.OrderedDict(
            (f"layers.{i}.weight", torch.randn(4)) for i in range(1000))
        torch.save(many, os.path.join(root, "many.pt"))
        files["many.pt"] = many
        return files

    def path(self, name):
        return os.path.join(self.root, name)

    def test_every_checkpoint_equals_torch_load(self):
        for name in ["state_dict.pt", "training.pt", "legacy.pt", "many.pt"]:
            with self.subTest(name=name):
                want = flatten(torch.load(self.path(name)))
                got = self.client.load(self.path(name), device="cpu")
                self.assertEqual(list(got.keys()), list(want.keys()))
                for key, tensor in want.items():
                    same_tensor(self, f"{name}:{key}", got[key], tensor)

    def test_fake_gpu_placement_equals_torch_load(self):
        want = flatten(torch.load(self.path("state_dict.pt")))
        got = self.client.load(self.path("state_dict.pt"), device="cuda:0")
        for key, tensor in want.items():
            same_tensor(self, key, got[key], tensor)

    def test_torchscript_equals_jit_state_dict(self):
        want = torch.jit.load(self.path("scripted.pt")).state_dict()
        got = self.client.load(self.path("scripted.pt"), device="cpu")
        self.assertEqual(sorted(got.keys()), sorted(want.keys()))
        for key, tensor in want.items():
            same_tensor(self, key, got[key], tensor)

    def test_torchscript_extra_files_equal_jit_load(self):
        # A binary (non-UTF-8) extra file used to make the daemon's answer
        # unreadable (a protobuf string must be UTF-8).
        want = {"config.json": "", "vocab.bin": ""}
        torch.jit.load(self.path("scripted.pt"), _extra_files=want)
        got = self.client.load(self.path("scripted.pt"), device="cpu")
        self.assertEqual(got.extra_file_bytes, want)
        self.assertEqual(got.extra_files, {"config.json": '{"layers": 4}',
                                           "vocab.bin": b"\xff\x00\x80binary"})

    def test_fixtures_equal_torch_load(self):
        if not FIXTURES:
            self.skipTest("no fixtures directory")
        checked = 0
        for entry in sorted(os.listdir(FIXTURES)):
            path = os.path.join(FIXTURES, entry)
            if not entry.endswith((".pt", ".pth", ".bin")) or "bad" in entry:
                continue
            if "big_endian" in entry and not TORCH_READS_BYTEORDER:
                continue  # this torch ignores the byteorder record and misreads the file
            try:
                want = flatten(torch.load(path))
            except Exception:  # torchscript, big-endian on this host, refused globals
                continue
            got = self.client.load(path, device="cpu")
            for key, tensor in want.items():
                same_tensor(self, f"{entry}:{key}", got[key], tensor)
            checked += 1
        self.assertGreater(checked, 0)

    def test_two_processes_read_once(self):
        daemon = Daemon(self.root)
        try:
            code = ("import sys, weightd; c = weightd.Client(sys.argv[1]); "
                    "t = c.load(sys.argv[2], device='cpu'); print(len(t))")
            for _ in range(2):
                subprocess.run([sys.executable, "-c", code, daemon.address,
                                self.path("training.pt")], check=True, capture_output=True)
            stats = self.weightd.Client(daemon.address).stats()
            self.assertEqual(stats.loads, 1)
            self.assertEqual(stats.cache_hits, 1)
        finally:
            daemon.stop()

    def test_saved_gpu_locations_and_map_location(self):
        """Storages saved on two GPUs land on those GPUs, or where map_location sends them."""
        path = self.path("saved_on_gpus.pt")
        state = collections.OrderedDict([("a.weight", torch.randn(3, 4)),
                                         ("b.weight", torch.randn(5))])
        original = torch.serialization.location_tag
        # Pretend the tensors lived on cuda:0 and cuda:1 when saved (this host has no GPU).
        torch.serialization.location_tag = (
            lambda storage: "cuda:1" if storage.nbytes() == 20 else "cuda:0")
        try:
            torch.save(state, path)
        finally:
            torch.serialization.location_tag = original
        want = torch.load(path, map_location="cpu")
        daemon = Daemon(self.root, extra=["--fake_gpus=2"])
        try:
            client = self.weightd.Client(daemon.address)
            for map_location, placed in [({}, {"a.weight": "cuda:0", "b.weight": "cuda:1"}),
                                         ({"cuda:1": "cuda:0"},
                                          {"a.weight": "cuda:0", "b.weight": "cuda:0"}),
                                         ("cpu", {"a.weight": "cpu", "b.weight": "cpu"})]:
                got = client.load(path, map_location=map_location)
                info = {t.name: (t.saved_location, t.placed_location)
                        for t in got.description.tensors}
                self.assertEqual(info["a.weight"][0], "cuda:0")
                self.assertEqual(info["b.weight"][0], "cuda:1")
                self.assertEqual({k: v[1] for k, v in info.items()}, placed)
                for key, tensor in want.items():
                    same_tensor(self, key, got[key], tensor)
            client.close()
        finally:
            daemon.stop()
        # A daemon with one GPU cannot honour the saved cuda:1, as torch.load cannot.
        with self.assertRaises(self.weightd.WeightdError) as caught:
            self.client.load(path, device="")
        self.assertIn("cuda:1", caught.exception.message)

    def test_relative_paths_are_the_clients(self):
        """A relative path means the client's working directory, not the daemon's."""
        code = ("import sys, weightd; c = weightd.Client(sys.argv[1]); "
                "print(len(c.load('many.pt', device='cpu')))")
        done = subprocess.run([sys.executable, "-c", code, self.daemon.address],
                              cwd=self.root, capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout.strip(), "1000")

    def test_process_exits_without_close(self):
        """A script that never closes its Client still exits (and its leases go with it)."""
        endings = ["", "del t", "del t; del c", "c.close()"]
        for ending in endings:
            with self.subTest(ending=ending):
                code = ("import sys, weightd; c = weightd.Client(sys.argv[1]); "
                        "t = c.load(sys.argv[2], device='cpu'); " + ending)
                done = subprocess.run([sys.executable, "-c", code, self.daemon.address,
                                       self.path("many.pt")], capture_output=True, text=True,
                                      timeout=60)
                self.assertEqual(done.returncode, 0, done.stderr)
        short_lived = ("import sys, weightd; "
                       "t = weightd.Client(sys.argv[1]).load(sys.argv[2], device='cpu')")
        done = subprocess.run([sys.executable, "-c", short_lived, self.daemon.address,
                               self.path("many.pt")], capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)

    def test_killed_client_loses_its_lease(self):
        code = ("import sys, time, weightd; c = weightd.Client(sys.argv[1]); "
                "t = c.load(sys.argv[2], device='cpu'); print('leased', flush=True); "
                "time.sleep(600)")
        child = subprocess.Popen([sys.executable, "-c", code, self.daemon.address,
                                  self.path("many.pt")], stdout=subprocess.PIPE, text=True)
        try:
            self.assertEqual(child.stdout.readline().strip(), "leased")
            before = self.client.stats().active_leases
            self.assertGreaterEqual(before, 1)
        finally:
            child.kill()
            child.wait()
        deadline = time.time() + 10
        while time.time() < deadline and self.client.stats().active_leases >= before:
            time.sleep(0.05)
        self.assertLess(self.client.stats().active_leases, before)

    @unittest.skipUnless(torch is not None and torch.cuda.is_available(), "no CUDA GPU")
    def test_cuda_tensors_through_ipc_equal_torch_load(self):
        daemon = Daemon(self.root)
        try:
            client = self.weightd.Client(daemon.address)
            want = flatten(torch.load(self.path("state_dict.pt"), map_location="cuda"))
            got = client.load(self.path("state_dict.pt"), device="cuda:0")
            for key, tensor in want.items():
                self.assertTrue(got[key].is_cuda, key)
                same_tensor(self, key, got[key], tensor)
            # A warm model of 1,000 tensors reaching a second client.
            client.load(self.path("many.pt"), device="cuda:0")
            second = self.weightd.Client(daemon.address)
            start = time.perf_counter()
            tensors = second.load(self.path("many.pt"), device="cuda:0")
            elapsed = time.perf_counter() - start
            self.assertEqual(len(tensors), 1000)
            print(f"warm 1,000-tensor model to a second client: {elapsed * 1000:.1f} ms",
                  file=sys.stderr)
        finally:
            daemon.stop()


if __name__ == "__main__":
    WEIGHTD = os.path.abspath(sys.argv[1])
    sys.path.insert(0, os.path.abspath(sys.argv[2]))
    os.environ["PYTHONPATH"] = os.path.abspath(sys.argv[2])
    if len(sys.argv) > 3 and os.path.isdir(sys.argv[3]):
        FIXTURES = os.path.abspath(sys.argv[3])
    unittest.main(argv=[sys.argv[0], "-v"])
