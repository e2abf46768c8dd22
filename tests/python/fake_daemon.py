"""An in-process fake weightd: a gRPC WeightService that describes tensors over a real
checkpoint-like file, a /dev/shm segment and a fake-GPU segment, and records what clients do
(load requests, lease acquisitions and releases, session ends)."""
import collections
import itertools
import os
import shutil
import struct
import tempfile
import threading
import uuid
from concurrent import futures

import grpc
import numpy as np

from weightd._proto import weightd_pb2 as pb
from weightd._proto import weightd_pb2_grpc as pb_grpc

_counter = itertools.count()


def bf16_bits(values):
    """bfloat16 bit patterns of values that bfloat16 represents exactly."""
    return (np.asarray(values, dtype="<f4").view("<u4") >> 16).astype("<u2")


def pack_description(d, record_bytes=48):
    """A copy of description `d` with its tensors in the packed form (weightd.proto's layout,
    written here with struct, independently of the client's reader)."""
    out = pb.ModelDescription()
    out.CopyFrom(d)
    out.ClearField("tensors")
    strings, index = [], {}

    def code(text):
        if text not in index:
            index[text] = len(strings)
            strings.append(text)
        return index[text]

    records, shapes, strides = bytearray(), [], []
    for t in d.tensors:
        records += struct.pack("<3IiIIqQQ", code(t.dtype), code(t.saved_location),
                               code(t.placed_location), t.buffer_index, len(t.shape),
                               1 if t.requires_grad else 0, t.storage_offset,
                               t.storage_byte_offset, t.byte_size)
        records += b"\0" * (record_bytes - 48)
        shapes += list(t.shape)
        strides += list(t.stride)
    out.packed_tensors = (struct.pack("<4I", 1, record_bytes, len(d.tensors), len(shapes)) +
                          bytes(records) + struct.pack("<%dq" % len(shapes), *shapes) +
                          struct.pack("<%dq" % len(strides), *strides))
    out.packed_names = "\0".join(t.name for t in d.tensors).encode()
    out.packed_strings.extend(strings)
    return out


