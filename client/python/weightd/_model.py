"""Turns a ModelDescription into tensors over the bytes the daemon points at."""
import collections
import json
import threading
import warnings

import grpc

from . import _cuda, _dtypes, _host
from ._proto import weightd_pb2 as pb
from .errors import WeightdError


_warnings_lock = threading.Lock()  # catch_warnings swaps process-wide state


def _bad(message):
    return WeightdError(grpc.StatusCode.INTERNAL, message)


class TensorSpec(collections.namedtuple("TensorSpec", "name dtype shape stride storage_offset")):
    """A meta tensor (no bytes) when torch is not installed."""


class Model(dict):
    """{name: tensor} in the daemon's order, plus what the daemon said about the model.

    Tensors over host memory are zero-copy, read-only views of memory the daemon shares; do not
    write to them (torch does not stop you and the process gets SIGSEGV) - `.clone()` first.
    """

    def __init__(self, entries, description, backend):
        super().__init__(entries)
        self.description = description
        self.backend = backend
        self.model_id = description.model_id
        self.path = description.path
        self.format = description.format
        self.placement = description.placement
        self.cache_hit = description.cache_hit
        # TorchScript extra files: text where the content is valid UTF-8 (as
        # `weightctl --json` prints it), bytes otherwise; extra_file_bytes has
        # every content as bytes, as torch.jit.load(_extra_files=) gives them.
        self.extra_file_bytes = dict(description.extra_files)
        self.extra_files = {name: _text_or_bytes(content)
                            for name, content in self.extra_file_bytes.items()}
        self._infos = {t.name: t for t in description.tensors}

    @property
    def metadata(self):
        """Non-tensor values of the checkpoint (parsed metadata_json), or None."""
        text = self.description.metadata_json
        return json.loads(text) if text else None

    def tensor_info(self, name):
        """The daemon's weightd.v1.Tensor for `name` (true dtype, placement, bytes)."""
        return self._infos[name]

    def __repr__(self):
        return "<weightd.Model %s %s, %d tensors>" % (self.model_id, self.path, len(self))


def _text_or_bytes(content):
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError:
        return content


def _geometry(t, itemsize):
    """(numel, extent in bytes from the storage start) after checking the description."""
    shape, stride = list(t.shape), list(t.stride)
    if len(stride) != len(shape):
        raise _bad("tensor %s: %d dims but %d strides" % (t.name, len(shape), len(stride)))
    if any(n < 0 for n in shape) or any(s < 0 for s in stride) or t.storage_offset < 0:
        raise _bad("tensor %s: negative shape, stride or storage offset" % t.name)
    numel = 1
    for n in shape:
        numel *= n
    if t.byte_size and t.byte_size != numel * itemsize:
        raise _bad("tensor %s: byte_size %d but numel %d x %d bytes"
                   % (t.name, t.byte_size, numel, itemsize))
    if numel == 0:
        return 0, 0
    last = t.storage_offset + sum((n - 1) * s for n, s in zip(shape, stride))
    return numel, (last + 1) * itemsize


class TorchBackend:
    name = "torch"

    def __init__(self, torch):
        self.torch = torch

    def host_storage(self, buffer, offset, nbytes):
        """(uint8 tensor over nbytes of `buffer` at offset, the object it keeps alive)."""
        with _warnings_lock, warnings.catch_warnings():
            # The mapping is read-only by contract; torch warns that it is not writable.
            warnings.simplefilter("ignore", UserWarning)
            # torch.frombuffer holds `buffer` (this load's memoryview) until the storage dies.
            return self.torch.frombuffer(buffer, dtype=self.torch.uint8, count=nbytes,
                                         offset=offset), buffer

    def cuda_storage(self, cuda_bytes, device):
        return self.torch.as_tensor(cuda_bytes, device="cuda:%d" % device)

    def view(self, storage, t, nbytes):
        dtype = _dtypes.torch_dtype(self.torch, t.dtype)
        typed = storage[:nbytes].view(dtype)
        return self._finish(typed.as_strided(tuple(t.shape), tuple(t.stride), t.storage_offset), t)

    def empty(self, t, device):
        dtype = _dtypes.torch_dtype(self.torch, t.dtype)
        return self._finish(self.torch.empty_strided(tuple(t.shape), tuple(t.stride),
                                                     dtype=dtype, device=device), t)

    def _finish(self, tensor, t):
        if t.requires_grad and (tensor.is_floating_point() or tensor.is_complex()):
            tensor.requires_grad_(True)
        return tensor

    def from_bytes(self, data, t):
        """A tensor owning `data` (contiguous little-endian bytes)."""
        dtype = _dtypes.torch_dtype(self.torch, t.dtype)
        if not data:
            return self._finish(self.torch.empty(tuple(t.shape), dtype=dtype), t)
        flat = self.torch.frombuffer(data, dtype=self.torch.uint8).view(dtype)
        return self._finish(flat.reshape(tuple(t.shape)), t)


