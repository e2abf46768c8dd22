"""The packed tensor table (ModelDescription.packed_tensors): decoded equal to the repeated
form, and hostile bytes refused with a clear error before any tensor is built."""
import json
import struct
import tempfile
import unittest

import grpc

import weightd
from fake_daemon import FakeDaemon, Fixture, pack_description
from weightd import _model, _table
from weightd._proto import weightd_pb2 as pb

try:
    import torch
except ImportError:
    torch = None


class TableTest(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="weightd-table-")
        self.fixture = Fixture(self.root)
        self.addCleanup(self.fixture.cleanup)
        self.repeated = self.fixture.description("m1")
        self.packed = pack_description(self.repeated)

    def refused(self, description, pattern, buffers=None):
        with self.assertRaisesRegex(weightd.WeightdError, pattern) as caught:
            table = _table.from_description(description)
            _table.Geometry(table, len(description.buffers) if buffers is None else buffers)
        self.assertEqual(caught.exception.code, grpc.StatusCode.INTERNAL)

    def corrupt(self, edit):
        """A packed description whose packed_tensors went through edit(bytearray)."""
        d = pb.ModelDescription()
        d.CopyFrom(self.packed)
        data = bytearray(d.packed_tensors)
        edit(data)
        d.packed_tensors = bytes(data)
        return d

    def test_packed_rows_equal_the_repeated_tensors(self):
        for record_bytes in (48, 64):  # a later daemon's longer records read the same
            packed = pack_description(self.repeated, record_bytes)
            table = _table.from_description(packed)
            self.assertEqual(len(table), len(self.repeated.tensors))
            for i, t in enumerate(self.repeated.tensors):
                self.assertEqual(table.tensor(i), t, t.name)
            repeated = _table.from_description(self.repeated)
            for i, t in enumerate(self.repeated.tensors):
                self.assertEqual(repeated.tensor(i), t, t.name)

    def test_geometry_equals_the_per_tensor_rule(self):
        geometry = _table.Geometry(_table.from_description(self.packed), 3)
        for i, t in enumerate(self.repeated.tensors):
            itemsize = weightd._dtypes.info(t.dtype).itemsize
            numel = 1
            for n in t.shape:
                numel *= n
            last = t.storage_offset + sum((n - 1) * s for n, s in zip(t.shape, t.stride))
            self.assertEqual(int(geometry.numel[i]), numel, t.name)
            self.assertEqual(int(geometry.extent[i]), (last + 1) * itemsize if numel else 0,
                             t.name)

    def test_no_tensors(self):
        d = pack_description(pb.ModelDescription(model_id="m0"))
        self.assertEqual(len(d.packed_tensors), 16)
        self.assertEqual(len(_table.from_description(d)), 0)
        entries, anchors, _ = _model.materialize(d, _model.NumpyBackend(__import__("numpy")))
        self.assertEqual((dict(entries), anchors), ({}, []))

    def test_hostile_structure(self):
        self.refused(self.corrupt(lambda b: b.__delitem__(slice(4, None))),
                     "shorter than its 16-byte header")
        self.refused(self.corrupt(lambda b: b.__setitem__(slice(0, 4), struct.pack("<I", 2))),
                     "version 2, this client reads version 1; upgrade the client")
        self.refused(self.corrupt(lambda b: b.__setitem__(slice(4, 8), struct.pack("<I", 8))),
                     "records of 8 bytes")
        self.refused(self.corrupt(lambda b: b.__setitem__(slice(4, 8),
                                                          struct.pack("<I", 1 << 31))),
                     "records of 2147483648 bytes")
        # A count the bytes cannot hold, and one byte too many.
        self.refused(self.corrupt(lambda b: b.__setitem__(slice(8, 12),
                                                          struct.pack("<I", 0xFFFFFFFF))),
                     "4294967295 tensors of 48 bytes")
        self.refused(self.corrupt(lambda b: b.extend(b"\0")), "bytes, but 11 tensors")
        # dims in the header disagreeing with the records' ndim (bytes adjusted to match).
        def more_dims(b):
            b[12:16] = struct.pack("<I", struct.unpack_from("<I", b, 12)[0] + 1)
            b.extend(b"\0" * 16)
        self.refused(self.corrupt(more_dims), "dims add up to")

    def record(self, i, field):
        offset = dict((f[0], f[2]) for f in _table._FIELDS)[field]
        return 16 + 48 * i + offset

    def set_field(self, i, field, fmt, value):
        at = self.record(i, field)
        return self.corrupt(lambda b: b.__setitem__(slice(at, at + struct.calcsize(fmt)),
                                                    struct.pack(fmt, value)))

    def test_hostile_records(self):
        self.refused(self.set_field(1, "ndim", "<I", 1000), "tensor 1 has 1000 dims")
        self.refused(self.set_field(2, "dtype", "<I", 99), "tensor 2's dtype is string 99")
        self.refused(self.set_field(0, "placed", "<I", 77), "tensor 0's placed is string 77")
        self.refused(self.set_field(3, "buffer", "<i", 3), "tensor c.int64: buffer 3 of 3")
        self.refused(self.set_field(3, "buffer", "<i", -2), "tensor c.int64: buffer -2 of 3")
        self.refused(self.set_field(2, "storage_offset", "<q", -1),
                     "tensor b.window: negative shape, stride or storage offset")
        self.refused(self.set_field(0, "byte_size", "<Q", 81),
                     "tensor a.weight: byte_size 81 but numel 20 x 4 bytes")
        self.refused(self.set_field(2, "storage_offset", "<q", 1 << 62),
                     "tensor b.window: its view reaches past any buffer")

    def dims_at(self, i):
        table = _table.from_description(self.packed)
        return 16 + 48 * len(table) + 8 * int(table.starts[i]), 8 * int(table.starts[-1])

    def test_hostile_sizes_and_strides(self):
        shape_at, dims_bytes = self.dims_at(0)
        for value, pattern in [(-5, "tensor a.weight: negative shape"),
                               (1 << 62, "more than any buffer holds"),
                               ((1 << 63) - 1, "more than any buffer holds")]:
            d = self.corrupt(lambda b: b.__setitem__(slice(shape_at, shape_at + 8),
                                                     struct.pack("<q", value)))
            self.refused(d, pattern)
        # A size whose product overflows int64 only once multiplied out.
        d = self.corrupt(lambda b: (b.__setitem__(slice(shape_at, shape_at + 8),
                                                  struct.pack("<q", 1 << 40)),
                                    b.__setitem__(slice(shape_at + 8, shape_at + 16),
                                                  struct.pack("<q", 1 << 40))))
        self.refused(d, "more than any buffer holds")
        stride_at = shape_at + dims_bytes
        d = self.corrupt(lambda b: b.__setitem__(slice(stride_at, stride_at + 8),
                                                 struct.pack("<q", 1 << 61)))
        self.refused(d, "tensor a.weight: its view reaches past any buffer")
        # Sizes of a tensor without elements do not count (torch allows any stride there).
        empty = list(self.fixture.expected).index("g.empty")
        shape_at, dims_bytes = self.dims_at(empty)
        d = self.corrupt(lambda b: b.__setitem__(slice(shape_at + dims_bytes + 8,
                                                       shape_at + dims_bytes + 16),
                                                 struct.pack("<q", 1 << 62)))
        _table.Geometry(_table.from_description(d), 3)

    def test_geometry_is_exact_past_float64_precision(self):
        # a.weight as (2**27 + 1) x (2**27 + 1), strides (2**27 + 1, 1): its element count
        # and last element are odd numbers above 2**53, which float64 cannot hold.
        n = (1 << 27) + 1
        shape_at, dims_bytes = self.dims_at(0)
        size_at = self.record(0, "byte_size")

        def edit(b):
            b[shape_at:shape_at + 16] = struct.pack("<qq", n, n)
            b[shape_at + dims_bytes:shape_at + dims_bytes + 16] = struct.pack("<qq", n, 1)
            b[size_at:size_at + 8] = struct.pack("<Q", n * n * 4)

        geometry = _table.Geometry(_table.from_description(self.corrupt(edit)), 3)
        self.assertEqual(int(geometry.numel[0]), n * n)
        self.assertEqual(int(geometry.extent[0]), ((n - 1) * n + (n - 1) + 1) * 4)

    def test_hostile_names_and_strings(self):
        d = pb.ModelDescription()
        d.CopyFrom(self.packed)
        d.packed_names = d.packed_names + b"\0extra"
        self.refused(d, "12 names for 11 tensors")
        d.packed_names = b"\xff\xfe" + self.packed.packed_names
        self.refused(d, "names are not UTF-8")
        d.CopyFrom(self.packed)
        del d.packed_strings[:]
        self.refused(d, "string 0 of 0")
        d.CopyFrom(self.packed)
        d.tensors.add(name="both")
        self.refused(d, "both packed and repeated")
        d = pb.ModelDescription(packed_names=b"a")
        self.refused(d, "packed names or strings without packed tensors")

    def test_past_the_buffer(self):
        # The bounds are the mapped buffers': a tensor beyond its file is refused.
        d = self.set_field(0, "storage_byte_offset", "<Q", 1 << 63)
        with self.assertRaisesRegex(weightd.WeightdError, "tensor a.weight extends past its "
                                                          "buffer"):
            _model.materialize(d, _model.NumpyBackend(__import__("numpy")))
        d = self.set_field(0, "storage_byte_offset", "<Q", self.fixture.identity.size - 8)
        with self.assertRaisesRegex(weightd.WeightdError, "tensor a.weight extends past its "
                                                          "buffer"):
            _model.materialize(d, _model.NumpyBackend(__import__("numpy")))

    def test_unknown_dtype(self):
        d = pb.ModelDescription()
        d.CopyFrom(self.packed)
        d.packed_strings[0] = "float99"
        with self.assertRaisesRegex(weightd.UnsupportedDtypeError, "float99"):
            _model.materialize(d, _model.NumpyBackend(__import__("numpy")))


