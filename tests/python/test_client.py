"""weightd.Client against the in-process fake daemon (no real daemon needed)."""
import gc
import os
import signal
import subprocess
import sys
import threading
import unittest
import warnings

import grpc
import numpy as np

import weightd
from weightd import _host
from fake_daemon import FakeDaemon

try:
    import torch
except ImportError:
    torch = None

needs_torch = unittest.skipIf(torch is None, "torch is not installed")


def _collect_until(predicate, daemon, timeout=10.0):
    gc.collect()
    return daemon.wait_for(predicate, timeout)


WRITER = r"""
import sys
sys.path.insert(0, sys.argv[1])
import weightd
model = weightd.Client(sys.argv[2], backend="torch").load(sys.argv[3])
print("writing", flush=True)
model["a.weight"].detach()[0, 0] = 1.0
print("wrote", flush=True)
"""


class ClientTestBase(unittest.TestCase):
    backend = None
    compact = False  # the daemon answers with the packed tensor table (weightd.proto)

    def setUp(self):
        self.daemon = FakeDaemon()
        self.daemon.compact = self.compact
        self.addCleanup(self.daemon.stop)
        self.model_id, self.fixture = self.daemon.add_fixture()
        self.client = weightd.Client(self.daemon.address, backend=self.backend, timeout=10)
        self.addCleanup(self.client.close)

    def load(self, **kw):
        return self.client.load(self.fixture.path, **kw)


