"""Turns a ModelDescription into tensors over the bytes the daemon points at."""
import collections
import contextlib
import gc
import json
import threading

import grpc
import numpy as np

from . import _cuda, _dtypes, _host, _table
from ._proto import weightd_pb2 as pb
from .errors import WeightdError


def _bad(message):
    return WeightdError(grpc.StatusCode.INTERNAL, message)


@contextlib.contextmanager
def _no_gc():
    """The cyclic collector paused while a load builds its tensors: they make no cycles, and
    with a large model alive each of the collections thousands of new objects trigger would
    walk all of it (a second 10,000-tensor load took 3x the first)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class TensorSpec(collections.namedtuple("TensorSpec", "name dtype shape stride storage_offset")):
    """A meta tensor (no bytes) when torch is not installed."""


# What weightd.load needs of every tensor, as lists in the daemon's order (a name may repeat).
TensorColumns = collections.namedtuple(
    "TensorColumns", "names buffer_index storage_byte_offset requires_grad saved_location")


class Model(dict):
    """{name: tensor} in the daemon's order, plus what the daemon said about the model.

    Tensors over host memory are zero-copy, read-only views of memory the daemon shares; do not
    write to them (torch does not stop you and the process gets SIGSEGV) - `.clone()` first.
    """

    def __init__(self, entries, description, backend, table=None):
        super().__init__(entries)
        self._description = description
        self._table = table  # the packed tensor table, expanded into the description on demand
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
        self._infos = None
        self._columns = None
        self._lock = threading.Lock()

    @property
    def description(self):
        """The daemon's weightd.v1.ModelDescription, with one Tensor message per tensor (a
        compact answer's table is expanded into `tensors` on first access)."""
        with self._lock:
            table, self._table = self._table, None
            if table is not None:
                d = self._description
                d.tensors.extend(table.tensor(i) for i in range(len(table)))
                d.ClearField("packed_tensors")
                d.ClearField("packed_names")
                del d.packed_strings[:]
            return self._description

    def tensor_columns(self):
        """A TensorColumns of every tensor the daemon described, read from the packed table
        (in bulk, without expanding it into `description`) or the repeated tensors."""
        with self._lock:
            if self._columns is None:
                table = self._table
                if table is not None:
                    saved = _table_strings(table, table.saved)
                    self._columns = TensorColumns(
                        list(table.names), table.buffer.tolist(),
                        table.storage_byte_offset.tolist(),
                        (table.flags & 1).astype(bool).tolist(), saved)
                else:
                    ts = self._description.tensors
                    self._columns = TensorColumns(
                        [t.name for t in ts], [t.buffer_index for t in ts],
                        [t.storage_byte_offset for t in ts], [t.requires_grad for t in ts],
                        [t.saved_location for t in ts])
            return self._columns

    @property
    def metadata_json(self):
        """The daemon's value tree (ModelDescription.metadata_json), "" without one."""
        return self._description.metadata_json

    @property
    def metadata(self):
        """Non-tensor values of the checkpoint (parsed metadata_json), or None."""
        text = self._description.metadata_json
        return json.loads(text) if text else None

    @property
    def config(self):
        """A model directory's config.json as a dict; None when it has none (or for a single
        file)."""
        text = self._description.config_json
        return json.loads(text) if text else None

    @property
    def generation_config(self):
        """A model directory's generation_config.json as a dict, or None."""
        text = self._description.generation_config_json
        return json.loads(text) if text else None

    def tensor_info(self, name):
        """The daemon's weightd.v1.Tensor for `name` (true dtype, placement, bytes)."""
        infos = self._infos
        if infos is None:
            infos = self._infos = {t.name: t for t in self.description.tensors}
        return infos[name]

    def __repr__(self):
        return "<weightd.Model %s %s, %d tensors>" % (self.model_id, self.path, len(self))


def _table_strings(table, codes):
    """table.strings[c] for each code in `codes` (checked indices), as a list."""
    return _objects(table.strings, codes) if len(codes) else []


def _text_or_bytes(content):
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError:
        return content


