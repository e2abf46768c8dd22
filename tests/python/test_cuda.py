"""The GPU-arena path's pure parts, with a fake libcudart and a fake torch.cuda (no GPU here;
tests/python/test_gpu_ipc.py runs the real thing where there is one)."""
import ctypes
import gc
import os
import tempfile
import types
import unittest
import warnings
from unittest import mock

import grpc
import numpy as np

import weightd
from weightd import _cuda, _lease, _model
from weightd._proto import weightd_pb2 as pb

try:
    import torch
except ImportError:
    torch = None

UUID0 = "GPU-11111111-2222-3333-4444-555555555555"
UUID1 = "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"


class FakeLib:
    """Stands in for libcudart: records calls; 'device memory' is host memory."""

    def __init__(self, memory):
        self.memory = memory
        self.calls = []
        self.device = 0
        lib = self

        def fn(name, impl):
            def call(*args):
                lib.calls.append((name,) + tuple(args))
                return impl(*args)
            call.__name__ = name
            setattr(self, name, call)

        fn("cudaGetErrorString", lambda e: b"fake error")
        fn("cudaGetDevice", lambda ref: (setattr(ref._obj, "value", lib.device), 0)[1])
        fn("cudaSetDevice", lambda d: (setattr(lib, "device", d), 0)[1])
        fn("cudaIpcOpenMemHandle", self._open)
        fn("cudaIpcCloseMemHandle", lambda p: 0)
        fn("cudaDeviceSynchronize", lambda: 0)
        self.opened = []

    def _open(self, ref, handle, flags):
        self.opened.append((bytes(handle), flags, self.device))
        ref._obj.value = ctypes.addressof(self.memory)
        return 0


