"""The daemon with the Python client against real PyTorch.

Starts bazel-bin's weightd on a temporary Unix socket, writes fresh checkpoints with real torch
(zip and legacy torch.save, nested training checkpoints, views, TorchScript with extra files),
and checks that every tensor the Python client gets equals what torch.load / torch.jit.load
return: values, dtype, shape, stride; and that weightd.load returns what torch.load returns
(whole trees: containers, key types, Parameters, shared storages, every map_location form),
weightd.jit_load_state what torch.jit.load(...).state_dict() does, and load_into fills modules. Also: one read for two client processes, a killed
client's lease going away, and (where a CUDA GPU exists) CUDA tensors through IPC handles.

Usage: python_client_test.py WEIGHTD_BINARY PYTHON_PACKAGE_DIR [FIXTURES_DIR]
"""
import collections
import inspect
import os
import re
import subprocess
import sys
import tempfile
import time
import unittest

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

import daemon_case

FIXTURES = None
HAS_ASSIGN = torch is not None and "assign" in inspect.signature(
    torch.nn.Module.load_state_dict).parameters
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


class FixturesDaemonTestCase(daemon_case.DaemonTestCase):
    @classmethod
    def new_daemon(cls, root, extra=()):
        """Serves the fixtures too (the test_fixtures_* tests load them)."""
        fixtures = ["--model_root=" + FIXTURES] if FIXTURES else []
        return super().new_daemon(root, extra=[*extra, *fixtures])


@unittest.skipIf(torch is None, "torch is not importable by " + sys.executable)
class PythonClientTest(FixturesDaemonTestCase):
    @classmethod
    def setUpClass(cls):
        root = tempfile.mkdtemp(prefix="weightd-models-")
        torch.manual_seed(int(time.time()))
        cls.files = cls.write_checkpoints(root)
        cls.start_daemon(root)

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

    def test_packed_description_equals_the_repeated_one_for_every_fixture(self):
        if not FIXTURES:
            self.skipTest("no fixtures directory")
        from weightd import _model
        numpy_client = self.weightd.Client(self.daemon.address, backend="numpy")
        self.addCleanup(numpy_client.close)
        checked = 0
        for entry in sorted(os.listdir(FIXTURES)):
            path = os.path.join(FIXTURES, entry)
            if entry.endswith(".json") or "bad" in entry:
                continue
            for device, cast in [("cpu", None), ("cuda:0", None), ("meta", None),
                                 ("cpu", "bfloat16")]:
                with self.subTest(entry=entry, device=device, cast=cast):
                    client = self.client
                    try:
                        got = client.load(path, device=device, dtype=cast)
                    except self.weightd.UnsupportedDtypeError:  # float8 before torch 2.1
                        client = numpy_client
                        got = client.load(path, device=device, dtype=cast)
                    self.assertIsNotNone(got._table, "the daemon sent no packed table")
                    repeated = client.describe(got.model_id)  # the repeated form
                    self.assertGreater(len(repeated.tensors), 0)
                    table = got._table
                    self.assertEqual([table.tensor(i) for i in range(len(table))],
                                     list(repeated.tensors))
                    pairs, anchors, none = _model.materialize(
                        repeated, client._backend, torch=torch)
                    want = dict(pairs)
                    del pairs
                    self.assertIsNone(none)
                    self.assertEqual(list(got), list(want))
                    for name, tensor in want.items():
                        if client is numpy_client:
                            if isinstance(tensor, self.weightd.TensorSpec):
                                self.assertEqual(got[name], tensor, name)
                                continue
                            self.assertEqual((got[name].dtype, got[name].shape,
                                              got[name].strides),
                                             (tensor.dtype, tensor.shape, tensor.strides), name)
                            self.assertEqual(got[name].tobytes(), tensor.tobytes(), name)
                            continue
                        self.assertEqual(got[name].storage_offset(), tensor.storage_offset(),
                                         name)
                        if tensor.is_meta:
                            self.assertTrue(got[name].is_meta, name)
                            self.assertEqual(got[name].shape, tensor.shape, name)
                            continue
                        same_tensor(self, f"{entry}:{name}", got[name], tensor)
                        self.assertEqual(got[name].data_ptr(), tensor.data_ptr(), name)
                    # Expanded on demand into the same messages.
                    self.assertEqual(list(got.description.tensors), list(repeated.tensors))
                    del want, anchors
            checked += 1
        self.assertGreater(checked, 5)

    def test_two_processes_read_once(self):
        runs, stats = self.load_in_two_processes(self.path("training.pt"))
        for done in runs:
            self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(stats.loads, 1)
        self.assertEqual(stats.cache_hits, 1)

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
        daemon = self.new_daemon(self.root, extra=["--fake_gpus=2"])
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
        # Views of the file: load() returns before the lease is granted; the client's next
        # call (stats) waits for it.
        code = ("import sys, time, weightd; c = weightd.Client(sys.argv[1]); "
                "t = c.load(sys.argv[2], device='cpu'); c.stats(); print('leased', flush=True); "
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
        daemon = self.new_daemon(self.root)
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


# -- weightd.load: what torch.load returns ---------------------------------------------------

SAVABLE_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8,
                  torch.int8, torch.int16, torch.int32, torch.int64, torch.bool,
                  torch.complex64, torch.complex128] if torch is not None else []


