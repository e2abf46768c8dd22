"""weightd.Client: load checkpoints through the weightd daemon."""
import os
import sys
import threading

import grpc
import grpc._channel  # noqa: F401  grpc imports it in the first insecure_channel() (0.7 ms)
import grpc.experimental

from . import _dtypes, _model
from ._lease import LeaseSession, LoadLease
from ._proto import weightd_pb2 as pb
from ._proto import weightd_pb2_grpc as pb_grpc
from .errors import WeightdError, from_rpc_error

DEFAULT_ADDRESS = "unix:run/weightd.sock"


class Shard:
    """Tensor parallelism: rank `rank` of `world_size` gets, for each tensor whose name matches
    a rule, exactly t.narrow(dim, rank * n // world_size, n // world_size); other tensors are
    whole. `rules` is an ordered list of (glob, dim) pairs (`*` any run of characters, `?` one;
    the first match wins); `rule_set` names a built-in set ("llama") whose rules come after
    `rules`. With neither, the "llama" set."""

    def __init__(self, rank, world_size, rules=None, rule_set=None):
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.rules = [(str(pattern), int(dim)) for pattern, dim in (rules or [])]
        self.rule_set = rule_set if rule_set is not None else ("" if rules else "llama")

    def to_proto(self):
        spec = pb.ShardSpec(rank=self.rank, world_size=self.world_size,
                            rule_set=self.rule_set)
        for pattern, dim in self.rules:
            spec.rules.add(pattern=pattern, dim=dim)
        return spec

    def __repr__(self):
        return "Shard(%d, %d, rules=%r, rule_set=%r)" % (self.rank, self.world_size, self.rules,
                                                         self.rule_set)

try:
    import torch as _torch
except ImportError:  # numpy arrays instead
    _torch = None

_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_HEALTH_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _encode_health_request(service):
    data = service.encode()
    if not data:
        return b""
    length, size = bytearray(), len(data)
    while True:
        byte, size = size & 0x7F, size >> 7
        length.append(byte | (0x80 if size else 0))
        if not size:
            break
    return b"\x0a" + bytes(length) + data


def _decode_health_response(data):
    # HealthCheckResponse { ServingStatus status = 1; }: tag 0x08 then a varint.
    status, i = 0, 0
    while i < len(data):
        tag = data[i]
        i += 1
        value, shift = 0, 0
        while i < len(data):
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if tag == 0x08:
            status = value
    return _HEALTH_STATUS.get(status, str(status))


# Notice a vanished daemon while a call (the Lease stream) is open; pings are slower than the
# daemon's ping policy allows (one per 10 s while calls are open, none without), so it never
# answers with GOAWAY too_many_pings.
_KEEPALIVE_OPTIONS = [("grpc.keepalive_time_ms", 30000),
                      ("grpc.keepalive_timeout_ms", 10000),
                      ("grpc.keepalive_permit_without_calls", 0),
                      ("grpc.http2.max_pings_without_data", 0)]

# Load and ReadTensors read their answers in the calling thread (the streams are iterated to
# the end right there) instead of through gRPC's channel-wide polling thread: no thread to
# start for a process's first Load, no hand-off per message.
_SINGLE_THREADED_STREAMS = [(grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1)]


def _read(what, path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise WeightdError(grpc.StatusCode.FAILED_PRECONDITION,
                           "cannot read %s %s: %s" % (what, path, e.strerror)) from None


def _channel_credentials(address, ca_file, cert_file, key_file, token_file):
    """None for a plaintext channel, else TLS (and the token) for a TCP address."""
    if address.startswith("unix:"):
        return None
    tls = bool(ca_file or cert_file or key_file)
    if bool(cert_file) != bool(key_file):
        raise ValueError("weightd: tls_cert_file and tls_key_file go together")
    if token_file and not tls:
        raise ValueError("weightd: refusing to send the token to %s in plaintext: give "
                         "tls_ca_file (or $WEIGHTD_TLS_CA_FILE)" % address)
    if not tls:
        return None
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read("TLS CA file", ca_file) if ca_file else None,
        private_key=_read("TLS key", key_file) if key_file else None,
        certificate_chain=_read("TLS certificate", cert_file) if cert_file else None)
    if token_file:
        token = _read("token file", token_file).decode().strip()
        if not token:
            raise ValueError("weightd: token file %s is empty" % token_file)
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(token))
    return credentials