class PureTest(unittest.TestCase):
    def test_normalize_uuid(self):
        want = "aaaaaaaabbbbccccddddeeeeeeeeeeee"
        self.assertEqual(_cuda.normalize_uuid(UUID1), want)
        self.assertEqual(_cuda.normalize_uuid(UUID1.upper()), want)
        self.assertEqual(_cuda.normalize_uuid(UUID1[4:]), want)
        self.assertEqual(_cuda.normalize_uuid(bytes.fromhex(want)), want)

    def test_device_for_uuid(self):
        uuids = [_cuda.normalize_uuid(UUID0), _cuda.normalize_uuid(UUID1)]
        self.assertEqual(_cuda.device_for_uuid(uuids, UUID1), 1)
        with self.assertRaises(weightd.WeightdError) as caught:
            _cuda.device_for_uuid(uuids, "GPU-99999999-2222-3333-4444-555555555555")
        self.assertEqual(caught.exception.code, grpc.StatusCode.NOT_FOUND)
        self.assertIn("not visible to this process", str(caught.exception))

    def test_visible_gpu_uuids_from_torch_properties(self):
        props = [types.SimpleNamespace(uuid=UUID0[4:]), types.SimpleNamespace()]
        fake_torch = types.SimpleNamespace(cuda=types.SimpleNamespace(
            device_count=lambda: 2, get_device_properties=lambda i: props[i]))
        with mock.patch.object(_cuda, "_driver_uuid",
                               lambda i: bytes.fromhex(_cuda.normalize_uuid(UUID1))):
            self.assertEqual(_cuda.visible_gpu_uuids(fake_torch),
                             [_cuda.normalize_uuid(UUID0), _cuda.normalize_uuid(UUID1)])

    def test_handles(self):
        handle = (b"WDFG\x01\x00\x00\x00" + (16).to_bytes(8, "little") +
                  b"/weightd-gpu0-3".ljust(48, b"\0"))
        self.assertEqual(_cuda.shared_memory_segment(handle), ("/weightd-gpu0-3", 16))
        with self.assertRaises(weightd.WeightdError):
            _cuda.shared_memory_segment(b"\0" * 64)
        with self.assertRaises(weightd.WeightdError):  # a bare name is not a handle
            _cuda.shared_memory_segment(b"/weightd-gpu0-3".ljust(64, b"\0"))
        self.assertEqual(_cuda.check_ipc_handle(b"x" * 64), b"x" * 64)
        with self.assertRaises(weightd.WeightdError) as caught:
            _cuda.check_ipc_handle(b"x" * 63)
        self.assertEqual(caught.exception.code, grpc.StatusCode.INVALID_ARGUMENT)

    def test_cuda_array_interface(self):
        owner = object()
        view = _cuda.CudaBytes(0x7F0000001000, 4096, owner)
        self.assertEqual(view.__cuda_array_interface__, {
            "shape": (4096,), "typestr": "|u1", "data": (0x7F0000001000, False),
            "strides": None, "version": 2})
        self.assertIs(view.owner, owner)

    def test_cudart_candidates(self):
        with tempfile.TemporaryDirectory() as d:
            torch_lib = os.path.join(d, "torch", "lib")
            wheel = os.path.join(d, "site", "nvidia", "cuda_runtime", "lib")
            for directory in (torch_lib, wheel):
                os.makedirs(directory)
            open(os.path.join(torch_lib, "libcudart-abc.so.12"), "w").close()
            open(os.path.join(wheel, "libcudart.so.12"), "w").close()
            maps = "7f00-7f10 r-xp 0 08:01 1 /opt/loaded/libcudart.so.12.4\n7f-7f r 0 0 0 [heap]"
            with mock.patch.dict(os.environ, {"WEIGHTD_CUDART": "/env/libcudart.so"}):
                got = _cuda.cudart_candidates(os.path.join(d, "torch"),
                                              [os.path.join(d, "site")], maps)
        self.assertEqual(got[:4], ["/env/libcudart.so", "/opt/loaded/libcudart.so.12.4",
                                   os.path.join(torch_lib, "libcudart-abc.so.12"),
                                   os.path.join(wheel, "libcudart.so.12")])
        self.assertEqual(got[-4:], ["libcudart.so", "libcudart.so.13", "libcudart.so.12",
                                    "libcudart.so.11.0"])

    def test_runtime_open_close(self):
        memory = (ctypes.c_uint8 * 64)()
        lib = FakeLib(memory)
        lib.device = 3
        rt = _cuda.CudaRuntime(lib)
        pointer = rt.ipc_open(b"h" * 64, 1)
        self.assertEqual(pointer, ctypes.addressof(memory))
        self.assertEqual(lib.opened, [(b"h" * 64, 1, 1)])  # lazy peer access, on device 1
        self.assertEqual(lib.device, 3)  # the caller's device is restored
        rt.ipc_close(pointer, 1)
        self.assertIn(("cudaIpcCloseMemHandle",), [c[:1] for c in lib.calls])
        lib.cudaIpcOpenMemHandle = lambda *a: 201
        with self.assertRaises(weightd.WeightdError) as caught:
            rt.ipc_open(b"h" * 64, 0)
        self.assertIn("cudaIpcOpenMemHandle: fake error (error 201)", str(caught.exception))


class FakeSession:
    def __init__(self):
        self.released = []

    def release(self, model_id):
        self.released.append(model_id)

    def load_started(self):
        pass

    def load_done(self):
        pass