def random_tensor(rng, dtype):
    shape = [rng.randint(0, 4) if rng.random() < 0.1 else rng.randint(1, 5)
             for _ in range(rng.randint(0, 3))]
    if dtype == torch.bool:
        return torch.rand(shape) > 0.5
    if dtype.is_floating_point or dtype.is_complex:
        return torch.randn(shape, dtype=dtype)
    low, high = (0, 255) if dtype == torch.uint8 else (-100, 100)
    return torch.randint(low, high, shape, dtype=dtype)


def random_checkpoint(rng, unsafe=False):
    """Nested containers over tensors of every savable dtype: dicts with int and tuple keys,
    OrderedDicts (one a real state_dict, with _metadata), lists, tuples, views sharing one
    storage, Parameters, and primitives. Floats, bytes and sets only where `unsafe`: torch
    1.13's weights-only unpickler refuses BINFLOAT, _codecs.encode and builtins.set."""
    base = torch.randn(6, 8)
    views = [base, base.t(), base[2:4, 1:7], base[:, 3], base.view(48)[5:20:3]]
    rng.shuffle(views)
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    tensors = [random_tensor(rng, rng.choice(SAVABLE_DTYPES)) for _ in range(rng.randint(3, 8))]
    primitives = [None, True, False, 0, -7, 2 ** 40, -2 ** 63, 2 ** 70, "", "text é"]
    if unsafe:
        primitives += [0.5, -0.0, float("inf"), float("nan"), 1e300, b"\x00\xff bytes",
                       bytearray(b"ba"), complex(1, -2), {1, 2, 3}, frozenset(["f"])]
    value = {
        "state_dict": module.state_dict(),
        "dtypes": collections.OrderedDict((str(d), random_tensor(rng, d))
                                          for d in SAVABLE_DTYPES),
        "views": views,
        "shared": (views[0], {"again": views[1]}),
        1: tensors[0], 2: "two", (3, "x"): [tensors[1], ()], (): tensors[2:],
        "param": torch.nn.Parameter(torch.randn(2, 3)),
        "frozen": torch.nn.Parameter(torch.randn(2), requires_grad=False),
        "grad": torch.randn(3).requires_grad_(),
        "primitives": primitives,
        "nested": [[{"deep": (rng.randint(0, 9), [tensors[-1]])}]],
        "ordered": collections.OrderedDict([("b", 1), ("a", [2, (3,)])]),
        "__marker_like__": {"__tensor__": "not a tensor", "__tuple__": [1]},
    }
    if unsafe:
        value[(1.5, b"k")] = {1.5: "x", True: "y", None: "z", frozenset([2]): "f"}
    items = list(value.items())
    rng.shuffle(items)
    return dict(items)


def storage_key(tensor):
    return (tensor.device.type, tensor.storage().data_ptr())