class TorchBackend:
    name = "torch"

    def __init__(self, torch):
        self.torch = torch

    def dtype_plan(self, name):
        """(numpy dtype torch.from_numpy takes, the torch dtype to view it as or None)."""
        dtype = _dtypes.torch_dtype(self.torch, name)
        native = _dtypes.from_numpy_dtype(name)
        if native is not None:
            return np.dtype(native), None
        return np.dtype("<i%d" % _dtypes.info(name).itemsize), dtype

    def building(self):
        return _no_gc()

    def host_array(self, mapping, size):
        """A buffer's bytes as the uint8 array its tensors view (see _host.unflagged_array)."""
        return _host.unflagged_array(mapping, size)

    def many(self, shapes, dtypes, views, bases, offsets, strides):
        """Tensors over `bases` (buffers' uint8 arrays) at byte `offsets`, strides in bytes,
        of numpy `dtypes`; views: (k, torch dtype) for the few tensors numpy has no dtype for
        (bfloat16, ...), viewed as that dtype. map() runs both constructors without a Python
        loop (about 1.3 us a tensor)."""
        out = list(map(self.torch.from_numpy,
                       map(np.ndarray, shapes, dtypes, bases, offsets, strides)))
        for k, view in views:
            out[k] = out[k].view(view)
        return out

    def set_requires_grad(self, tensor):
        if tensor.is_floating_point() or tensor.is_complex():
            tensor.requires_grad_(True)
        return tensor

    def torch_dtype(self, name):
        return _dtypes.torch_dtype(self.torch, name)

    def views(self, storages, extents, dtypes, shapes, strides, offsets):
        """Tensors over uint8 storage tensors: the first extents[k] bytes of storages[k] as
        dtypes[k], at element offset offsets[k] with element strides."""
        return [storage[:extent].view(dtype).as_strided(shape, stride, offset)
                for storage, extent, dtype, shape, stride, offset in zip(
                    storages, extents, dtypes, shapes, strides, offsets)]

    def host_storage(self, base, offset, nbytes):
        """A uint8 tensor over nbytes of a buffer's array at offset."""
        return self.torch.from_numpy(base[offset:offset + nbytes])

    def cuda_storage(self, cuda_bytes, device):
        return self.torch.as_tensor(cuda_bytes, device="cuda:%d" % device)

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


class NumpyBackend:
    name = "numpy"

    def __init__(self, np):
        self.np = np

    def dtype_plan(self, name):
        return _dtypes.numpy_dtype(self.np, name)[0]

    def building(self):
        return _no_gc()

    def host_array(self, mapping, size):
        return _host.read_only_array(mapping, size)

    def many(self, shapes, dtypes, views, bases, offsets, strides):
        # Read-only: each base views a read-only mapping.
        return list(map(self.np.ndarray, shapes, dtypes, bases, offsets, strides))

    def set_requires_grad(self, array):
        return array

    def host_storage(self, base, offset, nbytes):
        return base[offset:offset + nbytes]

    def cuda_storage(self, cuda_bytes, device):
        raise WeightdError(grpc.StatusCode.FAILED_PRECONDITION,
                           "tensors on a GPU need torch with CUDA; load with device='cpu'")

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
    """Returns (entries, anchors, table): (name, tensor) pairs in the daemon's order (an
    iterable to read once), the per-load objects every tensor keeps alive (one array per
    mapped host buffer, one LoadAnchor per GPU arena; when the last anchor is collected no
    tensor of this load is left), and the tensor table (None for a description with repeated
    tensors).

    The table's geometry is checked once for the whole model (numpy); each host tensor is then
    one array over its buffer's mapping (torch: torch.from_numpy of it), except tensors that
    share a storage with others or start inside it, which get one storage tensor per storage
    (as torch.load gives them) and a strided view of it."""
    # The cyclic collector paused for all of it: every list and tuple made here is new, and a
    # collection during the build of 10,000 tensors walks whatever torch's import left young
    # (a first load in a process spent 120 ms there).
    with backend.building():
        return _materialize(description, backend, torch)