@unittest.skipIf(torch is None, "torch is not installed")
class PackedModelTest(unittest.TestCase):
    """What a packed answer gives next to what the repeated one gives, through the client."""

    def setUp(self):
        self.daemon = FakeDaemon()
        self.addCleanup(self.daemon.stop)
        self.model_id, self.fixture = self.daemon.add_fixture()
        self.client = weightd.Client(self.daemon.address, timeout=10)
        self.addCleanup(self.client.close)

    def load(self, compact):
        self.daemon.compact = compact
        return self.client.load(self.fixture.path)

    def test_same_tensors_storages_and_description(self):
        packed, repeated = self.load(True), self.load(False)
        self.assertEqual(list(packed), list(repeated))
        self.assertEqual(len(packed.description.tensors), len(self.fixture.tensors))
        self.assertEqual(packed.description, repeated.description)
        self.assertEqual(packed.description.packed_tensors, b"")
        for name, want in repeated.items():
            got = packed[name]
            self.assertEqual((got.dtype, got.shape, got.device, got.requires_grad),
                             (want.dtype, want.shape, want.device, want.requires_grad), name)
            if want.is_meta:
                continue
            self.assertEqual(got.stride(), want.stride(), name)
            self.assertEqual(got.storage_offset(), want.storage_offset(), name)
            self.assertEqual(got.data_ptr(), want.data_ptr(), name)
            self.assertEqual(got.storage().nbytes(), want.storage().nbytes(), name)
            self.assertTrue(torch.equal(got.detach(), want.detach()), name)
        # Views of one storage share it; others have their own, as torch.load gives them.
        storage = lambda m, k: m[k].storage().data_ptr()
        self.assertEqual(storage(packed, "a.weight"), storage(packed, "a.weight_t"))
        self.assertEqual(storage(packed, "a.weight"), storage(packed, "b.window"))
        self.assertNotEqual(storage(packed, "a.weight"), storage(packed, "c.int64"))
        self.assertEqual(packed.tensor_info("d.bf16"), repeated.tensor_info("d.bf16"))

    def test_config_and_generation_config(self):
        d = self.fixture.description(self.model_id)
        path = self.fixture.path
        self.daemon.register(path, self.model_id, d)
        model = self.client.load(path)
        self.assertIsNone(model.config)
        self.assertIsNone(model.generation_config)
        d.config_json = json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 8})
        d.generation_config_json = json.dumps({"max_length": 32})
        model = self.client.load(path)
        self.assertEqual(model.config, {"architectures": ["LlamaForCausalLM"], "hidden_size": 8})
        self.assertEqual(model.generation_config, {"max_length": 32})


if __name__ == "__main__":
    unittest.main()