@unittest.skipIf(torch is None, "torch is not installed")
class ArenaTest(unittest.TestCase):
    """materialize() over a 'GPU arena' whose device memory is host memory: the handle opened
    once, tensors at the right offsets, the handle closed and the lease released when the last
    tensor dies."""

    class Backend(_model.TorchBackend):
        def cuda_storage(self, cuda_bytes, device):
            holder = types.SimpleNamespace(keep=cuda_bytes, __array_interface__={
                "shape": (cuda_bytes.size,), "typestr": "|u1",
                "data": (cuda_bytes.pointer, False), "version": 3})
            return torch.from_numpy(np.asarray(holder))

    def test_gpu_arena(self):
        values = np.arange(16, dtype="<f4")
        memory = (ctypes.c_uint8 * 128)()
        ctypes.memmove(ctypes.addressof(memory) + 64, values.tobytes(), 64)
        lib = FakeLib(memory)
        closes = []
        lib.cudaIpcCloseMemHandle = lambda p: closes.append(p.value) or 0
        props = [types.SimpleNamespace(uuid=UUID0), types.SimpleNamespace(uuid=UUID1)]
        fake_torch = types.SimpleNamespace(cuda=types.SimpleNamespace(
            is_available=lambda: True, device_count=lambda: 2,
            get_device_properties=lambda i: props[i]))
        d = pb.ModelDescription(model_id="m1")
        handle = bytes(range(64))
        # `fake` (deprecated) is not read: the handle kind alone says CUDA IPC.
        d.buffers.add().gpu.CopyFrom(pb.GpuArena(gpu_uuid=UUID1, gpu_index=0, ipc_handle=handle,
                                                 size=128, handle_kind=pb.GpuArena.CUDA_IPC,
                                                 fake=True))
        d.tensors.add(name="w", dtype="float32", shape=[2, 4], stride=[4, 1], byte_size=32,
                      buffer_index=0, storage_byte_offset=64)
        d.tensors.add(name="w_t", dtype="float32", shape=[4, 2], stride=[1, 4], byte_size=32,
                      buffer_index=0, storage_byte_offset=64)
        d.tensors.add(name="tail", dtype="float32", shape=[2], stride=[1], storage_offset=2,
                      byte_size=8, buffer_index=0, storage_byte_offset=96)
        session = FakeSession()
        with mock.patch.object(_cuda, "_runtime", _cuda.CudaRuntime(lib)):
            pairs, anchors, _ = _model.materialize(d, self.Backend(torch), torch=fake_torch)
            entries = dict(pairs)
            del pairs
            self.assertEqual(len(anchors), 1)  # one per arena, not one per storage
            _lease.LoadLease(session, "m1", anchors)
            del anchors
            # A second load of the same arena reuses the opened handle.
            again, anchors2, _ = _model.materialize(d, self.Backend(torch), torch=fake_torch)
            _lease.LoadLease(session, "m1", anchors2)
            del anchors2
        self.assertEqual(len(lib.opened), 1)
        self.assertEqual(lib.opened[0], (handle, 1, 1))  # UUID1 is this process's cuda:1
        expected = torch.from_numpy(values)
        self.assertTrue(torch.equal(entries["w"], expected[:8].view(2, 4)))
        self.assertTrue(torch.equal(entries["w_t"], expected[:8].view(2, 4).t()))
        self.assertTrue(torch.equal(entries["tail"], expected[10:12]))
        # One storage per saved storage, as torch.load gives them.
        self.assertEqual(entries["w"].storage().data_ptr(), entries["w_t"].storage().data_ptr())
        self.assertEqual(entries["w"].storage().size(), 8)
        self.assertEqual(entries["tail"].storage().size(), 4)
        self.assertEqual(entries["tail"].storage_offset(), 2)
        del again
        gc.collect()
        self.assertEqual(session.released, ["m1"])
        self.assertEqual(closes, [])
        w, tail = entries["w"], entries["tail"]  # two storages
        del entries
        gc.collect()
        self.assertEqual(session.released, ["m1"])
        del w
        gc.collect()
        self.assertEqual(session.released, ["m1"])
        self.assertEqual(closes, [])
        del tail
        gc.collect()
        self.assertEqual(session.released, ["m1", "m1"])
        self.assertEqual(closes, [ctypes.addressof(memory)])

    def test_gpu_arena_without_cuda(self):
        d = pb.ModelDescription(model_id="m1")
        d.buffers.add().gpu.CopyFrom(pb.GpuArena(gpu_uuid=UUID1, ipc_handle=b"x" * 64, size=8,
                                                 handle_kind=pb.GpuArena.CUDA_IPC))
        d.tensors.add(name="w", dtype="float32", shape=[2], stride=[1], byte_size=8,
                      buffer_index=0)
        no_cuda = types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda: False))
        with self.assertRaises(weightd.WeightdError) as caught:
            _model.materialize(d, _model.TorchBackend(torch), torch=no_cuda)
        self.assertIn("no torch with CUDA", str(caught.exception))

    def test_arenas_open_by_handle_kind_only(self):
        cuda = types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda: True))
        for kind, code, text in [
                (pb.GpuArena.HANDLE_KIND_UNSPECIFIED, grpc.StatusCode.FAILED_PRECONDITION,
                 "names no handle kind"),
                (7, grpc.StatusCode.INVALID_ARGUMENT, "handle kind 7")]:
            d = pb.ModelDescription(model_id="m1")
            # Even with the deprecated `fake` set: it is never read.
            d.buffers.add().gpu.CopyFrom(pb.GpuArena(gpu_uuid=UUID1, ipc_handle=b"x" * 64,
                                                     size=8, handle_kind=kind, fake=True))
            d.tensors.add(name="w", dtype="float32", shape=[2], stride=[1], byte_size=8,
                          buffer_index=0)
            d.tensors.add(name="none", dtype="float32", shape=[0], stride=[1], byte_size=0,
                          buffer_index=0)
            with self.assertRaises(weightd.WeightdError) as caught:
                _model.materialize(d, _model.TorchBackend(torch), torch=cuda)
            self.assertEqual(caught.exception.code, code)
            self.assertIn(text, str(caught.exception))
            del d.tensors[0]  # a tensor without elements asks the kind too
            with self.assertRaises(weightd.WeightdError) as caught:
                _model.materialize(d, _model.TorchBackend(torch), torch=cuda)
            self.assertEqual(caught.exception.code, code)

    def test_shared_memory_arena_smaller_than_described(self):
        handle = (b"WDFG\x01\x00\x00\x00" + (16).to_bytes(8, "little") +
                  b"/weightd-gpu0-3".ljust(48, b"\0"))
        d = pb.ModelDescription(model_id="m1")
        d.buffers.add().gpu.CopyFrom(pb.GpuArena(
            gpu_uuid=UUID1, ipc_handle=handle, size=32,
            handle_kind=pb.GpuArena.SHARED_MEMORY))
        d.tensors.add(name="w", dtype="float32", shape=[8], stride=[1], byte_size=32,
                      buffer_index=0)
        with self.assertRaises(weightd.WeightdError) as caught:
            _model.materialize(d, _model.TorchBackend(torch), torch=None)
        self.assertIn("segment holds 16", str(caught.exception))


