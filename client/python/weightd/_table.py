"""A model's tensor table as numpy arrays: the daemon's packed form (ModelDescription.
packed_tensors, see weightd.proto) or its repeated Tensor messages, checked once per model in
bulk, so that building 10,000 tensors costs a few microseconds each, not a Python loop of
checks and protobuf attribute reads per tensor."""
import collections
import struct

import grpc
import numpy as np

from . import _dtypes
from ._proto import weightd_pb2 as pb
from .errors import WeightdError

PACKED_VERSION = 1
RECORD_BYTES = 48
_HEADER = struct.Struct("<4I")
# The layout's fields at their documented offsets; itemsize is the record size the daemon
# sent (a later daemon may append fields; this client reads the first 48 bytes).
_FIELDS = [("dtype", "<u4", 0), ("saved", "<u4", 4), ("placed", "<u4", 8),
           ("buffer", "<i4", 12), ("ndim", "<u4", 16), ("flags", "<u4", 20),
           ("storage_offset", "<i8", 24), ("storage_byte_offset", "<u8", 32),
           ("byte_size", "<u8", 40)]
_MAX_RECORD_BYTES = 4096
MAX_DIMS = 32  # numpy's limit; torch files with more are refused by the daemon's readers too
# Any byte count or element offset above this is refused before arithmetic can overflow int64
# (float checks first, then exact integer arithmetic below 2**62).
_LIMIT = float(1 << 60)
_EXACT = float(1 << 53)  # below it float64 holds every integer exactly


def _bad(message):
    return WeightdError(grpc.StatusCode.INTERNAL, message)


def _record_dtype(record_bytes):
    return np.dtype({"names": [f[0] for f in _FIELDS], "formats": [f[1] for f in _FIELDS],
                     "offsets": [f[2] for f in _FIELDS], "itemsize": record_bytes})


Row = collections.namedtuple(
    "Row", "name dtype shape stride storage_offset requires_grad buffer_index "
           "storage_byte_offset byte_size saved_location placed_location")


class TensorTable:
    """Per tensor: names (list of str), and arrays dtype / saved / placed (indices into
    `strings`), buffer, ndim, flags, storage_offset, storage_byte_offset, byte_size; the sizes
    and strides of every tensor concatenated (`shapes`, `strides`) with `starts[i]` where
    tensor i's begin."""

    def __init__(self, names, strings, records, shapes, strides, packed):
        self.packed = packed  # read from packed_tensors (not repeated Tensor messages)
        self.names = names
        self.strings = strings
        self.dtype = records["dtype"].astype(np.int64)
        self.saved = records["saved"].astype(np.int64)
        self.placed = records["placed"].astype(np.int64)
        self.buffer = records["buffer"].astype(np.int64)
        self.ndim = records["ndim"].astype(np.int64)
        self.flags = records["flags"].astype(np.int64)
        self.storage_offset = records["storage_offset"].astype(np.int64)
        self.storage_byte_offset = records["storage_byte_offset"].astype(np.uint64)
        self.byte_size = records["byte_size"].astype(np.uint64)
        self.shapes = shapes.astype(np.int64)
        self.strides = strides.astype(np.int64)
        self.starts = np.zeros(len(names) + 1, dtype=np.int64)
        np.cumsum(self.ndim, out=self.starts[1:])

    def __len__(self):
        return len(self.names)

    def row(self, i):
        """Tensor i as a Row (the attributes of a weightd.v1.Tensor)."""
        a, b = int(self.starts[i]), int(self.starts[i + 1])
        return Row(self.names[i], self.strings[self.dtype[i]],
                   tuple(self.shapes[a:b].tolist()), tuple(self.strides[a:b].tolist()),
                   int(self.storage_offset[i]), bool(self.flags[i] & 1), int(self.buffer[i]),
                   int(self.storage_byte_offset[i]), int(self.byte_size[i]),
                   self.strings[self.saved[i]], self.strings[self.placed[i]])

    def tensor(self, i):
        """Tensor i as a weightd.v1.Tensor."""
        r = self.row(i)
        return pb.Tensor(name=r.name, dtype=r.dtype, shape=r.shape, stride=r.stride,
                         storage_offset=r.storage_offset, byte_size=r.byte_size,
                         saved_location=r.saved_location, placed_location=r.placed_location,
                         buffer_index=r.buffer_index, storage_byte_offset=r.storage_byte_offset,
                         requires_grad=r.requires_grad)