class _ArrayHolder:
    def __init__(self, array):
        self.array = array
        self.__array_interface__ = array.__array_interface__


class NumpyBackend:
    name = "numpy"

    def __init__(self, np):
        self.np = np

    def host_storage(self, buffer, offset, nbytes):
        # np.frombuffer keeps a fresh memoryview of the mapping, not `buffer`: hang the array
        # on a holder every view's base chain keeps alive, and anchor the lease on that.
        flat = self.np.frombuffer(buffer, dtype=self.np.uint8, count=nbytes, offset=offset)
        holder = _ArrayHolder(flat)
        return self.np.asarray(holder), holder

    def cuda_storage(self, cuda_bytes, device):
        raise WeightdError(grpc.StatusCode.FAILED_PRECONDITION,
                           "tensors on a GPU need torch with CUDA; load with device='cpu'")

    def view(self, storage, t, nbytes):
        dtype, _ = _dtypes.numpy_dtype(self.np, t.dtype)
        typed = storage[:nbytes].view(dtype)
        return self.np.lib.stride_tricks.as_strided(
            typed[t.storage_offset:], shape=tuple(t.shape),
            strides=tuple(s * dtype.itemsize for s in t.stride), writeable=False)

    def empty(self, t, device):
        if device == "meta":
            return TensorSpec(t.name, t.dtype, tuple(t.shape), tuple(t.stride), t.storage_offset)
        dtype, _ = _dtypes.numpy_dtype(self.np, t.dtype)
        array = self.np.empty(tuple(t.shape), dtype=dtype)
        array.flags.writeable = False
        return array

    def from_bytes(self, data, t):
        dtype, _ = _dtypes.numpy_dtype(self.np, t.dtype)
        return self.np.frombuffer(data, dtype=dtype).reshape(tuple(t.shape)) if data else \
            self.np.empty(tuple(t.shape), dtype=dtype)


