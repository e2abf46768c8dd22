"""CUDA IPC for GPU arenas: libcudart through ctypes, GPU matching by UUID, and device memory
wrapped for torch through __cuda_array_interface__ (zero-copy).

None of this runs without an NVIDIA GPU; the pure parts (UUID normalisation and matching,
handle checks, the interface dict, open-once/close-on-last-use bookkeeping) are unit-tested
with fakes in tests/python/test_cuda.py.
"""
import ctypes
import glob
import os
import sys
import threading
import weakref

import grpc

from .errors import WeightdError

IPC_HANDLE_SIZE = 64  # sizeof(cudaIpcMemHandle_t)
CUDA_IPC_MEM_LAZY_ENABLE_PEER_ACCESS = 1


def _error(message, code=grpc.StatusCode.FAILED_PRECONDITION):
    return WeightdError(code, message)


def normalize_uuid(uuid):
    """'GPU-58A7E6F5-...' / '58a7e6f5-...' / 16 raw bytes -> '58a7e6f5...' (32 hex digits)."""
    raw = getattr(uuid, "bytes", uuid)  # torch's _CUuuid has .bytes
    if isinstance(raw, (bytes, bytearray)) and len(raw) == 16:
        return bytes(raw).hex()
    text = str(uuid).strip().lower()
    if text.startswith("gpu-"):
        text = text[4:]
    return text.replace("-", "")


def shared_memory_segment(handle):
    """(name, size) of the segment a SHARED_MEMORY arena handle names.

    Layout (loader/device/shared_memory.h): bytes 0-3 magic "WDFG" (fake GPU) or "WDSH"
    (host), 4 version (1), 5 device index, 8-15 size (little-endian), 16-63 the NUL-padded
    segment name.
    """
    handle = bytes(handle)
    if len(handle) != IPC_HANDLE_SIZE or handle[:4] not in (b"WDFG", b"WDSH") or handle[4] != 1:
        raise _error("shared-memory arena handle is not a weightd shared-memory handle",
                     grpc.StatusCode.INVALID_ARGUMENT)
    name = handle[16:].split(b"\0", 1)[0]
    if not name:
        raise _error("shared-memory arena handle holds no segment name",
                     grpc.StatusCode.INVALID_ARGUMENT)
    return name.decode("utf-8", "strict"), int.from_bytes(handle[8:16], "little")


def check_ipc_handle(handle):
    handle = bytes(handle)
    if len(handle) != IPC_HANDLE_SIZE:
        raise _error("GPU arena handle is %d bytes, not a %d-byte cudaIpcMemHandle_t"
                     % (len(handle), IPC_HANDLE_SIZE), grpc.StatusCode.INVALID_ARGUMENT)
    return handle


def cuda_array_interface(pointer, size):
    """A __cuda_array_interface__ (v2) dict for `size` bytes of device memory at `pointer`."""
    return {
        "shape": (int(size),),
        "typestr": "|u1",
        "data": (int(pointer), False),
        "strides": None,
        "version": 2,
    }


class CudaBytes:
    """`size` bytes of device memory at `pointer`, for torch.as_tensor. Holds `owner` (the
    opened arena) alive for as long as a tensor built on it lives."""

    def __init__(self, pointer, size, owner):
        self.pointer = int(pointer)
        self.size = int(size)
        self.owner = owner
        self.__cuda_array_interface__ = cuda_array_interface(self.pointer, self.size)


def visible_gpu_uuids(torch):
    """Normalised UUIDs of the GPUs this process sees, in torch's device order."""
    count = torch.cuda.device_count()
    uuids = []
    for i in range(count):
        uuid = getattr(torch.cuda.get_device_properties(i), "uuid", None)
        if uuid is None:
            uuid = _driver_uuid(i)
        uuids.append(normalize_uuid(uuid))
    return uuids


def device_for_uuid(uuids, gpu_uuid):
    """The index in `uuids` (normalised) of the GPU named `gpu_uuid`; an error if not visible."""
    want = normalize_uuid(gpu_uuid)
    for i, uuid in enumerate(uuids):
        if uuid == want:
            return i
    raise _error("GPU %s is not visible to this process (visible: %s)"
                 % (gpu_uuid, ", ".join(uuids) or "none"), grpc.StatusCode.NOT_FOUND)


def _driver_uuid(ordinal):
    """UUID of a device through the driver API (for torch versions whose device properties
    lack `uuid`)."""
    lib = ctypes.CDLL("libcuda.so.1")
    lib.cuInit(0)
    device = ctypes.c_int()
    if lib.cuDeviceGet(ctypes.byref(device), ordinal) != 0:
        raise _error("cuDeviceGet(%d) failed" % ordinal)
    raw = (ctypes.c_ubyte * 16)()
    if lib.cuDeviceGetUuid(raw, device) != 0:
        raise _error("cuDeviceGetUuid(%d) failed" % ordinal)
    return bytes(raw)