class Fixture:
    """A checkpoint-like file plus two shared-memory segments, and the description of its
    tensors. `expected[name]` is each tensor's value as a contiguous numpy array (raw bits for
    bfloat16: uint16), `dtypes[name]` its dtype name."""

    def __init__(self, root):
        self.root = root
        self.path = os.path.join(root, "model.pt")
        self.segments = []
        self.expected = collections.OrderedDict()
        self.dtypes = {}
        self.tensors = []
        self.buffers = []
        blob = bytearray(b"PK\x03\x04" + bytes(range(60)))  # 64 bytes of "header"
        storages = {}

        def storage(name, array, align=None):
            if align:
                blob.extend(b"\0" * (-len(blob) % align))
            storages[name] = len(blob)
            blob.extend(np.ascontiguousarray(array).tobytes())

        s1 = np.arange(20, dtype="<f4")
        storage("s1", s1, align=64)
        storage("s2", np.array([-1, 2 ** 40, 7], dtype="<i8"))  # offset 144: aligned
        blob.extend(b"\x01\x02\x03")                            # then 3 bytes of padding
        bf = [1.5, -2.0, 3.25, 0.0078125]
        storage("s3", bf16_bits(bf))                             # offset 171: odd
        storage("s4", np.array([True, False, True], dtype="|b1"))
        storage("s5", np.array([2.718281828459045], dtype="<f8"))  # unaligned float64
        with open(self.path, "wb") as f:
            f.write(bytes(blob))
        st = os.stat(self.path)
        self.identity = pb.FileIdentity(device=st.st_dev, inode=st.st_ino, size=st.st_size,
                                        mtime_ns=st.st_mtime_ns)
        self.storage_offsets = storages
        self.buffers.append(pb.Buffer(file=pb.FileRegion(path=self.path, identity=self.identity)))

        def tensor(name, dtype, itemsize, shape, stride, offset, buffer_index, byte_offset,
                   expected, **kw):
            numel = int(np.prod(shape)) if shape else 1
            self.tensors.append(pb.Tensor(
                name=name, dtype=dtype, shape=shape, stride=stride, storage_offset=offset,
                byte_size=numel * itemsize, saved_location="cpu",
                placed_location="meta" if buffer_index < 0 else "cpu",
                buffer_index=buffer_index, storage_byte_offset=byte_offset, **kw))
            self.expected[name] = np.array(expected, order="C")
            self.dtypes[name] = dtype

        f32 = np.lib.stride_tricks.as_strided
        tensor("a.weight", "float32", 4, [4, 5], [5, 1], 0, 0, storages["s1"], s1.reshape(4, 5),
               requires_grad=True)
        tensor("a.weight_t", "float32", 4, [5, 4], [1, 5], 0, 0, storages["s1"],
               s1.reshape(4, 5).T)
        tensor("b.window", "float32", 4, [2, 3], [5, 1], 7, 0, storages["s1"],
               f32(s1[7:], shape=(2, 3), strides=(20, 4)))
        tensor("c.int64", "int64", 8, [3], [1], 0, 0, storages["s2"],
               np.array([-1, 2 ** 40, 7], dtype="<i8"))
        tensor("d.bf16", "bfloat16", 2, [2, 2], [2, 1], 0, 0, storages["s3"],
               bf16_bits(bf).reshape(2, 2))
        self.bf16_values = np.array(bf, dtype="<f4").reshape(2, 2)
        tensor("e.mask", "bool", 1, [3], [1], 0, 0, storages["s4"],
               np.array([True, False, True]))
        tensor("f.scalar", "float64", 8, [], [], 0, 0, storages["s5"],
               np.array(2.718281828459045, dtype="<f8"))
        tensor("g.empty", "float32", 4, [0, 3], [3, 1], 0, 0, 0,
               np.zeros((0, 3), dtype="<f4"))
        tensor("h.meta", "float16", 2, [2, 3], [3, 1], 0, -1, 0, np.zeros((2, 3), dtype="<f2"))

        # A shared-memory segment (host copy: e.g. a dtype cast).
        half = np.linspace(-1, 1, 9, dtype="<f2").reshape(3, 3)
        name = self.segment(np.concatenate([np.zeros(8, dtype="<f2"), half.ravel()]).tobytes())
        self.buffers.append(pb.Buffer(shared_memory=pb.SharedMemorySegment(
            name="/" + name, size=(8 + 9) * 2)))
        tensor("s.half_t", "float16", 2, [3, 3], [1, 3], 0, 1, 16, half.T)

        # The daemon's fake GPU: a SHARED_MEMORY arena, its "WDFG" handle naming the segment.
        gpu = np.array([[10, 20], [30, 40]], dtype="<f4")
        name = self.segment(gpu.tobytes())
        handle = (b"WDFG" + bytes([1, 0, 0, 0]) + (16).to_bytes(8, "little") +
                  ("/" + name).encode().ljust(48, b"\0"))
        self.buffers.append(pb.Buffer(gpu=pb.GpuArena(
            gpu_uuid="GPU-00000000-0000-0000-0000-000000000000", gpu_index=0,
            ipc_handle=handle, size=16, handle_kind=pb.GpuArena.SHARED_MEMORY)))
        tensor("g.gpu", "float32", 4, [2, 2], [2, 1], 0, 2, 0, gpu)
        self.tensors[-1].placed_location = "cuda:0"

    def segment(self, data):
        name = "weightd-pytest-%d-%d" % (os.getpid(), next(_counter))
        with open("/dev/shm/" + name, "wb") as f:
            f.write(data)
        self.segments.append(name)
        return name

    def description(self, model_id, names=None):
        d = pb.ModelDescription(model_id=model_id, path=self.path, identity=self.identity,
                                format="torch-zip", placement="cpu", resident_bytes=0,
                                metadata_json='{"epoch": 3}')
        d.extra_files["note.txt"] = b"hello"
        d.extra_files["blob.bin"] = b"\xff\x00\x01"  # not UTF-8
        d.buffers.extend(self.buffers)
        for t in self.tensors:
            if names is None or any(t.name == n or t.name.startswith(n + ".") for n in names):
                d.tensors.append(t)
        return d

    def cleanup(self):
        for name in self.segments:
            try:
                os.unlink("/dev/shm/" + name)
            except FileNotFoundError:
                pass


