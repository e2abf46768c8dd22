"""Shared pieces of the hardening suite and its report: a real weightd process, raw gRPC
stubs, safetensors written and read by the spec, and probes of the daemon's resources (fds,
memory, /dev/shm)."""
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

import grpc

PACKAGE_DIR = None  # client/python, set by configure()
WEIGHTD = None
pb = None
pb_grpc = None


def configure(weightd, package_dir):
    global WEIGHTD, PACKAGE_DIR, pb, pb_grpc
    WEIGHTD, PACKAGE_DIR = weightd, package_dir
    sys.path.insert(0, package_dir)
    from weightd._proto import weightd_pb2, weightd_pb2_grpc
    pb, pb_grpc = weightd_pb2, weightd_pb2_grpc


class Daemon:
    """weightd on a private Unix socket; `wrap` runs it under another command (unshare)."""

    def __init__(self, root, extra=(), wrap=None, workdir=None):
        self.root = root
        self._owns_dir = workdir is None  # removed once the daemon is gone
        self.dir = workdir or tempfile.mkdtemp(prefix="weightd-hard-")
        self.socket = os.path.join(self.dir, "w.sock")
        self.address = "unix:" + self.socket
        self.args = [WEIGHTD, "--listen=" + self.address, "--model_root=" + root,
                     "--metrics_address=", "--fake_gpus=1", *extra]
        self.log = []
        argv = self.args if wrap is None else [*wrap, *self.args]
        # errors="replace": the log quotes bytes of the bad files it refuses.
        self.process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True,
                                        errors="replace", start_new_session=True)
        for line in self.process.stderr:
            self.log.append(line)
            if "weightd ready" in line:
                break
        else:
            raise RuntimeError("weightd did not start:\n" + "".join(self.log))
        self._drain = threading.Thread(target=self._read_log, daemon=True)
        self._drain.start()
        self.channel = grpc.insecure_channel(self.address)
        self.stub = pb_grpc.WeightServiceStub(self.channel)

    def _read_log(self):
        for line in self.process.stderr:
            self.log.append(line)

    @property
    def pid(self):
        """The weightd process itself (under unshare it is a child of the wrapper)."""
        children = f"/proc/{self.process.pid}/task/{self.process.pid}/children"
        try:
            with open(children) as f:
                kids = f.read().split()
            if kids:
                return int(kids[0])
        except OSError:
            pass
        return self.process.pid

    def alive(self):
        return self.process.poll() is None

    def serving(self):
        """The gRPC health check answers SERVING."""
        call = self.channel.unary_unary("/grpc.health.v1.Health/Check",
                                        request_serializer=lambda b: b,
                                        response_deserializer=lambda b: b)
        try:
            return call(b"", timeout=5) == b"\x08\x01"
        except grpc.RpcError:
            return False

    def load(self, path, target="cpu", cast="", filters=(), session="", hint="",
             timeout=60, on_progress=None, host_copy=False):
        request = pb.LoadRequest(path=path, cast_dtype=cast, tensor_filter=list(filters),
                                 lease_session=session, format_hint=hint,
                                 host_copy=host_copy)
        request.placement.target = target
        model = None
        for event in self.stub.Load(request, timeout=timeout):
            if event.HasField("model"):
                model = event.model
            elif on_progress is not None:
                on_progress(event.progress)
        return model

    def read_tensors(self, model_id, names=(), chunk_bytes=0, timeout=60):
        """{name: bytes} of ReadTensors."""
        out, current = {}, None
        request = pb.ReadTensorsRequest(model_id=model_id, names=list(names),
                                        chunk_bytes=chunk_bytes)
        for chunk in self.stub.ReadTensors(request, timeout=timeout):
            if chunk.HasField("tensor"):
                current = chunk.tensor.name
                out[current] = bytearray()
            out[current] += chunk.data
        return out

    def open_session(self):
        """A Lease stream held open until close(): returns (session id, close)."""
        import queue
        requests = queue.Queue()

        def iterate():
            while True:
                item = requests.get()
                if item is None:
                    return
                yield item
        call = self.stub.Lease(iterate())
        first = next(call)
        def close():
            requests.put(None)
            call.cancel()
        return first.session_id, close

    def stats(self):
        return self.stub.Stats(pb.StatsRequest(), timeout=10)

    def fds(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def threads(self):
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def shm_segments(self):
        """This daemon's own shared-memory segments: those named with the
        instance id of the lock file it holds open (other daemons on the
        machine, e.g. tests running in parallel, have their own)."""
        ids = set()
        fd_dir = f"/proc/{self.pid}/fd"
        for fd in os.listdir(fd_dir):
            try:
                target = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            name = os.path.basename(target)
            if name.startswith("weightd-") and name.endswith(".lock"):
                ids.add(name[len("weightd-"):-len(".lock")])
        return sorted(n for n in shm_names()
                      if any(f"-{i}-" in n for i in ids))

    def rss_anon_kib(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
        return 0

    def stop(self, sig=signal.SIGTERM, timeout=20):
        """Sends `sig`; returns the seconds until exit (raises if it did not exit)."""
        self.channel.close()
        if not self.alive():
            self._remove_dir()
            return 0.0
        start = time.monotonic()
        os.killpg(self.process.pid, sig)
        self.process.wait(timeout=timeout)
        seconds = time.monotonic() - start
        self._remove_dir()
        return seconds

    def kill(self):
        if self.alive():
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=20)
        self.channel.close()
        self._remove_dir()

    def diagnose(self, log_lines=80):
        """For a test that found the daemon stuck: the tail of its log and every thread's stack
        (gdb, where installed), as text to print before failing."""
        out = ["weightd log (last %d lines):\n" % log_lines] + self.log[-log_lines:]
        if self.alive() and shutil.which("gdb"):
            try:
                stacks = subprocess.run(
                    ["gdb", "-p", str(self.pid), "-batch", "-nx", "-ex",
                     "thread apply all bt"], capture_output=True, text=True, timeout=60)
                out.append("weightd threads:\n" + stacks.stdout[-60000:])
            except subprocess.TimeoutExpired:
                out.append("weightd threads: gdb timed out\n")
        return "".join(out)

    def _remove_dir(self):
        if self._owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def write_safetensors(path, tensors):
    """tensors: {name: (dtype, shape, bytes)} written by the format's spec."""
    header, data = {}, bytearray()
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        f.write(data)


def read_safetensors(path):
    """(header without __metadata__, the bytes after the header) of a safetensors file, by the
    format's spec; each tensor's data_offsets index the bytes."""
    with open(path, "rb") as f:
        data = f.read()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    header.pop("__metadata__", None)
    return header, data[8 + size:]


def float_bytes(count, seed=1):
    """`count` float32 values that are not all equal, as little-endian bytes."""
    pattern = struct.pack("<256f", *[(seed * 31 + i) * 0.25 for i in range(256)])
    whole, rest = divmod(count, 256)
    return pattern * whole + pattern[:rest * 4]


def shm_names():
    try:
        return set(os.listdir("/dev/shm"))
    except OSError:
        return set()


# Set by the asan/tsan configs' test_env: sanitizers keep freed memory (quarantine,
# shadow), so memory bounds are not measurable there.
UNDER_SANITIZER = bool(os.environ.get("ASAN_OPTIONS") or os.environ.get("TSAN_OPTIONS"))


def can_unshare_mount():
    if os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c",
                            "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
                           capture_output=True)
    return probe.returncode == 0


def wait_until(predicate, timeout, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