def assert_same_tree(test, got, want, where="root", storages=None):
    """got equals want in structure, types, keys (order too), tensors (Parameter or not,
    requires_grad, dtype, shape, stride, values) and storage sharing."""
    top = storages is None
    if top:
        storages = {}
    test.assertIs(type(got), type(want), where)
    if isinstance(want, torch.Tensor):
        test.assertEqual(got.requires_grad, want.requires_grad, where)
        test.assertEqual(got.storage_offset(), want.storage_offset(), where)
        same_tensor(test, where, got, want)
        if want.numel():
            # One storage in torch.load's answer is one storage in ours, and no other.
            seen = storages.setdefault(storage_key(want), storage_key(got))
            test.assertEqual(seen, storage_key(got), where + ": storage sharing differs")
    elif isinstance(want, dict):
        test.assertEqual(list(got.keys()), list(want.keys()), where)
        test.assertEqual(getattr(got, "__dict__", {}), getattr(want, "__dict__", {}),
                         where + ": attributes (_metadata)")
        for key in want:
            assert_same_tree(test, got[key], want[key], "%s[%r]" % (where, key), storages)
    elif isinstance(want, (list, tuple)):
        test.assertEqual(len(got), len(want), where)
        for i, (a, b) in enumerate(zip(got, want)):
            assert_same_tree(test, a, b, "%s[%d]" % (where, i), storages)
    elif isinstance(want, float) and want != want:
        test.assertNotEqual(got, got, where)  # nan
    else:
        test.assertEqual(got, want, where)
        if isinstance(want, float):
            test.assertEqual(str(got), str(want), where)  # -0.0
    if top:
        test.assertEqual(len(set(storages.values())), len(storages),
                         "two of torch.load's storages are one of weightd's")


# Run in a subprocess: compares weightd.load with torch.load(weights_only=False), which runs
# the file's pickle code, in a process of its own. argv: address, path, test module dir.
_COMPARE_UNSAFE = r"""
import sys, unittest
sys.path.insert(0, sys.argv[3])
import torch, weightd, python_client_test as t
case = unittest.TestCase()
got = weightd.load(sys.argv[2], client=weightd.Client(sys.argv[1]))
want = torch.load(sys.argv[2], weights_only=False)
t.assert_same_tree(case, got, want)
print("same")
"""