def _expects_file_views(request):
    """Whether the load will most likely give views of the checkpoint files (host placement,
    no cast, no copy), whose lease need not be waited for: then the lease stream opens after
    Load, not beside it, where its threads would compete with Load and the build."""
    placement = request.placement
    return (not request.host_copy and not request.cast_dtype and not placement.remap and
            placement.target in ("cpu", "meta"))


def _file_views_only(description):
    """Every buffer of the model is a checkpoint file this process maps itself (or there
    is none: meta tensors)."""
    return all(buffer.WhichOneof("kind") == "file" for buffer in description.buffers)


def _normalize_address(address):
    if address.startswith("/"):
        return "unix:" + address
    return address


class Client:
    """A connection to weightd.

    address: "unix:PATH" (relative paths are relative to the working directory), "HOST:PORT",
    or any gRPC target; default $WEIGHTD_ADDRESS, else "unix:run/weightd.sock".
    backend: "torch" (default when torch is importable) or "numpy".
    timeout: seconds for the unary calls (list, describe, ...); None waits forever.
    TCP daemons need TLS plus a token or a client certificate:
    tls_ca_file: PEM of the CA that signed the daemon's certificate (default
    $WEIGHTD_TLS_CA_FILE); tls_cert_file / tls_key_file: a client certificate for mTLS
    ($WEIGHTD_TLS_CERT_FILE, $WEIGHTD_TLS_KEY_FILE); token_file: the bearer token, sent as
    "authorization: Bearer <token>" ($WEIGHTD_TOKEN_FILE). Unix sockets ignore them (the daemon
    knows its Unix peers by uid).
    """

    def __init__(self, address=None, *, backend=None, timeout=None, options=None,
                 tls_ca_file=None, tls_cert_file=None, tls_key_file=None, token_file=None):
        self.address = _normalize_address(
            address or os.environ.get("WEIGHTD_ADDRESS") or DEFAULT_ADDRESS)
        if backend is None:
            backend = "torch" if _torch is not None else "numpy"
        if backend == "torch":
            if _torch is None:
                raise ImportError("weightd: backend='torch' but torch is not installed")
            self._backend = _model.TorchBackend(_torch)
        elif backend == "numpy":
            import numpy
            self._backend = _model.NumpyBackend(numpy)
        else:
            raise ValueError("backend must be 'torch' or 'numpy', not %r" % (backend,))
        self.timeout = timeout
        channel_options = [("grpc.max_receive_message_length", 1 << 30),
                           ("grpc.max_send_message_length", 64 << 20)]
        channel_options += _KEEPALIVE_OPTIONS
        channel_options += _SINGLE_THREADED_STREAMS
        channel_options += list(options or [])
        credentials = _channel_credentials(
            self.address,
            tls_ca_file or os.environ.get("WEIGHTD_TLS_CA_FILE"),
            tls_cert_file or os.environ.get("WEIGHTD_TLS_CERT_FILE"),
            tls_key_file or os.environ.get("WEIGHTD_TLS_KEY_FILE"),
            token_file or os.environ.get("WEIGHTD_TOKEN_FILE"))
        if credentials is None:
            self._channel = grpc.insecure_channel(self.address, options=channel_options)
        else:
            self._channel = grpc.secure_channel(self.address, credentials,
                                                options=channel_options)
        self._stub = pb_grpc.WeightServiceStub(self._channel)
        self._lease = None
        self._unsettled = []  # Acquisitions of _lease_in_background not yet answered
        self._lock = threading.Lock()
        self._closed = False

    @property
    def backend(self):
        return self._backend.name

    # -- lifecycle -------------------------------------------------------------------------

    def close(self):
        """Ends the lease session (the daemon releases every lease this client holds) and the
        connection. Tensors already returned stay valid: their memory stays mapped in this
        process, though the daemon may evict and reuse shared memory it no longer leases."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            lease, self._lease = self._lease, None
        if lease is not None:
            lease.close()
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        # A Client dropped while tensors of its loads live (`Client().load(path)`) keeps its
        # lease session and channel open until the last of those tensors is gone.
        if sys.is_finalizing():
            # gRPC's threads are gone at interpreter exit and closing a channel would wait for
            # them forever; the process's exit ends the stream and the daemon releases.
            return
        try:
            with self._lock:
                if self._closed:
                    return
                self._closed = True
                lease, self._lease = self._lease, None
            if lease is not None and lease.alive:
                lease.orphan(self._channel)
            else:
                self._channel.close()
        except Exception:
            pass

    def _current_session(self):
        """The open or opening lease session, None before the first load (or after the
        stream ended); CANCELLED once closed."""
        with self._lock:
            if self._closed:
                raise WeightdError(grpc.StatusCode.CANCELLED, "client is closed")
            lease = self._lease
            return lease if lease is not None and lease.alive else None

    def _lease_session(self):
        with self._lock:
            if self._closed:
                raise WeightdError(grpc.StatusCode.CANCELLED, "client is closed")
            if self._lease is None or not self._lease.alive:
                self._lease = LeaseSession(self._stub)
            return self._lease

    @property
    def session_id(self):
        """The id of this client's lease session (None before the first load)."""
        lease = self._lease
        return lease.session_id if lease is not None else None

    def _unary(self, method, request):
        self._settle_leases()
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    # -- loading ---------------------------------------------------------------------------

    def load(self, path, device="cpu", map_location=None, dtype=None, tensors=None,
             progress=None, format_hint="", host_copy=False, shard=None):
        """Loads a checkpoint through the daemon; returns a weightd.Model: a dict of name to
        torch.Tensor (numpy arrays with backend="numpy") in the daemon's order.

        device: "cpu", "meta", "cuda", "cuda:N" or "cuda:GPU-<uuid>" (a torch.device is fine).
          With torch and CUDA in this process, cuda:N is this process's device N (sent to the
          daemon by UUID, so CUDA_VISIBLE_DEVICES is respected); otherwise N indexes the
          daemon's GPUs.
        map_location: None (use `device`), a device, or a dict remapping saved locations, e.g.
          {"cuda:1": "cuda:0"} (then `device` is ignored and unmapped locations are kept).
        dtype: cast floating-point tensors on load: "bfloat16", "float16", "float32" or the
          torch dtype.
        tensors: only these names (and names starting with "<entry>.").
        progress: callable(bytes_done, bytes_total), called as the daemon reads.
        host_copy: host tensors come from a shared-memory copy the daemon owns instead of
          being views of the checkpoint file (safe if the file is truncated or rewritten
          while you hold them; a view of a truncated file raises SIGBUS when read).
        shard: a weightd.Shard: only this tensor-parallel rank's slice of each tensor its
          rules match (on a GPU only the slice's bytes are placed; host slices are views).

        The model is leased on this client's lease session until the last returned tensor is
        garbage-collected (or the client closes). Host tensors are zero-copy, read-only views.
        A model whose tensors all view checkpoint files returns before the daemon confirms
        the lease (the views stay valid even if the daemon drops the model); this client's
        later calls (describe, list, unload, ...) wait for that confirmation.
        """
        # The daemon resolves paths in its own working directory: send an absolute one.
        request = pb.LoadRequest(path=os.path.abspath(os.fspath(path)),
                                 format_hint=format_hint, host_copy=bool(host_copy),
                                 compact_description=True)
        if isinstance(map_location, dict):
            for saved, target in map_location.items():
                request.placement.remap[str(saved)] = self._target(target)
        else:
            request.placement.target = self._target(map_location if map_location is not None
                                                    else device)
        if dtype is not None:
            name = _dtypes.name_of(dtype)
            if name not in _dtypes.CAST_DTYPES:
                raise ValueError("dtype must be one of %s, not %r"
                                 % (", ".join(_dtypes.CAST_DTYPES), dtype))
            request.cast_dtype = name
        if tensors is not None:
            if isinstance(tensors, str):
                tensors = [tensors]
            request.tensor_filter.extend(tensors)
        if shard is not None:
            if not isinstance(shard, Shard):
                raise TypeError("shard must be a weightd.Shard, not %r" % (shard,))
            request.shard.CopyFrom(shard.to_proto())
        session = self._current_session()
        if session is not None and session.session_id is not None:
            request.lease_session = session.session_id
            return self._materialize(self._run_load(request, progress, path), session)
        if session is None and not _expects_file_views(request):
            session = self._lease_session()  # it opens while Load runs
        description = self._run_load(request, progress, path)
        if _file_views_only(description):
            return self._lease_in_background(description)
        # The session's stream is still opening (this client's first load): Load without it
        # meanwhile, then lease the model on the stream, building the tensors while that
        # answer travels. A model evicted in between is refused; load it again, leased.
        session = self._lease_session()
        acquisition = session.acquire(description.model_id)
        try:
            try:
                built = self._build(description)
            except Exception:
                if acquisition.wait(session.open_timeout):
                    acquisition.abandon()
                    raise
                built = None  # the model (and maybe its buffers) went away; load it again
            if built is not None and acquisition.wait(session.open_timeout):
                return self._leased(description, session, built)
        except BaseException:
            acquisition.abandon()
            raise
        del built
        session = self._lease_session()
        request.lease_session = session.wait_open()
        return self._materialize(self._run_load(request, progress, path), session)

    def _lease_in_background(self, description):
        """Tensors that view checkpoint files: this process maps the files itself, so they
        stay valid whatever the daemon does with the model, and load() returns without
        waiting for the lease (opening the lease stream and its answer cost a first load
        about as much as building 1,000 tensors). The lease is asked for as this returns;
        this client's later calls wait for its answer (_settle_leases)."""
        built = self._build(description)  # nothing is leased yet: a failure leaves nothing
        session = self._lease_session()
        acquisition = session.acquire(description.model_id)
        with self._lock:
            self._unsettled = [a for a in self._unsettled if not a.answered]
            self._unsettled.append(acquisition)
        entries, anchors, table = built
        LoadLease(session, description.model_id, anchors, acquisition)
        return _model.Model(entries, description, self.backend, table)

    def _settle_leases(self):
        """Waits (up to the session's open timeout, or this client's timeout if shorter) for
        the daemon's answers to the leases taken in the background, so that this client's
        own later calls see them."""
        with self._lock:
            pending, self._unsettled = self._unsettled, []
        for acquisition in pending:
            acquisition.wait_answer(self.timeout)

    def _run_load(self, request, progress, path):
        description = None
        try:
            for event in self._stub.Load(request):
                which = event.WhichOneof("event")
                if which == "progress" and progress is not None:
                    progress(event.progress.bytes_done, event.progress.bytes_total)
                elif which == "model":
                    description = event.model
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        if description is None:
            raise WeightdError(grpc.StatusCode.INTERNAL,
                               "the daemon ended Load for %s without a model" % path)
        return description

    def _build(self, description):
        return _model.materialize(description, self._backend,
                                  torch=_torch if self.backend == "torch" else None)

    def _leased(self, description, session, built):
        entries, anchors, table = built
        LoadLease(session, description.model_id, anchors)
        return _model.Model(entries, description, self.backend, table)

    def _materialize(self, description, session):
        """Tensors of a model the daemon leased on `session` in Load."""
        try:
            built = self._build(description)
        except BaseException:
            session.release(description.model_id)
            raise
        return self._leased(description, session, built)

    def _target(self, device):
        """A daemon placement target for a user's device."""
        text = str(device)
        if text in ("cpu", "meta") or text.startswith("cuda:GPU-") or not text.startswith("cuda"):
            return text
        if _torch is None or not _torch.cuda.is_available():
            return "cuda:0" if text == "cuda" else text
        from . import _cuda
        index = _torch.device(text).index
        if index is None:
            index = _torch.cuda.current_device()
        uuids = _cuda.visible_gpu_uuids(_torch)
        if index >= len(uuids):
            raise ValueError("%s: this process sees %d GPUs" % (text, len(uuids)))
        u = uuids[index]
        return "cuda:GPU-%s-%s-%s-%s-%s" % (u[:8], u[8:12], u[12:16], u[16:20], u[20:])

    def read_tensors(self, model_id, names=None, chunk_bytes=0):
        """Tensor bytes over the wire (no shared memory needed: TCP, another host). Returns
        {name: tensor} of contiguous tensors that own their memory (writable)."""
        request = pb.ReadTensorsRequest(model_id=model_id, names=list(names or []),
                                        chunk_bytes=chunk_bytes)
        out = {}
        current, data, received = None, None, 0
        try:
            for chunk in self._stub.ReadTensors(request):
                if chunk.HasField("tensor"):
                    if current is not None:
                        raise WeightdError(grpc.StatusCode.INTERNAL,
                                           "tensor %s ended without its last chunk" % current.name)
                    current = chunk.tensor
                    data, received = bytearray(current.byte_size), 0
                if current is None:
                    raise WeightdError(grpc.StatusCode.INTERNAL, "chunk before any tensor")
                end = chunk.offset + len(chunk.data)
                if end > len(data):
                    raise WeightdError(grpc.StatusCode.INTERNAL,
                                       "tensor %s: chunk at %d+%d past %d bytes"
                                       % (current.name, chunk.offset, len(chunk.data), len(data)))
                data[chunk.offset:end] = chunk.data
                received += len(chunk.data)
                if chunk.last:
                    if current.buffer_index < 0 and received == 0:  # meta: no bytes
                        out[current.name] = self._backend.empty(current, "meta")
                        current = None
                        continue
                    if received != len(data):
                        raise WeightdError(grpc.StatusCode.INTERNAL,
                                           "tensor %s: %d of %d bytes received"
                                           % (current.name, received, len(data)))
                    out[current.name] = self._backend.from_bytes(data, current)
                    current = None
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        if current is not None:
            raise WeightdError(grpc.StatusCode.INTERNAL,
                               "stream ended inside tensor %s" % current.name)
        return out

    # -- the rest of the API -----------------------------------------------------------------

    def list(self):
        """Every cached model: a list of weightd.v1.ModelSummary."""
        return list(self._unary(self._stub.List, pb.ListRequest()).models)

    def describe(self, model_id):
        """weightd.v1.ModelDescription of a cached model."""
        return self._unary(self._stub.Describe, pb.DescribeRequest(model_id=model_id))

    def unload(self, model_id, force=False):
        """Drops a model from the cache; returns the bytes freed. FAILED_PRECONDITION while
        leased unless force."""
        return self._unary(self._stub.Unload,
                           pb.UnloadRequest(model_id=model_id, force=force)).freed_bytes

    def stats(self):
        """weightd.v1.StatsResponse."""
        return self._unary(self._stub.Stats, pb.StatsRequest())

    def server_info(self):
        """weightd.v1.ServerInfoResponse (version, GPUs, io backend, budgets, model roots)."""
        return self._unary(self._stub.ServerInfo, pb.ServerInfoRequest())

    def health(self, service=""):
        """gRPC health check: "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN" or "UNKNOWN"."""
        check = self._channel.unary_unary(
            _HEALTH_CHECK, request_serializer=_encode_health_request,
            response_deserializer=_decode_health_response)
        try:
            return check(service, timeout=self.timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