def cudart_candidates(torch_dir=None, search_path=None, maps_text=None):
    """Where to look for libcudart, best first: the copy already loaded into this process (it
    shares torch's state), torch's bundled one, the nvidia-cuda-runtime wheel's, then the
    loader's search path. WEIGHTD_CUDART overrides everything."""
    candidates = []
    env = os.environ.get("WEIGHTD_CUDART")
    if env:
        candidates.append(env)
    if maps_text is None:
        try:
            with open("/proc/self/maps") as maps:
                maps_text = maps.read()
        except OSError:
            maps_text = ""
    for line in maps_text.splitlines():
        path = line.split()[-1] if line.split() else ""
        if "/libcudart" in path and path not in candidates:
            candidates.append(path)
    if torch_dir:
        candidates += sorted(glob.glob(os.path.join(torch_dir, "lib", "libcudart*.so*")))
    for entry in (search_path if search_path is not None else sys.path):
        if not entry:
            continue
        candidates += sorted(glob.glob(os.path.join(entry, "nvidia", "cuda_runtime", "lib",
                                                    "libcudart.so*")))
        candidates += sorted(glob.glob(os.path.join(entry, "nvidia", "cu*", "lib",
                                                    "libcudart.so*")))
    candidates += ["libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0"]
    seen = set()
    return [c for c in candidates if not (c in seen or seen.add(c))]


class _IpcHandle(ctypes.Structure):
    _fields_ = [("reserved", ctypes.c_char * IPC_HANDLE_SIZE)]


class CudaRuntime:
    """The few libcudart calls the client needs."""

    def __init__(self, lib):
        self.lib = lib
        lib.cudaGetErrorString.restype = ctypes.c_char_p
        lib.cudaGetErrorString.argtypes = [ctypes.c_int]
        lib.cudaSetDevice.argtypes = [ctypes.c_int]
        lib.cudaGetDevice.argtypes = [ctypes.POINTER(ctypes.c_int)]
        lib.cudaIpcOpenMemHandle.argtypes = [ctypes.POINTER(ctypes.c_void_p), _IpcHandle,
                                             ctypes.c_uint]
        lib.cudaIpcCloseMemHandle.argtypes = [ctypes.c_void_p]
        lib.cudaDeviceSynchronize.argtypes = []

    @classmethod
    def load(cls, torch=None):
        torch_dir = os.path.dirname(torch.__file__) if torch is not None else None
        errors = []
        for candidate in cudart_candidates(torch_dir):
            try:
                return cls(ctypes.CDLL(candidate))
            except OSError as e:
                errors.append("%s (%s)" % (candidate, e))
        raise _error("cannot load libcudart; tried: " + "; ".join(errors) +
                     " (set WEIGHTD_CUDART to its path)", grpc.StatusCode.UNAVAILABLE)

    def _check(self, call, result):
        if result != 0:
            text = self.lib.cudaGetErrorString(result)
            raise _error("%s: %s (error %d)" % (call, text.decode() if text else "?", result),
                         grpc.StatusCode.INTERNAL)

    def _on_device(self, device, fn):
        previous = ctypes.c_int(-1)
        have_previous = self.lib.cudaGetDevice(ctypes.byref(previous)) == 0
        self._check("cudaSetDevice(%d)" % device, self.lib.cudaSetDevice(device))
        try:
            return fn()
        finally:
            if have_previous and previous.value != device:
                self.lib.cudaSetDevice(previous.value)

    def ipc_open(self, handle, device):
        handle = check_ipc_handle(handle)
        value = _IpcHandle()
        ctypes.memmove(ctypes.addressof(value), handle, IPC_HANDLE_SIZE)
        pointer = ctypes.c_void_p()

        def open_():
            self._check("cudaIpcOpenMemHandle", self.lib.cudaIpcOpenMemHandle(
                ctypes.byref(pointer), value, CUDA_IPC_MEM_LAZY_ENABLE_PEER_ACCESS))
            return pointer.value or 0

        return self._on_device(device, open_)

    def ipc_close(self, pointer, device):
        def close():
            # Work queued on tensors of this arena must finish before the mapping goes.
            self.lib.cudaDeviceSynchronize()
            self._check("cudaIpcCloseMemHandle",
                        self.lib.cudaIpcCloseMemHandle(ctypes.c_void_p(pointer)))

        self._on_device(device, close)


_runtime = None
_runtime_lock = threading.Lock()


def runtime(torch):
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = CudaRuntime.load(torch)
        return _runtime


class OpenedArena:
    """One GPU arena opened in this process (cudaIpcOpenMemHandle once per handle). The handle
    is closed when the last CudaBytes built on it (hence the last tensor) is gone."""

    def __init__(self, rt, handle, device, size):
        self.device = device
        self.size = int(size)
        self.pointer = rt.ipc_open(handle, device)
        self._finalizer = weakref.finalize(self, _close_quietly, rt, self.pointer, device)
        self._finalizer.atexit = False  # process exit unmaps everything anyway

    def bytes_at(self, offset, size):
        return CudaBytes(self.pointer + int(offset), size, self)


class LoadAnchor:
    """One load's hold on an opened arena: the CudaBytes of every storage that load builds in
    the arena name it as their owner, so it lives until the last of them (hence the last
    tensor) is gone; the load's lease waits for it, one per arena instead of one per
    storage."""

    def __init__(self, arena):
        self.arena = arena

    def bytes_at(self, offset, size):
        return CudaBytes(self.arena.pointer + int(offset), size, self)


def _close_quietly(rt, pointer, device):
    try:
        rt.ipc_close(pointer, device)
    except Exception as e:  # a finalizer must not raise
        sys.stderr.write("weightd: closing a CUDA IPC handle failed: %s\n" % e)


_arenas = weakref.WeakValueDictionary()
_arenas_lock = threading.Lock()


def open_arena(rt, handle, device, size):
    """The process-wide OpenedArena for (handle, device), opening it on first use."""
    key = (bytes(handle), int(device))
    with _arenas_lock:
        arena = _arenas.get(key)
        if arena is None:
            arena = OpenedArena(rt, handle, device, size)
            _arenas[key] = arena
        return arena