@unittest.skipIf(torch is None, "torch is not importable by " + sys.executable)
class TorchLoadTest(FixturesDaemonTestCase):
    @classmethod
    def setUpClass(cls):
        import random
        root = tempfile.mkdtemp(prefix="weightd-load-")
        seed = int(time.time() * 1000)
        print("TorchLoadTest seed", seed, file=sys.stderr)
        cls.rng = random.Random(seed)
        torch.manual_seed(seed)
        cls.start_daemon(root)

    def save(self, name, value, **kwargs):
        path = os.path.join(self.root, name)
        torch.save(value, path, **kwargs)
        return path

    def load(self, path, *args, **kwargs):
        return self.weightd.load(path, *args, client=self.client, **kwargs)

    def test_random_checkpoints_equal_torch_load(self):
        for i in range(4):
            legacy = i % 2 == 1
            path = self.save("random%d.pt" % i, random_checkpoint(self.rng),
                             _use_new_zipfile_serialization=not legacy)
            with self.subTest(path=path, legacy=legacy):
                want = torch.load(path, weights_only=True)
                assert_same_tree(self, self.load(path), want)

    def test_default_client_is_weightd_address(self):
        path = self.save("default.pt", {"w": torch.randn(3), "k": (1, 2)})
        code = ("import sys, torch, weightd; v = weightd.load(sys.argv[1]); "
                "assert v['k'] == (1, 2) and torch.equal(v['w'], torch.load(sys.argv[1])['w'])"
                "; print(weightd.default_client().address)")
        env = dict(os.environ, WEIGHTD_ADDRESS=self.daemon.address)
        done = subprocess.run([sys.executable, "-c", code, path], env=env, capture_output=True,
                              text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout.strip(), self.daemon.address)

    def test_every_map_location_form(self):
        path = self.save("maps.pt", random_checkpoint(self.rng))
        forms = ["cpu", torch.device("cpu"), {"cpu": "cpu"}, {}, {"cuda:5": "cpu"},
                 lambda storage, tag: storage, lambda storage, tag: None,
                 lambda storage, tag: storage.clone()]
        for form in forms:
            with self.subTest(map_location=form):
                want = torch.load(path, map_location=form, weights_only=True)
                assert_same_tree(self, self.load(path, form), want)

    def test_callable_sees_each_storage_once_with_its_saved_tag(self):
        state = collections.OrderedDict([("a", torch.randn(3, 4)), ("b", torch.randn(5)),
                                         ("c", torch.randn(2))])
        state["a_t"] = state["a"].t()
        original = torch.serialization.location_tag
        # Pretend the storages were saved on two GPUs (this host needs none to read them).
        torch.serialization.location_tag = (
            lambda storage: "cuda:1" if storage.nbytes() == 20 else "cuda:0")
        try:
            path = self.save("gpu_tags.pt", state)
        finally:
            torch.serialization.location_tag = original
        calls = {"torch": [], "weightd": []}

        def recorder(who):
            def relocate(storage, tag):
                calls[who].append((tag, storage.nbytes(), storage.device.type))
                return storage
            return relocate

        want = torch.load(path, map_location=recorder("torch"), weights_only=True)
        got = self.load(path, recorder("weightd"))
        assert_same_tree(self, got, want)
        self.assertEqual(sorted(calls["weightd"]), sorted(calls["torch"]))
        self.assertEqual(sorted(tag for tag, _, _ in calls["weightd"]),
                         ["cuda:0", "cuda:0", "cuda:1"])
        for form in [{"cuda:0": "cpu", "cuda:1": "cpu"}, "cpu"]:
            assert_same_tree(self, self.load(path, form),
                             torch.load(path, map_location=form, weights_only=True))
        # cuda:0 is the daemon's fake GPU here: tensors arrive in its shared memory.
        fake = self.load(path, "cuda:0")
        assert_same_tree(self, fake, torch.load(path, map_location="cpu", weights_only=True))

    def test_mmap_false_gives_private_writable_copies(self):
        path = self.save("copies.pt", random_checkpoint(self.rng))
        want = torch.load(path, weights_only=True)
        got = self.load(path, mmap=False)
        assert_same_tree(self, got, want)
        got["views"][0].add_(1)  # a mapped tensor would kill the process here
        self.assertTrue(torch.equal(self.load(path)["views"][0], want["views"][0]))

    def test_what_weights_only_refuses_equals_torch_load_in_a_subprocess(self):
        here = os.path.dirname(os.path.abspath(__file__))
        cases = [("proto4.pt", {"pickle_protocol": 4}), ("proto5.pt", {"pickle_protocol": 5}),
                 ("floats.pt", {}), ("floats_legacy.pt",
                                     {"_use_new_zipfile_serialization": False})]
        for name, kwargs in cases:
            path = self.save(name, random_checkpoint(self.rng, unsafe=True), **kwargs)
            with self.subTest(name=name):
                with self.assertRaises(Exception):
                    torch.load(path, weights_only=True)  # else this case proves nothing
                done = subprocess.run([sys.executable, "-c", _COMPARE_UNSAFE,
                                       self.daemon.address, path, here],
                                      capture_output=True, text=True, timeout=120)
                self.assertEqual(done.returncode, 0, done.stderr)
                self.assertEqual(done.stdout.strip(), "same")

    def test_big_endian_records_equal_what_was_saved(self):
        import zipfile
        state = collections.OrderedDict(
            (str(d), random_tensor(self.rng, d).reshape(-1)) for d in SAVABLE_DTYPES)
        state["float32_t"] = torch.randn(3, 4).t()
        state["nested"] = {7: (torch.arange(5, dtype=torch.int32),)}
        little = self.save("little.pt", state)
        # torch.save numbers storages in the order it meets them: this dict's order.
        # Big-endian complex numbers are two big-endian floats.
        itemsizes = [t.element_size() // (2 if t.is_complex() else 1)
                     for t in list(state.values())[:-1]] + [4]
        big = os.path.join(self.root, "big.pt")
        with zipfile.ZipFile(little) as src, zipfile.ZipFile(big, "w") as dst:
            prefix = src.namelist()[0].split("/")[0]
            for info in src.infolist():
                data = src.read(info)
                parent, _, leaf = info.filename.rpartition("/")
                if parent == prefix + "/data" and leaf.isdigit():
                    size = itemsizes[int(leaf)]
                    data = b"".join(data[i:i + size][::-1] for i in range(0, len(data), size))
                dst.writestr(info, data)
            dst.writestr(prefix + "/byteorder", "big")
        assert_same_tree(self, self.load(big), torch.load(little, weights_only=True))

    def test_fixtures_weights_only_reads_equal_torch_load(self):
        if not FIXTURES:
            self.skipTest("no fixtures directory")
        checked = []
        for entry in sorted(os.listdir(FIXTURES)):
            path = os.path.join(FIXTURES, entry)
            if not entry.endswith(".pt") or entry.startswith("bad"):
                continue
            if "big_endian" in entry and not TORCH_READS_BYTEORDER:
                continue
            try:
                want = torch.load(path, weights_only=True)
            except Exception:
                continue  # torchscript, floats (torch 1.13), protocol 4/5
            if not isinstance(want, (dict, list, tuple, torch.Tensor)):
                continue
            with self.subTest(fixture=entry):
                assert_same_tree(self, self.load(path), want)
            checked.append(entry)
        print("fixtures torch's weights-only mode reads:", checked, file=sys.stderr)
        self.assertGreater(len(checked), 0)

    def test_refusals(self):
        path = self.save("refuse.pt", {"w": torch.randn(2)})
        with self.assertRaisesRegex(ValueError, "never runs pickle code"):
            self.load(path, weights_only=False)
        import io
        with open(path, "rb") as f:
            in_memory = io.BytesIO(f.read())
        with self.assertRaisesRegex(TypeError, "no usable name"):
            self.load(in_memory)
        with open(path, "rb") as f:
            self.assertTrue(torch.equal(self.load(f)["w"], torch.load(path)["w"]))
            f.seek(3)
            with self.assertRaisesRegex(TypeError, "at byte 3"):
                self.load(f)
        scripted = os.path.join(self.root, "refuse_script.pt")
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), scripted)
        with self.assertRaisesRegex(ValueError, "jit_load_state"):
            self.load(scripted)
        with self.assertRaisesRegex(ValueError, "not a TorchScript archive"):
            self.weightd.jit_load_state(path, client=self.client)

    def test_jit_load_state_equals_torch_jit_load(self):
        module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
                                     torch.nn.BatchNorm1d(8),
                                     torch.nn.Sequential(torch.nn.Linear(8, 2)))
        path = os.path.join(self.root, "jit.pt")
        torch.jit.save(torch.jit.script(module.eval()), path,
                       _extra_files={"config.json": '{"a": 1}', "vocab.bin": b"\xff\x00"})
        want_extra = {"config.json": "", "vocab.bin": "", "absent.txt": "x"}
        want = torch.jit.load(path, _extra_files=want_extra).state_dict()
        got_extra = {"config.json": "", "vocab.bin": "", "absent.txt": "x"}
        got = self.weightd.jit_load_state(path, got_extra, client=self.client)
        assert_same_tree(self, got, want)
        self.assertEqual(got_extra, want_extra)

    def save_module(self, name):
        def build(device):
            return torch.nn.Sequential(torch.nn.Linear(4, 8, device=device),
                                       torch.nn.BatchNorm1d(8, device=device))
        source = build("cpu")
        source(torch.randn(5, 4))  # BatchNorm statistics move
        return build, source, self.save(name, {"model": source.state_dict(), "epoch": 3})

    def check_module(self, target, source, result):
        self.assertEqual((result.missing_keys, result.unexpected_keys), ([], []))
        want = source.state_dict()
        got = target.state_dict()
        self.assertEqual(list(got), list(want))
        for key in want:
            same_tensor(self, key, got[key], want[key])
        # The module works: the same outputs as the module that was saved.
        target.eval()
        source.eval()
        x = torch.randn(3, 4)
        self.assertTrue(torch.equal(target(x), source(x)))

    def test_load_into_a_meta_module_copies_without_assign(self):
        build, source, path = self.save_module("module_copy.pt")
        target = build("meta")
        result = self.weightd.load_into(target, path, prefix="model", assign=False,
                                        client=self.client)
        self.check_module(target, source, result)
        # A copy into memory of the module's own: writable.
        target[0].weight.data.add_(1)
        self.assertFalse(torch.equal(target[0].weight, source[0].weight))
        if not HAS_ASSIGN:
            with self.assertRaisesRegex(TypeError, "needs torch >= 2.1"):
                self.weightd.load_into(build("meta"), path, prefix="model", assign=True,
                                       client=self.client)
            # The default on this torch is the copy.
            target = build("meta")
            self.check_module(target, source, self.weightd.load_into(
                target, path, prefix="model", client=self.client))

    @unittest.skipUnless(HAS_ASSIGN, "load_state_dict(assign=True) needs torch >= 2.1; this "
                         "is torch %s (the copy path is tested)"
                         % (torch.__version__ if torch is not None else "absent"))
    def test_load_into_a_meta_module_assigns_without_copying(self):
        build, source, path = self.save_module("module_assign.pt")
        target = build("meta")
        result = self.weightd.load_into(target, path, prefix="model", client=self.client)
        self.check_module(target, source, result)
        # The module's tensors are the daemon's, not copies.
        served = self.client.load(path, tensors=["model"])
        for key, tensor in target.state_dict().items():
            self.assertEqual(tensor.data_ptr(), served["model." + key].data_ptr(), key)


if __name__ == "__main__":
    daemon_case.configure(sys.argv[1], sys.argv[2])
    if len(sys.argv) > 3 and os.path.isdir(sys.argv[3]):
        FIXTURES = os.path.abspath(sys.argv[3])
    unittest.main(argv=[sys.argv[0], "-v"])