def materialize(description, backend, torch=None):
    """Returns (entries, anchors): the tensors in the daemon's order, and the per-load objects
    every tensor keeps alive (torch: one memoryview per mapped host buffer; numpy: one holder
    per host storage; one CudaBytes per GPU storage). When the last
    anchor is collected no tensor of this load is left."""
    buffers = description.buffers
    infos = []
    extents = {}  # (buffer_index, storage_byte_offset) -> bytes needed
    for t in description.tensors:
        itemsize = _dtypes.info(t.dtype).itemsize
        numel, extent = _geometry(t, itemsize)
        if t.buffer_index >= len(buffers) or t.buffer_index < -1:
            raise _bad("tensor %s: buffer %d of %d" % (t.name, t.buffer_index, len(buffers)))
        infos.append((t, extent))
        if t.buffer_index >= 0 and extent > 0:
            key = (t.buffer_index, t.storage_byte_offset)
            extents[key] = max(extents.get(key, 0), extent)

    anchors = []
    opened = {}  # buffer_index -> ("host", memoryview) | ("gpu", OpenedArena, device)
    storages = {}
    gpu_uuids = None
    for (index, offset), extent in extents.items():
        if index not in opened:
            buffer = buffers[index]
            kind = buffer.WhichOneof("kind")
            if kind == "file":
                identity = buffer.file.identity if buffer.file.HasField("identity") else None
                mapping, size = _host.map_file(buffer.file.path, identity), None
            elif kind == "shared_memory":
                size = buffer.shared_memory.size
                mapping = _host.map_segment(buffer.shared_memory.name, size)
            elif kind == "gpu" and _handle_kind(buffer.gpu) == pb.GpuArena.SHARED_MEMORY:
                name, held = _cuda.shared_memory_segment(buffer.gpu.ipc_handle)
                size = buffer.gpu.size
                if size > held:
                    raise _bad("buffer %d: %d bytes described, the handle's segment holds %d"
                               % (index, size, held))
                mapping = _host.map_segment(name, size)
            elif kind == "gpu":  # CUDA_IPC (_handle_kind refused every other kind)
                if torch is None or not torch.cuda.is_available():
                    raise WeightdError(grpc.StatusCode.FAILED_PRECONDITION,
                                       "model %s lives on GPU %s; this process has no torch "
                                       "with CUDA" % (description.model_id, buffer.gpu.gpu_uuid))
                if gpu_uuids is None:
                    gpu_uuids = _cuda.visible_gpu_uuids(torch)
                device = _cuda.device_for_uuid(gpu_uuids, buffer.gpu.gpu_uuid)
                arena = _cuda.open_arena(_cuda.runtime(torch), buffer.gpu.ipc_handle, device,
                                         buffer.gpu.size)
                opened[index] = ("gpu", arena, device)
                mapping = None
            else:
                raise _bad("buffer %d has no kind" % index)
            if mapping is not None:
                view = memoryview(mapping)  # per load: tensors of this load keep it alive
                if size is None:
                    size = len(mapping)
                if size > len(mapping):
                    raise _bad("buffer %d: %d bytes described, %d mapped"
                               % (index, size, len(mapping)))
                opened[index] = ("host", view, size)
        entry = opened[index]
        limit = entry[1].size if entry[0] == "gpu" else entry[2]
        if offset > limit or extent > limit - offset:
            names = [t.name for t, _ in infos if (t.buffer_index, t.storage_byte_offset) ==
                     (index, offset)]
            raise _bad("tensor %s extends past its buffer (%d bytes at %d, buffer of %d)"
                       % (names[0], extent, offset, limit))
        if entry[0] == "host":
            storages[(index, offset)], anchor = backend.host_storage(entry[1], offset, extent)
            if not any(a is anchor for a in anchors):
                anchors.append(anchor)
        else:
            cuda_bytes = entry[1].bytes_at(offset, extent)
            anchors.append(cuda_bytes)
            storages[(index, offset)] = backend.cuda_storage(cuda_bytes, entry[2])
    del opened

    entries = collections.OrderedDict()
    for t, extent in infos:
        if t.buffer_index < 0:
            entries[t.name] = backend.empty(t, "meta")
        elif extent == 0:
            entries[t.name] = backend.empty(t, _empty_device(buffers[t.buffer_index], t,
                                                             torch))
        else:
            entries[t.name] = backend.view(storages[(t.buffer_index, t.storage_byte_offset)], t,
                                           extent)
    return entries, anchors


def _handle_kind(arena):
    """The arena's handle kind, which alone says how to open it; an error for a kind this
    client cannot open (none: a daemon older than handle kinds; a newer kind)."""
    kind = arena.handle_kind
    if kind in (pb.GpuArena.CUDA_IPC, pb.GpuArena.SHARED_MEMORY):
        return kind
    if kind == pb.GpuArena.HANDLE_KIND_UNSPECIFIED:
        raise WeightdError(grpc.StatusCode.FAILED_PRECONDITION,
                           "the GPU arena on %s names no handle kind (a weightd older than "
                           "this client); upgrade the daemon" % arena.gpu_uuid)
    raise WeightdError(grpc.StatusCode.INVALID_ARGUMENT,
                       "the GPU arena on %s has handle kind %d, which this client does not "
                       "know; upgrade the client" % (arena.gpu_uuid, kind))


def _empty_device(buffer, t, torch):
    """Where a tensor without elements goes: the host for host-visible buffers, else its
    arena's GPU (as this process numbers it)."""
    if (buffer.WhichOneof("kind") != "gpu" or
            _handle_kind(buffer.gpu) == pb.GpuArena.SHARED_MEMORY):
        return "cpu"
    if torch is None or not torch.cuda.is_available():
        raise WeightdError(grpc.StatusCode.FAILED_PRECONDITION,
                           "tensor %s lives on GPU %s; this process has no torch with CUDA"
                           % (t.name, buffer.gpu.gpu_uuid))
    return "cuda:%d" % _cuda.device_for_uuid(_cuda.visible_gpu_uuids(torch), buffer.gpu.gpu_uuid)