def from_description(description):
    """The table of a description, packed or repeated; checks the packed bytes' structure
    (hostile: every count and index bounded, clear errors)."""
    # Each read of a bytes field copies it (640 KB for 10,000 tensors, fresh pages): once.
    data = description.packed_tensors
    if data:
        if len(description.tensors):
            raise _bad("model %s: the description has both packed and repeated tensors"
                       % description.model_id)
        return _unpack(description, data)
    if description.packed_names or len(description.packed_strings):
        raise _bad("model %s: packed names or strings without packed tensors"
                   % description.model_id)
    return _from_repeated(description.tensors)


def _unpack(description, data):
    where = "model %s: packed tensor table" % description.model_id
    if len(data) < _HEADER.size:
        raise _bad("%s: %d bytes, shorter than its %d-byte header"
                   % (where, len(data), _HEADER.size))
    version, record_bytes, count, dims = _HEADER.unpack_from(data)
    if version != PACKED_VERSION:
        raise _bad("%s: version %d, this client reads version %d; upgrade the client"
                   % (where, version, PACKED_VERSION))
    if not RECORD_BYTES <= record_bytes <= _MAX_RECORD_BYTES:
        raise _bad("%s: records of %d bytes (%d to %d allowed)"
                   % (where, record_bytes, RECORD_BYTES, _MAX_RECORD_BYTES))
    want = _HEADER.size + count * record_bytes + dims * 16
    if len(data) != want:
        raise _bad("%s: %d bytes, but %d tensors of %d bytes and %d dims need %d"
                   % (where, len(data), count, record_bytes, dims, want))
    records = np.frombuffer(data, dtype=_record_dtype(record_bytes), count=count,
                            offset=_HEADER.size)
    end = _HEADER.size + count * record_bytes
    shapes = np.frombuffer(data, dtype="<i8", count=dims, offset=end)
    strides = np.frombuffer(data, dtype="<i8", count=dims, offset=end + dims * 8)
    ndim = records["ndim"]
    if count and int(ndim.max()) > MAX_DIMS:
        i = int(np.argmax(ndim > MAX_DIMS))
        raise _bad("%s: tensor %d has %d dims (at most %d)" % (where, i, int(ndim[i]), MAX_DIMS))
    if int(ndim.sum(dtype=np.int64)) != dims:
        raise _bad("%s: the tensors' dims add up to %d, the header says %d"
                   % (where, int(ndim.sum(dtype=np.int64)), dims))
    strings = list(description.packed_strings)
    for field in ("dtype", "saved", "placed"):
        if count and int(records[field].max()) >= len(strings):
            i = int(np.argmax(records[field] >= len(strings)))
            raise _bad("%s: tensor %d's %s is string %d of %d"
                       % (where, i, field, int(records[field][i]), len(strings)))
    try:
        text = description.packed_names.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _bad("%s: names are not UTF-8 (%s)" % (where, e)) from None
    names = text.split("\0") if count else ([] if not text else None)
    if names is None or len(names) != count:
        raise _bad("%s: %d names for %d tensors"
                   % (where, len(names) if names is not None else 1, count))
    return TensorTable(names, strings, records, shapes, strides, packed=True)


def _from_repeated(tensors):
    """The table of repeated Tensor messages (an older daemon, or a description from
    Client.describe). Per-tensor Python work; a stride list of the wrong length is refused."""
    count = len(tensors)
    records = np.zeros(count, dtype=_record_dtype(RECORD_BYTES))
    strings, index = [], {}
    names, shapes, strides = [], [], []

    def code(text):
        i = index.get(text)
        if i is None:
            i = index[text] = len(strings)
            strings.append(text)
        return i

    for i, t in enumerate(tensors):
        shape, stride = list(t.shape), list(t.stride)
        if len(stride) != len(shape):
            raise _bad("tensor %s: %d dims but %d strides" % (t.name, len(shape), len(stride)))
        if len(shape) > MAX_DIMS:
            raise _bad("tensor %s: %d dims (at most %d)" % (t.name, len(shape), MAX_DIMS))
        names.append(t.name)
        shapes += shape
        strides += stride
        records[i] = (code(t.dtype), code(t.saved_location), code(t.placed_location),
                      t.buffer_index, len(shape), 1 if t.requires_grad else 0, t.storage_offset,
                      t.storage_byte_offset, t.byte_size)
    return TensorTable(names, strings, records, np.array(shapes, dtype=np.int64),
                       np.array(strides, dtype=np.int64), packed=False)