@needs_torch
class TorchLoadTest(ClientTestBase):
    backend = "torch"

    def test_values_dtypes_geometry_and_order(self):
        model = self.load()
        self.assertIsInstance(model, dict)
        self.assertEqual(list(model), [t.name for t in self.fixture.tensors])
        for t in self.fixture.tensors:
            tensor = model[t.name]
            self.assertEqual(str(tensor.dtype), "torch." + t.dtype, t.name)
            self.assertEqual(list(tensor.shape), list(t.shape), t.name)
            if t.buffer_index >= 0 and tensor.numel() > 0:
                self.assertEqual(list(tensor.stride()), list(t.stride), t.name)
                self.assertEqual(tensor.storage_offset(), t.storage_offset, t.name)
            if t.buffer_index < 0 or t.dtype == "bfloat16":
                continue
            expected = torch.from_numpy(self.fixture.expected[t.name].copy())
            self.assertTrue(torch.equal(tensor, expected), "%s: %s != %s" % (t.name, tensor,
                                                                            expected))

    def test_strided_and_offset_views(self):
        model = self.load()
        s1 = torch.arange(20, dtype=torch.float32)
        self.assertTrue(torch.equal(model["a.weight_t"], s1.view(4, 5).t()))
        self.assertFalse(model["a.weight_t"].is_contiguous())
        self.assertTrue(torch.equal(model["b.window"], torch.tensor([[7., 8, 9], [12, 13, 14]])))
        self.assertEqual(model["b.window"].storage_offset(), 7)
        self.assertEqual(model["f.scalar"].dim(), 0)
        self.assertEqual(model["f.scalar"].item(), 2.718281828459045)
        self.assertEqual(model["c.int64"].tolist(), [-1, 2 ** 40, 7])

    def test_bfloat16_bool_meta_empty(self):
        model = self.load()
        self.assertEqual(model["d.bf16"].dtype, torch.bfloat16)
        self.assertTrue(torch.equal(model["d.bf16"].float(),
                                    torch.from_numpy(self.fixture.bf16_values)))
        self.assertEqual(model["e.mask"].tolist(), [True, False, True])
        meta = model["h.meta"]
        self.assertEqual(meta.device.type, "meta")
        self.assertEqual((meta.dtype, tuple(meta.shape)), (torch.float16, (2, 3)))
        self.assertEqual(tuple(model["g.empty"].shape), (0, 3))

    def test_zero_copy_over_file_and_segments(self):
        model = self.load()
        weight, weight_t = model["a.weight"], model["a.weight_t"]
        # Tensors of one storage share it, as torch.load's do.
        self.assertEqual(weight.data_ptr(), weight_t.data_ptr())
        self.assertEqual(weight.untyped_storage().data_ptr() if hasattr(weight, "untyped_storage")
                         else weight.storage().data_ptr(), weight_t.data_ptr())
        # Bytes written to the file show through: the tensor is a view of the mapping.
        with open(self.fixture.path, "r+b") as f:
            f.seek(self.fixture.storage_offsets["s1"])
            f.write(np.array([42.0], dtype="<f4").tobytes())
        self.assertEqual(weight[0, 0].item(), 42.0)
        self.assertEqual(weight_t[0, 0].item(), 42.0)
        # Same for the shared-memory segment and the fake GPU's segment.
        with open("/dev/shm/" + self.fixture.segments[0], "r+b") as f:
            f.seek(16)
            f.write(np.array([5.0], dtype="<f2").tobytes())
        self.assertEqual(model["s.half_t"][0, 0].item(), 5.0)
        with open("/dev/shm/" + self.fixture.segments[1], "r+b") as f:
            f.write(np.array([-3.0], dtype="<f4").tobytes())
        self.assertEqual(model["g.gpu"][0, 0].item(), -3.0)
        # A SHARED_MEMORY arena (the fake GPU's): CPU tensors.
        self.assertEqual(model["g.gpu"].device.type, "cpu")

    def test_requires_grad_and_model_attributes(self):
        model = self.load()
        self.assertTrue(model["a.weight"].requires_grad)
        self.assertFalse(model["a.weight_t"].requires_grad)
        self.assertEqual(model.model_id, self.model_id)
        self.assertEqual(model.format, "torch-zip")
        self.assertEqual(model.metadata, {"epoch": 3})
        # Text where the content is UTF-8, bytes where it is not.
        self.assertEqual(model.extra_files, {"note.txt": "hello", "blob.bin": b"\xff\x00\x01"})
        self.assertEqual(model.extra_file_bytes,
                         {"note.txt": b"hello", "blob.bin": b"\xff\x00\x01"})
        self.assertEqual(model.tensor_info("d.bf16").dtype, "bfloat16")

    def test_mapping_is_shared_between_loads(self):
        first, second = self.load(), self.load()
        self.assertEqual(first["a.weight"].data_ptr(), second["a.weight"].data_ptr())

    def test_building_warns_nothing(self):
        # torch.from_numpy warns for each read-only array; the client hands it arrays numpy
        # does not flag, over the same read-only mappings.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = self.load()
        self.assertEqual([str(w.message) for w in caught], [])
        self.assertEqual(model["e.mask"].tolist(), [True, False, True])

    def test_mapping_outlives_model_and_client_while_a_tensor_lives(self):
        tensor = self.load()["a.weight"]
        expected = self.fixture.expected["a.weight"].copy()
        self.client.close()
        gc.collect()
        self.assertTrue(torch.equal(tensor, torch.from_numpy(expected)))
        # The mapping cannot be closed under the tensor (a view of it is held).
        mapping = _host._maps[("file",) + _host._identity(os.stat(self.fixture.path))]
        with self.assertRaises(BufferError):
            mapping.close()

    def test_writing_a_file_view_faults_and_leaves_the_file(self):
        # Host views stay PROT_READ whatever numpy's flag says: a write kills the writer
        # (SIGSEGV) and changes nothing on disk.
        with open(self.fixture.path, "rb") as f:
            before = f.read()
        child = subprocess.run(
            [sys.executable, "-c", WRITER, os.path.dirname(weightd.__path__[0]),
             self.daemon.address, self.fixture.path],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(child.returncode, -signal.SIGSEGV, child.stderr)
        self.assertIn("writing", child.stdout)
        with open(self.fixture.path, "rb") as f:
            self.assertEqual(f.read(), before)

    def test_request_fields(self):
        seen = []
        self.load(device="meta", dtype=torch.bfloat16, tensors=["a", "c.int64"],
                  progress=lambda done, total: seen.append((done, total)))
        request = self.daemon.load_requests[-1]
        self.assertEqual(request.placement.target, "meta")
        self.assertEqual(request.cast_dtype, "bfloat16")
        self.assertEqual(list(request.tensor_filter), ["a", "c.int64"])
        self.assertEqual(seen, [(0, 1000), (500, 1000), (1000, 1000)])
        self.load(map_location={"cuda:1": "cuda:0"}, dtype="float16")
        request = self.daemon.load_requests[-1]
        self.assertEqual(dict(request.placement.remap), {"cuda:1": "cuda:0"})
        self.assertEqual(request.placement.target, "")
        self.assertEqual(request.cast_dtype, "float16")
        with self.assertRaises(ValueError):
            self.load(dtype="int8")

    def test_tensor_filter(self):
        model = self.load(tensors=["a"])
        self.assertEqual(list(model), ["a.weight", "a.weight_t"])

    def test_read_tensors_reassembles_chunks(self):
        tensors = self.client.read_tensors(self.model_id)
        self.assertEqual(list(tensors), [t.name for t in self.fixture.tensors])
        for t in self.fixture.tensors:
            got = tensors[t.name]
            self.assertEqual(list(got.shape), list(t.shape))
            if t.buffer_index < 0:
                self.assertEqual(got.device.type, "meta")
                continue
            self.assertTrue(got.is_contiguous())
            if t.dtype == "bfloat16":
                got = got.view(torch.int16)
                expected = torch.from_numpy(self.fixture.expected[t.name].view("<i2").copy())
            else:
                expected = torch.from_numpy(self.fixture.expected[t.name].copy())
            self.assertTrue(torch.equal(got, expected), t.name)
        some = self.client.read_tensors(self.model_id, names=["b.window"], chunk_bytes=7)
        self.assertEqual(some["b.window"].tolist(), [[7., 8, 9], [12, 13, 14]])


class LeaseTest(ClientTestBase):
    def test_lease_acquired_at_load_and_released_when_tensors_die(self):
        model = self.client.load(self.fixture.path)
        session = self.client.session_id
        self.assertTrue(session)
        self.assertEqual(self.daemon.leases[(session, self.model_id)], 1)
        weight = model["a.weight"]
        half = model["s.half_t"]
        del model
        gc.collect()
        # Tensors still alive: still leased.
        self.assertFalse(self.daemon.wait_for(
            lambda: (session, "release", self.model_id) in self.daemon.lease_log, 0.3))
        del weight
        gc.collect()
        self.assertFalse(self.daemon.wait_for(
            lambda: (session, "release", self.model_id) in self.daemon.lease_log, 0.3))
        del half
        self.assertTrue(_collect_until(
            lambda: self.daemon.leases[(session, self.model_id)] == 0, self.daemon))
        self.assertIn((session, "release", self.model_id), self.daemon.lease_log)
        self.assertNotIn(session, self.daemon.ended_sessions)

    def test_first_load_leases_on_the_stream_later_loads_in_load(self):
        self.daemon.open_after_load = True
        # The first load does not wait for the stream to open: it leases the model on the
        # stream once Load answered; later loads name the open session in Load.
        first = self.client.load(self.fixture.path)
        session = self.client.session_id
        self.assertEqual(self.daemon.load_requests[-1].lease_session, "")
        self.assertEqual(self.daemon.leases[(session, self.model_id)], 1)
        self.assertIn((session, "acquire", self.model_id), self.daemon.lease_log)
        second = self.client.load(self.fixture.path)
        self.assertEqual(self.daemon.load_requests[-1].lease_session, session)
        self.assertEqual(len(self.daemon.load_requests), 2)
        self.assertEqual(self.daemon.leases[(session, self.model_id)], 2)
        del first, second

    def test_model_evicted_before_the_stream_lease_is_loaded_again(self):
        self.daemon.open_after_load = True
        self.daemon.evict_once.add(self.model_id)
        model = self.client.load(self.fixture.path)
        session = self.client.session_id
        self.assertEqual([r.lease_session for r in self.daemon.load_requests], ["", session])
        self.assertEqual(self.daemon.leases[(session, self.model_id)], 1)
        self.assertEqual(model["c.int64"].tolist(), [-1, 2 ** 40, 7])
        del model
        self.assertTrue(_collect_until(
            lambda: self.daemon.leases[(session, self.model_id)] == 0, self.daemon))

    def test_model_evicted_with_its_buffers_is_loaded_again(self):
        self.daemon.open_after_load = True
        # The first answer names a shared-memory segment the eviction removed: building
        # fails, the refused lease says why, and the leased load succeeds.
        self.daemon.evict_once.add(self.model_id)
        calls = []

        def hook(request, description):
            calls.append(request.lease_session)
            if len(calls) == 1:
                description = type(description).FromString(description.SerializeToString())
                description.buffers[1].shared_memory.name = "/weightd-pytest-evicted"
            return description

        self.daemon.describe_hook = hook
        model = self.client.load(self.fixture.path)
        session = self.client.session_id
        self.assertEqual(calls, ["", session])
        self.assertEqual(self.daemon.leases[(session, self.model_id)], 1)
        self.assertEqual(len(model), len(self.fixture.tensors))
        del model

    def test_build_failure_after_the_stream_lease_releases_it(self):
        self.daemon.open_after_load = True
        def hook(request, description):
            description = type(description).FromString(description.SerializeToString())
            description.buffers[1].shared_memory.name = "/weightd-pytest-missing"
            return description

        self.daemon.describe_hook = hook
        with self.assertRaises(weightd.WeightdError) as caught:
            self.client.load(self.fixture.path)
        self.assertEqual(caught.exception.code, grpc.StatusCode.NOT_FOUND)
        self.assertIn("weightd-pytest-missing", caught.exception.message)
        session = self.client.session_id
        self.assertEqual(len(self.daemon.load_requests), 1)  # leased: no second load
        self.assertTrue(self.daemon.wait_for(
            lambda: (session, "release", self.model_id) in self.daemon.lease_log))
        self.assertEqual(self.daemon.leases[(session, self.model_id)], 0)

    def test_refused_lease_stream_fails_the_load(self):
        self.daemon.refuse_lease = grpc.StatusCode.PERMISSION_DENIED
        with self.assertRaises(weightd.WeightdError) as caught:
            self.client.load(self.fixture.path)
        self.assertEqual(caught.exception.code, grpc.StatusCode.PERMISSION_DENIED)
        self.assertIn("lease sessions refused", caught.exception.message)
        self.assertEqual(sum(self.daemon.leases.values()), 0)

    def test_abandoned_acquisition_is_released(self):
        self.client.load(self.fixture.path, tensors=["h.meta"])  # opens the session
        session = self.client._lease_session()
        acquisition = session.acquire(self.model_id)
        acquisition.abandon()  # before or after the daemon's answer: released either way
        self.assertTrue(self.daemon.wait_for(
            lambda: self.daemon.lease_log.count(
                (session.session_id, "release", self.model_id)) == 2))
        self.assertEqual(self.daemon.leases[(session.session_id, self.model_id)], 0)
        refused = session.acquire("model-unknown")
        self.daemon.evict_once.add("model-other")
        gone = session.acquire("model-other")
        self.assertTrue(refused.wait(10))
        self.assertFalse(gone.wait(10))
        self.assertIn("no model", gone.error)
        del refused

    def test_each_load_is_one_lease(self):
        first = self.client.load(self.fixture.path)
        second = self.client.load(self.fixture.path)
        session = self.client.session_id
        self.assertEqual(self.daemon.leases[(session, self.model_id)], 2)
        del first
        self.assertTrue(_collect_until(
            lambda: self.daemon.leases[(session, self.model_id)] == 1, self.daemon))
        del second
        self.assertTrue(_collect_until(
            lambda: self.daemon.leases[(session, self.model_id)] == 0, self.daemon))

    def _serve_file_views_only(self):
        """Loads answer with the fixture's file buffer alone (its shared-memory and GPU
        buffers dropped): a model made only of views of the checkpoint file."""
        def hook(request, description):
            description = type(description).FromString(description.SerializeToString())
            del description.buffers[1:]
            return description

        self.daemon.describe_hook = hook
        return ["a", "c"]  # the fixture's tensors in its file buffer

    def test_file_views_return_before_the_lease_is_granted(self):
        names = self._serve_file_views_only()
        self.daemon.acquire_gate = threading.Event()
        model = self.client.load(self.fixture.path, tensors=names)
        # Returned with the daemon's answer still held back: no lease yet, and the stream
        # opened only after the Load (its threads would compete with Load and the build).
        self.assertEqual(self.daemon.sessions_at_load, [0])
        self.assertEqual(self.daemon.load_requests[-1].lease_session, "")
        self.assertEqual(sum(self.daemon.leases.values()), 0)
        self.assertEqual(model["c.int64"].tolist(), [-1, 2 ** 40, 7])
        self.daemon.acquire_gate.set()
        # The client's own next call waits for the answer: the lease is there.
        self.client.stats()
        session = self.client.session_id
        self.assertEqual(self.daemon.leases[(session, self.model_id)], 1)
        self.assertEqual(self.client.list()[0].lease_count, 1)
        with self.assertRaises(weightd.WeightdError) as caught:
            self.client.unload(self.model_id)
        self.assertEqual(caught.exception.code, grpc.StatusCode.FAILED_PRECONDITION)
        del model
        self.assertTrue(_collect_until(
            lambda: self.daemon.leases[(session, self.model_id)] == 0, self.daemon))
        self.assertEqual(self.daemon.lease_log.count((session, "release", self.model_id)), 1)

    def test_file_views_dropped_before_the_lease_is_granted_release_it(self):
        names = self._serve_file_views_only()
        self.daemon.acquire_gate = threading.Event()
        model = self.client.load(self.fixture.path, tensors=names)
        del model
        gc.collect()
        self.daemon.acquire_gate.set()
        self.assertTrue(self.daemon.wait_for(
            lambda: [e[1] for e in self.daemon.lease_log] == ["acquire", "release"]))
        self.assertEqual(sum(self.daemon.leases.values()), 0)

    def test_file_views_whose_lease_is_refused_stay_valid(self):
        names = self._serve_file_views_only()
        self.daemon.evict_once.add(self.model_id)  # gone from the cache before the acquire
        model = self.client.load(self.fixture.path, tensors=names)
        self.client.stats()  # the refusal has come
        self.assertEqual(sum(self.daemon.leases.values()), 0)
        self.assertEqual(len(self.daemon.load_requests), 1)  # not loaded again
        self.assertEqual(model["c.int64"].tolist(), [-1, 2 ** 40, 7])
        del model
        gc.collect()
        # Nothing to release: no release is sent for the refused lease.
        self.assertFalse(self.daemon.wait_for(
            lambda: any(e[1] == "release" for e in self.daemon.lease_log), 0.3))

    def test_file_view_loads_on_an_open_session_lease_in_load(self):
        names = self._serve_file_views_only()
        first = self.client.load(self.fixture.path, tensors=names)
        self.client.stats()  # the first load's lease answered: the session is open
        session = self.client.session_id
        second = self.client.load(self.fixture.path, tensors=names)
        self.assertEqual(self.daemon.load_requests[-1].lease_session, session)
        self.assertEqual(self.daemon.leases[(session, self.model_id)], 2)
        del first, second

    def test_meta_only_load_releases_at_once(self):
        self.client.load(self.fixture.path, tensors=["h.meta"])
        session = self.client.session_id
        self.assertTrue(self.daemon.wait_for(
            lambda: self.daemon.leases[(session, self.model_id)] == 0))

    def test_close_ends_the_session(self):
        model = self.client.load(self.fixture.path)
        session = self.client.session_id
        self.client.close()
        self.assertTrue(self.daemon.wait_for(lambda: session in self.daemon.ended_sessions))
        self.assertEqual(self.daemon.leases[(session, self.model_id)], 0)
        self.assertGreater(len(model), 0)  # tensors stay readable after close
        del model
        gc.collect()

    def test_dropped_client_keeps_its_session_while_tensors_live(self):
        model = weightd.Client(self.daemon.address).load(self.fixture.path)
        gc.collect()
        session = [entry[0] for entry in self.daemon.lease_log if entry[1] == "acquire"][-1]
        self.assertFalse(self.daemon.wait_for(
            lambda: session in self.daemon.ended_sessions, 0.3))
        self.assertEqual(self.daemon.leases[(session, self.model_id)], 1)
        self.assertEqual(model["c.int64"].tolist() if hasattr(model["c.int64"], "tolist")
                         else None, [-1, 2 ** 40, 7])
        del model
        self.assertTrue(_collect_until(lambda: session in self.daemon.ended_sessions,
                                       self.daemon))
        self.assertEqual(self.daemon.leases[(session, self.model_id)], 0)

    def test_unload_refused_while_leased(self):
        model = self.client.load(self.fixture.path)
        with self.assertRaises(weightd.WeightdError) as caught:
            self.client.unload(self.model_id)
        self.assertEqual(caught.exception.code, grpc.StatusCode.FAILED_PRECONDITION)
        self.assertIn("leased", caught.exception.message)
        self.assertEqual(self.client.unload(self.model_id, force=True), 123)
        del model

    def test_file_changed_on_disk(self):
        st = os.stat(self.fixture.path)
        os.utime(self.fixture.path, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
        with self.assertRaises(weightd.FileChangedError) as caught:
            self.client.load(self.fixture.path)
        self.assertIn("file changed on disk", str(caught.exception))
        self.assertIn(self.fixture.path, str(caught.exception))
        session = self.client.session_id
        self.assertTrue(self.daemon.wait_for(
            lambda: self.daemon.leases[(session, self.model_id)] == 0))


class ErrorTest(ClientTestBase):
    def test_permission_denied_outside_roots(self):
        with self.assertRaises(weightd.WeightdError) as caught:
            self.client.load("/etc/passwd")
        self.assertEqual(caught.exception.code, grpc.StatusCode.PERMISSION_DENIED)
        self.assertIn("/etc/passwd", caught.exception.message)
        self.assertIn("outside the model roots", str(caught.exception))

    def test_not_found_and_invalid(self):
        with self.assertRaises(weightd.WeightdError) as caught:
            self.client.load(os.path.join(self.daemon.root, "missing.pt"))
        self.assertEqual(caught.exception.code, grpc.StatusCode.NOT_FOUND)
        junk = os.path.join(self.daemon.root, "junk.pt")
        with open(junk, "wb") as f:
            f.write(b"junk")
        with self.assertRaises(weightd.WeightdError) as caught:
            self.client.load(junk)
        self.assertEqual(caught.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        with self.assertRaises(weightd.WeightdError) as caught:
            self.client.describe("nope")
        self.assertEqual(caught.exception.code, grpc.StatusCode.NOT_FOUND)

    def test_tensor_past_its_buffer(self):
        self.fixture.tensors[0].shape[0] = 400
        self.fixture.tensors[0].byte_size = 400 * 5 * 4
        with self.assertRaises(weightd.WeightdError) as caught:
            self.client.load(self.fixture.path)
        self.assertIn("extends past its buffer", str(caught.exception))

    def test_unavailable(self):
        client = weightd.Client("unix:/nonexistent/weightd.sock", timeout=2)
        with self.assertRaises(weightd.WeightdError) as caught:
            client.list()
        self.assertEqual(caught.exception.code, grpc.StatusCode.UNAVAILABLE)
        with self.assertRaises(weightd.WeightdError) as caught:
            client.load(self.fixture.path)
        self.assertEqual(caught.exception.code, grpc.StatusCode.UNAVAILABLE)
        client.close()


class UnaryCallTest(ClientTestBase):
    def test_list_describe_stats_info_health(self):
        self.assertEqual([m.model_id for m in self.client.list()], [self.model_id])
        self.assertEqual(self.client.describe(self.model_id).path, self.fixture.path)
        self.assertEqual(self.client.stats().models, 1)
        self.assertEqual(self.client.server_info().version, "fake-1")
        self.assertEqual(self.client.health(), "SERVING")

    def test_context_manager_and_env_address(self):
        old = os.environ.get("WEIGHTD_ADDRESS")
        os.environ["WEIGHTD_ADDRESS"] = self.daemon.address
        try:
            with weightd.Client() as client:
                self.assertEqual(client.address, self.daemon.address)
                self.assertEqual(len(client.list()), 1)
        finally:
            if old is None:
                del os.environ["WEIGHTD_ADDRESS"]
            else:
                os.environ["WEIGHTD_ADDRESS"] = old
        self.assertEqual(weightd.Client("/tmp/x.sock").address, "unix:/tmp/x.sock")


class NumpyLoadTest(ClientTestBase):
    backend = "numpy"

    def test_numpy_arrays(self):
        model = self.load()
        self.assertEqual(model.backend, "numpy")
        for t in self.fixture.tensors:
            value = model[t.name]
            if t.buffer_index < 0:
                self.assertIsInstance(value, weightd.TensorSpec)
                self.assertEqual(value.shape, (2, 3))
                continue
            self.assertIsInstance(value, np.ndarray)
            self.assertFalse(value.flags.writeable, t.name)
            np.testing.assert_array_equal(value, self.fixture.expected[t.name], t.name)
        # bfloat16 as its raw bits (numpy has no bfloat16).
        self.assertEqual(model["d.bf16"].dtype, np.dtype("<u2"))
        self.assertEqual(model["a.weight_t"].strides, (4, 20))
        with self.assertRaises(ValueError):
            model["a.weight"][0, 0] = 1

    def test_numpy_lease_release(self):
        model = self.load()
        session = self.client.session_id
        window = model["b.window"]
        del model
        gc.collect()
        self.assertFalse(self.daemon.wait_for(
            lambda: self.daemon.leases[(session, self.model_id)] == 0, 0.3))
        self.assertEqual(window.tolist(), [[7, 8, 9], [12, 13, 14]])
        del window
        self.assertTrue(_collect_until(
            lambda: self.daemon.leases[(session, self.model_id)] == 0, self.daemon))

    def test_numpy_read_tensors(self):
        tensors = self.client.read_tensors(self.model_id)
        np.testing.assert_array_equal(tensors["b.window"], [[7, 8, 9], [12, 13, 14]])
        np.testing.assert_array_equal(tensors["d.bf16"], self.fixture.expected["d.bf16"])


class WithoutTorchTest(unittest.TestCase):
    def test_package_and_numpy_tests_without_torch(self):
        """The package imports and serves numpy arrays where torch is not installed."""
        import subprocess
        import sys
        code = ("import sys; sys.modules['torch'] = None; import run_tests, weightd; "
                "assert weightd.Client('unix:/x').backend == 'numpy'; "
                "sys.exit(run_tests.main(['test_client.NumpyLoadTest', 'test_client.LeaseTest', "
                "'test_client.ErrorTest']))")
        env = dict(os.environ, XML_OUTPUT_FILE="")
        done = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(
            os.path.abspath(__file__)), env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, timeout=120)
        self.assertEqual(done.returncode, 0, done.stdout.decode(errors="replace"))


# Every test above again with the daemon's answers in the packed form the client asks for.
class TorchLoadPackedTest(TorchLoadTest):
    compact = True


class LeasePackedTest(LeaseTest):
    compact = True


class ErrorPackedTest(ErrorTest):
    compact = True


class NumpyLoadPackedTest(NumpyLoadTest):
    compact = True


if __name__ == "__main__":
    unittest.main()