def _materialize(description, backend, torch):
    buffers = description.buffers
    table = _table.from_description(description)
    geometry = _table.Geometry(table, len(buffers))
    count = len(table)
    with_bytes = (geometry.extent > 0) & (table.buffer >= 0)

    anchors = []
    anchors_by_buffer = {}
    opened = {}  # buffer_index -> ("host", uint8 array, size) | ("gpu", OpenedArena, device)
    limits = [-1] * len(buffers)
    gpu_uuids = None
    for index in np.unique(table.buffer[with_bytes]).tolist():
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
            # Per load and arena: every storage of this load in the arena keeps it alive (the
            # lease's anchor), whatever the number of storages.
            anchor = _cuda.LoadAnchor(arena)
            anchors.append(anchor)
            opened[index] = ("gpu", anchor, device)
            limits[index] = arena.size
            continue
        else:
            raise _bad("buffer %d has no kind" % index)
        if size is None:
            size = len(mapping)
        if size > len(mapping):
            raise _bad("buffer %d: %d bytes described, %d mapped" % (index, size, len(mapping)))
        # Per load: every array and tensor of this load keeps it alive (it is the lease's
        # anchor); np.ndarray(buffer=it) views name it as their base.
        base = backend.host_array(mapping, size)
        opened[index] = ("host", base, size)
        limits[index] = size
        anchors.append(base)
        anchors_by_buffer[index] = base
    geometry.check_bounds(limits)

    # Where each tensor's view starts in its buffer, and its strides in bytes.
    itemsize = geometry.itemsize
    first_byte = np.where(with_bytes, table.storage_byte_offset.clip(0, 1 << 62).astype(
        np.int64) + table.storage_offset * itemsize, 0)
    byte_strides = table.strides * itemsize[geometry.owner]
    host = np.zeros(count, dtype=bool)
    for index, entry in opened.items():
        if entry[0] == "host":
            host |= table.buffer == index
    host &= with_bytes
    direct = host.copy()
    if backend.name == "torch" and count:
        # One storage per (buffer, storage offset), as torch.load gives them: a tensor alone
        # in its storage and at its start is one array; the others view a storage tensor.
        keyed = np.flatnonzero(with_bytes)
        order = keyed[np.lexsort((table.storage_byte_offset[keyed], table.buffer[keyed]))]
        same = ((table.buffer[order][1:] == table.buffer[order][:-1]) &
                (table.storage_byte_offset[order][1:] == table.storage_byte_offset[order][:-1]))
        shared = np.zeros(count, dtype=bool)
        shared[order[1:][same]] = True
        shared[order[:-1][same]] = True
        direct &= ~shared & (table.storage_offset == 0)

    plans = {code: backend.dtype_plan(table.strings[code])
             for code in np.unique(table.dtype).tolist()}
    if backend.name != "torch":
        plans = {code: (dtype, None) for code, dtype in plans.items()}
    grad = (table.flags & 1).astype(bool)
    storages = {}
    extents = {}
    # Tensors with bytes that are not one array over their buffer: views of a storage tensor
    # (one per saved storage, as torch.load gives them), made in one loop below.
    viewed_at = np.flatnonzero(with_bytes & ~direct)
    viewed_keys = list(zip(table.buffer[viewed_at].tolist(),
                           table.storage_byte_offset[viewed_at].tolist()))
    viewed_extents = geometry.extent[viewed_at].tolist()
    for key, extent in zip(viewed_keys, viewed_extents):
        if extent > extents.get(key, 0):
            extents[key] = extent

    # The direct tensors in one pass of C loops (map), the others after.
    direct_at = np.flatnonzero(direct)
    shapes_of = _tuples(table.shapes, table.starts, table.ndim, direct_at)
    strides_of = _tuples(byte_strides, table.starts, table.ndim, direct_at)
    codes = table.dtype[direct_at]
    dtype_of = _objects([plans.get(c, (None,))[0] for c in range(len(table.strings))], codes)
    view_codes = [c for c, plan in plans.items() if plan[1] is not None]
    view_of = []
    if view_codes:
        at = np.flatnonzero(np.isin(codes, view_codes))
        view_of = list(zip(at.tolist(), _objects(
            [plans.get(c, (None, None))[1] for c in range(len(table.strings))], codes[at])))
    base_of = _objects([anchors_by_buffer.get(b) for b in range(len(buffers))],
                       table.buffer[direct_at])
    direct_grad = np.flatnonzero(grad[direct_at]).tolist()
    direct_at = direct_at.tolist()
    for (index, offset), extent in extents.items():
        entry = opened[index]
        if entry[0] == "host":
            storages[(index, offset)] = backend.host_storage(entry[1], offset, extent)
        else:
            cuda_bytes = entry[1].bytes_at(offset, extent)
            storages[(index, offset)] = backend.cuda_storage(cuda_bytes, entry[2])
    del opened
    made = backend.many(shapes_of, dtype_of, view_of, base_of,
                        first_byte[direct_at].tolist(), strides_of)
    for k in direct_grad:
        made[k] = backend.set_requires_grad(made[k])
    if len(direct_at) == count:
        entries = zip(table.names, made)  # the Model (a dict) is built from it once
    else:
        built = dict(zip(direct_at, made))
        if len(viewed_at):
            views = backend.views(
                [storages[key] for key in viewed_keys], viewed_extents,
                _objects([backend.torch_dtype(table.strings[c]) if c in plans else None
                          for c in range(len(table.strings))], table.dtype[viewed_at]),
                _tuples(table.shapes, table.starts, table.ndim, viewed_at),
                _tuples(table.strides, table.starts, table.ndim, viewed_at),
                table.storage_offset[viewed_at].tolist())
            for k in np.flatnonzero(grad[viewed_at]).tolist():
                views[k] = backend.set_requires_grad(views[k])
            built.update(zip(viewed_at.tolist(), views))
        entries = []
        for i, name in enumerate(table.names):
            tensor = built.get(i)
            if tensor is None:
                tensor = _one(backend, table.row(i), buffers, torch)
            entries.append((name, tensor))
    return entries, anchors, table if table.packed else None


def _objects(values, index):
    """[values[i] for i in index] (index: an int array), indexed in C."""
    table = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):  # one by one: numpy would unpack arrays in a slice
        table[i] = value
    return table[index].tolist()


def _tuples(values, starts, ndim, index):
    """For each tensor in `index`, its dims' slice of `values` (a tensor's sizes or strides,
    concatenated) as a tuple of ints: one zip per distinct ndim, no Python loop per tensor."""
    out = [()] * len(index)
    dims = ndim[index]
    for k in np.unique(dims).tolist():
        if k == 0:
            continue
        group = np.flatnonzero(dims == k) if len(dims) else dims
        first = starts[index[group]]
        made = list(zip(*[values[first + j].tolist() for j in range(k)]))
        if len(group) == len(index):
            return made
        list(map(out.__setitem__, group.tolist(), made))
    return out


def _one(backend, row, buffers, torch):
    """A tensor without bytes: meta, or without elements."""
    if row.buffer_index < 0:
        return backend.empty(row, "meta")
    return backend.empty(row, _empty_device(buffers[row.buffer_index], row, torch))


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