class DtypeTest(unittest.TestCase):
    def test_names(self):
        from weightd import _dtypes
        self.assertEqual(_dtypes.info("bfloat16").itemsize, 2)
        self.assertEqual(_dtypes.info("float8_e4m3fn").itemsize, 1)
        self.assertEqual(_dtypes.info("complex64").itemsize, 8)
        self.assertEqual(_dtypes.name_of("torch.float16"), "float16")
        with self.assertRaises(weightd.UnsupportedDtypeError):
            _dtypes.info("float7")
        old_torch = types.SimpleNamespace(__version__="1.0")
        with self.assertRaises(weightd.UnsupportedDtypeError) as caught:
            _dtypes.torch_dtype(old_torch, "float8_e4m3fn")
        self.assertIn("needs a newer PyTorch", str(caught.exception))
        self.assertEqual(_dtypes.numpy_dtype(np, "bfloat16"), (np.dtype("<u2"), True))
        self.assertEqual(_dtypes.numpy_dtype(np, "float32"), (np.dtype("<f4"), False))

    @unittest.skipIf(torch is None, "torch is not installed")
    def test_every_torch_dtype_this_torch_has(self):
        from weightd import _dtypes
        for name, d in _dtypes.DTYPES.items():
            dtype = getattr(torch, name, None)
            if dtype is None:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # complex32 is "experimental"
                self.assertEqual(torch.empty(0, dtype=dtype).element_size(), d.itemsize, name)


if __name__ == "__main__":
    unittest.main()