def _segments(values, starts, op, empty):
    """op reduced over each tensor's slice of `values` (values[starts[i]:starts[i+1]]);
    `empty` for tensors without dims."""
    count = len(starts) - 1
    if count == 0:
        return np.zeros(0, dtype=values.dtype)
    padded = np.append(values, np.array([empty], dtype=values.dtype))
    out = op.reduceat(padded, starts[:-1])
    return np.where(starts[1:] == starts[:-1], np.array(empty, dtype=values.dtype), out)


class Geometry:
    """Per tensor: itemsize, numel, extent (bytes from the storage's start touched, 0 without
    elements), computed and checked for the whole table at once."""

    def __init__(self, table, buffer_count):
        count = len(table)
        self.table = table
        if count == 0:
            self.itemsize = self.numel = self.extent = np.zeros(0, dtype=np.int64)
            self.owner = np.zeros(0, dtype=np.int64)
            return
        bad = (table.buffer < -1) | (table.buffer >= buffer_count)
        if bad.any():
            i = int(np.argmax(bad))
            raise _bad("tensor %s: buffer %d of %d" % (table.names[i], int(table.buffer[i]),
                                                        buffer_count))
        self.owner = owner = np.repeat(np.arange(count), table.ndim)  # each dim's tensor
        negative = table.storage_offset < 0
        negative[owner[(table.shapes < 0) | (table.strides < 0)]] = True
        if negative.any():
            raise _bad("tensor %s: negative shape, stride or storage offset"
                       % table.names[int(np.argmax(negative))])
        # itemsize by dtype string, looked up once per distinct dtype (unknown: an error).
        sizes = np.zeros(len(table.strings), dtype=np.int64)
        for code in np.unique(table.dtype).tolist():
            sizes[code] = _dtypes.info(table.strings[code]).itemsize
        self.itemsize = itemsize = sizes[table.dtype]
        fshapes = table.shapes.astype(np.float64)
        fnumel = _segments(fshapes, table.starts, np.multiply, 1.0)
        huge = fnumel * itemsize > _LIMIT
        if huge.any():
            raise _bad("tensor %s: %g elements is more than any buffer holds"
                       % (table.names[int(np.argmax(huge))], fnumel[int(np.argmax(huge))]))
        full = fnumel > 0
        full_dims = full[owner] if len(owner) else np.zeros(0, dtype=bool)
        fterms = np.where(full_dims, (fshapes - 1) * table.strides.astype(np.float64), 0.0)
        flast = table.storage_offset.astype(np.float64) + _segments(
            fterms, table.starts, np.add, 0.0)
        huge = full & ((flast + 1) * itemsize > _LIMIT)
        if huge.any():
            raise _bad("tensor %s: its view reaches past any buffer (storage offset and "
                       "strides)" % table.names[int(np.argmax(huge))])
        if float(np.max(np.maximum(fnumel, flast + 1) * itemsize)) <= _EXACT:
            # Every product and sum above is an integer at most 2**53 (the factors and terms
            # are not negative; a zero size makes the product 0 whatever came before): exact.
            numel = fnumel.astype(np.int64)
            last = flast.astype(np.int64)
        else:
            # Exact in int64: every product is below 2**60 (a zero size makes it 0 whatever
            # wrapped).
            numel = _segments(table.shapes, table.starts, np.multiply, 1)
            terms = np.where(full_dims, (table.shapes - 1) * table.strides, 0)
            last = table.storage_offset + _segments(terms, table.starts, np.add, 0)
        self.numel = numel
        wrong = (table.byte_size != 0) & (table.byte_size != (numel * itemsize).astype(np.uint64))
        if wrong.any():
            i = int(np.argmax(wrong))
            raise _bad("tensor %s: byte_size %d but numel %d x %d bytes"
                       % (table.names[i], int(table.byte_size[i]), int(numel[i]),
                          int(itemsize[i])))
        self.extent = np.where(full, (last + 1) * itemsize, 0)

    def check_bounds(self, limits):
        """limits[b]: the bytes buffer b holds (-1 where no tensor with elements needs it).
        Every tensor with elements must lie inside its buffer."""
        table = self.table
        used = (self.extent > 0) & (table.buffer >= 0)
        if not used.any():
            return
        limit = np.asarray(limits, dtype=np.int64)[np.where(used, table.buffer, 0)]
        offset = table.storage_byte_offset
        past = used & ((offset > limit.clip(0).astype(np.uint64)) |
                       (self.extent > limit - offset.clip(0, 1 << 62).astype(np.int64)))
        if past.any():
            i = int(np.argmax(past))
            raise _bad("tensor %s extends past its buffer (%d bytes at %d, buffer of %d)"
                       % (table.names[i], int(self.extent[i]), int(offset[i]), int(limit[i])))
