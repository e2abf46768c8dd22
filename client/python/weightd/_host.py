"""Host buffers: the checkpoint file or a POSIX shared-memory segment, mapped read-only once
per process and shared by every model that points into it."""
import mmap
import os
import threading
import weakref

import grpc
import numpy as np

from .errors import FileChangedError, WeightdError

_maps = weakref.WeakValueDictionary()
_lock = threading.Lock()


def _identity(st):
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _map_fd(fd, key):
    """The process-wide read-only mapping for an open file with identity `key`."""
    with _lock:
        mm = _maps.get(key)
        if mm is None:
            mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            _maps[key] = mm
        return mm


def map_file(path, identity):
    """Maps the checkpoint file read-only after checking that it is the file the daemon loaded
    (device, inode, size, mtime, and ctime, which no user call can set back; a daemon that
    sends no ctime is checked without it); FileChangedError otherwise. `identity` is a FileIdentity or
    None (no check)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise WeightdError(grpc.StatusCode.NOT_FOUND, "open %s: %s" % (path, e.strerror)) from None
    try:
        found = _identity(os.fstat(fd))
        if identity is not None:
            want = (identity.device, identity.inode, identity.size, identity.mtime_ns,
                    identity.ctime_ns or found[4])
            if found != want:
                raise FileChangedError(
                    "%s: file changed on disk since the daemon loaded it (expected dev=%d "
                    "ino=%d size=%d mtime_ns=%d ctime_ns=%d, found dev=%d ino=%d size=%d "
                    "mtime_ns=%d ctime_ns=%d); load it again" % ((path,) + want + found))
        if found[2] == 0:
            raise WeightdError(grpc.StatusCode.INVALID_ARGUMENT, "%s is empty" % path)
        return _map_fd(fd, ("file",) + found)
    finally:
        os.close(fd)


def segment_path(name):
    """shm_open name -> its file under /dev/shm."""
    name = name.lstrip("/")
    if not name or "/" in name:
        raise WeightdError(grpc.StatusCode.INVALID_ARGUMENT,
                           "bad shared-memory segment name %r" % name)
    return os.path.join("/dev/shm", name)


def map_segment(name, size):
    """Maps a POSIX shared-memory segment read-only; it must hold at least `size` bytes."""
    path = segment_path(name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise WeightdError(grpc.StatusCode.NOT_FOUND,
                           "shared-memory segment %s: %s" % (name, e.strerror)) from None
    try:
        st = os.fstat(fd)
        if st.st_size < size or st.st_size == 0:
            raise WeightdError(grpc.StatusCode.FAILED_PRECONDITION,
                               "shared-memory segment %s holds %d bytes, expected %d"
                               % (name, st.st_size, size))
        return _map_fd(fd, ("shm",) + _identity(st))
    finally:
        os.close(fd)


def read_only_array(mapping, size):
    """The first `size` bytes of a mapping as a read-only uint8 array (numpy refuses writes)."""
    return np.frombuffer(memoryview(mapping), dtype=np.uint8, count=size)


class _Unflagged:
    """What numpy builds an unflagged array from (its __array_interface__), holding a view of
    the mapping."""
    __slots__ = ("__array_interface__", "mapping_view")


def unflagged_array(mapping, size):
    """The first `size` bytes of a read-only mapping as a uint8 array numpy does not flag
    read-only, for torch: torch.from_numpy warns for every read-only array (about a fifth of
    its cost per tensor), and the tensor it makes is writable whatever the flag says. The
    memory stays PROT_READ, so a write faults either way. The array's base holds a view of the
    mapping, which keeps it mapped (and unclosable) while any array or tensor over it lives."""
    if size == 0:
        return read_only_array(mapping, 0)
    address = read_only_array(mapping, 1).__array_interface__["data"][0]
    holder = _Unflagged()
    holder.mapping_view = memoryview(mapping)
    holder.__array_interface__ = {"data": (address, False), "shape": (size,), "typestr": "|u1",
                                  "version": 3}
    return np.asarray(holder)