class FakeDaemon(pb_grpc.WeightServiceServicer):
    """Serves fixtures registered by path. Thread-safe records of what clients did."""

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="weightd-fake-")
        self._socket_dir = tempfile.mkdtemp(prefix="wd-", dir="/tmp")
        self.address = "unix:" + os.path.join(self._socket_dir, "weightd.sock")
        self.fixtures = {}  # realpath -> (model_id, Fixture)
        self.custom = {}  # realpath -> (model_id, ModelDescription): served as is
        self.load_requests = []
        self.leases = collections.Counter()  # (session, model_id) -> count
        self.lease_log = []  # (session, "acquire"|"release"|"end", model_id)
        self.sessions = set()
        self.ended_sessions = set()
        self.progress_total = 1000
        self.compact = False  # answer compact_description requests with packed tensors
        # Model ids whose next acquire on a Lease stream is refused, as the daemon refuses a
        # model evicted since its Load answered.
        self.evict_once = set()
        self.describe_hook = None  # hook(request, description) -> the description to send
        self.refuse_lease = None  # a grpc.StatusCode: Lease streams fail with it
        # Lease streams open only once a Load has been answered: a client's first load then
        # always runs before its session is open (else that is a race it may win or lose).
        self.open_after_load = False
        # Set: Lease streams answer acquires only once it is set (a slow lease answer).
        self.acquire_gate = None
        self.sessions_at_load = []  # how many Lease streams had opened when each Load came
        self._load_answered = threading.Event()
        self.cond = threading.Condition()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        pb_grpc.add_WeightServiceServicer_to_server(self, self.server)
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(
                lambda request, context: b"\x08\x01",
                request_deserializer=lambda b: b, response_serializer=lambda b: b)})])
        self.server.add_insecure_port(self.address)
        self.server.start()

    def stop(self):
        self.server.stop(None).wait()
        for _, fixture in self.fixtures.values():
            fixture.cleanup()
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self._socket_dir, ignore_errors=True)

    def add_fixture(self, subdir="m"):
        directory = os.path.join(self.root, subdir)
        os.makedirs(directory, exist_ok=True)
        fixture = Fixture(directory)
        model_id = "model-%d" % next(_counter)
        self.fixtures[os.path.realpath(fixture.path)] = (model_id, fixture)
        return model_id, fixture

    def register(self, path, model_id, description):
        """Serves `description` as is for loads of `path` (a file under self.root)."""
        self.custom[os.path.realpath(path)] = (model_id, description)

    def wait_for(self, predicate, timeout=10.0):
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def lease_count(self, model_id):
        with self.cond:
            return sum(n for (s, m), n in self.leases.items() if m == model_id)

    def _find(self, model_id, context):
        for mid, fixture in self.fixtures.values():
            if mid == model_id:
                return fixture
        context.abort(grpc.StatusCode.NOT_FOUND, "no model %s" % model_id)

    # -- WeightService ---------------------------------------------------------------------

    def Load(self, request, context):
        with self.cond:
            self.load_requests.append(request)
            self.sessions_at_load.append(len(self.sessions))
        real = os.path.realpath(request.path)
        if not real.startswith(os.path.realpath(self.root) + os.sep):
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          "%s: outside the model roots (%s)" % (request.path, self.root))
        if not os.path.exists(real):
            context.abort(grpc.StatusCode.NOT_FOUND, "%s: no such file" % request.path)
        if real in self.custom:
            model_id, description = self.custom[real]
            if request.lease_session:
                with self.cond:
                    self.leases[(request.lease_session, model_id)] += 1
                    self.lease_log.append((request.lease_session, "acquire", model_id))
            yield self._answer(request, description)
            return
        if real not in self.fixtures:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "%s: not a checkpoint (bad zip magic at offset 0)" % request.path)
        model_id, fixture = self.fixtures[real]
        total = self.progress_total
        yield pb.LoadEvent(progress=pb.LoadProgress(bytes_done=0, bytes_total=total))
        yield pb.LoadEvent(progress=pb.LoadProgress(bytes_done=total // 2, bytes_total=total))
        yield pb.LoadEvent(progress=pb.LoadProgress(bytes_done=total, bytes_total=total))
        if request.lease_session:
            with self.cond:
                if request.lease_session not in self.sessions - self.ended_sessions:
                    context.abort(grpc.StatusCode.NOT_FOUND,
                                  "no lease session %s" % request.lease_session)
                self.leases[(request.lease_session, model_id)] += 1
                self.lease_log.append((request.lease_session, "acquire", model_id))
                self.cond.notify_all()
        yield self._answer(request, fixture.description(
            model_id, list(request.tensor_filter) or None))

    def _answer(self, request, description):
        event = pb.LoadEvent(model=self._form(request, description))
        self._load_answered.set()
        return event

    def _form(self, request, description):
        if self.describe_hook is not None:
            description = self.describe_hook(request, description)
        if self.compact and request.compact_description:
            return pack_description(description)
        return description

    def Lease(self, request_iterator, context):
        if self.refuse_lease is not None:
            context.abort(self.refuse_lease, "lease sessions refused")
        if self.open_after_load:
            self._load_answered.wait(10)
        session = uuid.uuid4().hex
        with self.cond:
            self.sessions.add(session)
        context.add_callback(lambda: self._end_session(session))
        yield pb.LeaseEvent(session_id=session, kind=pb.LeaseEvent.OPENED)
        for request in request_iterator:
            which = request.WhichOneof("request")
            model_id = getattr(request, which)
            if which == "acquire_model_id" and self.acquire_gate is not None:
                self.acquire_gate.wait(10)
            with self.cond:
                key = (session, model_id)
                if which == "acquire_model_id" and model_id in self.evict_once:
                    self.evict_once.discard(model_id)
                    kind, error = pb.LeaseEvent.ERROR, "no model \"%s\" in the cache" % model_id
                elif which == "acquire_model_id":
                    self.leases[key] += 1
                    kind, error = pb.LeaseEvent.ACQUIRED, ""
                elif self.leases[key] > 0:
                    self.leases[key] -= 1
                    kind, error = pb.LeaseEvent.RELEASED, ""
                else:
                    kind, error = pb.LeaseEvent.ERROR, "not leased"
                self.lease_log.append((session, which.split("_")[0], model_id))
                self.cond.notify_all()
            yield pb.LeaseEvent(session_id=session, model_id=model_id, kind=kind, error=error)
        self._end_session(session)

    def _end_session(self, session):
        with self.cond:
            if session in self.ended_sessions:
                return
            self.ended_sessions.add(session)
            for key in [k for k in self.leases if k[0] == session]:
                del self.leases[key]
            self.lease_log.append((session, "end", ""))
            self.cond.notify_all()

    def Describe(self, request, context):
        return self._find(request.model_id, context).description(request.model_id)

    def List(self, request, context):
        out = pb.ListResponse()
        for model_id, fixture in self.fixtures.values():
            out.models.add(model_id=model_id, path=fixture.path, format="torch-zip",
                           placement="cpu", tensor_count=len(fixture.tensors),
                           lease_count=self.lease_count(model_id))
        return out

    def Unload(self, request, context):
        self._find(request.model_id, context)
        if self.lease_count(request.model_id) and not request.force:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          "model %s is leased by %d clients" % (
                              request.model_id, self.lease_count(request.model_id)))
        return pb.UnloadResponse(freed_bytes=123)

    def Stats(self, request, context):
        with self.cond:
            return pb.StatsResponse(loads=len(self.load_requests), models=len(self.fixtures),
                                    active_leases=sum(self.leases.values()),
                                    lease_sessions=len(self.sessions - self.ended_sessions))

    def ServerInfo(self, request, context):
        return pb.ServerInfoResponse(version="fake-1", io_backend="pread",
                                     gpu_status="fake daemon", model_roots=[self.root])

    def ReadTensors(self, request, context):
        fixture = self._find(request.model_id, context)
        chunk = request.chunk_bytes or 5
        for t in fixture.description(request.model_id).tensors:
            if request.names and t.name not in request.names:
                continue
            data = fixture.expected[t.name].tobytes() if t.buffer_index >= 0 else b""
            if not data:
                yield pb.TensorChunk(tensor=t, offset=0, data=b"", last=True)
                continue
            for offset in range(0, len(data), chunk):
                piece = data[offset:offset + chunk]
                yield pb.TensorChunk(tensor=t if offset == 0 else None, offset=offset,
                                     data=piece, last=offset + chunk >= len(data))
