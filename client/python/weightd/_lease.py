"""One Lease stream per Client: models loaded with its session id stay resident in the daemon
while the stream is open; each load's lease is released once its last tensor is gone."""
import queue
import sys
import threading
import weakref

import grpc

from ._proto import weightd_pb2 as pb
from .errors import WeightdError, from_rpc_error

_END = object()


class LeaseSession:
    def __init__(self, stub, open_timeout=30.0):
        self._requests = queue.Queue()
        self._opened = threading.Event()
        self._lock = threading.Lock()
        self.session_id = None
        self.error = None
        self.closed = False
        self.events = []  # (kind name, model_id, error) as they arrive; for diagnostics
        self._outstanding = 0  # loads whose lease is not yet released
        self._orphaned = False
        self._orphan_channel = None
        self._call = stub.Lease(self._request_iterator())
        self._thread = threading.Thread(target=self._consume, name="weightd-lease", daemon=True)
        self._thread.start()
        if not self._opened.wait(open_timeout):
            self.close()
            raise WeightdError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               "the daemon did not open a lease session in %gs" % open_timeout)
        if self.session_id is None:
            raise self.error or WeightdError(grpc.StatusCode.UNAVAILABLE,
                                             "the lease stream ended before it opened")

    def _request_iterator(self):
        while True:
            item = self._requests.get()
            if item is _END:
                return
            yield item

    def _consume(self):
        try:
            for event in self._call:
                kind = pb.LeaseEvent.Kind.Name(event.kind)
                if event.kind == pb.LeaseEvent.OPENED and self.session_id is None:
                    self.session_id = event.session_id
                    self._opened.set()
                    continue
                with self._lock:
                    self.events.append((kind, event.model_id, event.error))
                    del self.events[:-1000]
                if event.kind == pb.LeaseEvent.ERROR:
                    sys.stderr.write("weightd: lease %s: %s\n" % (event.model_id, event.error))
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED or not self.closed:
                self.error = from_rpc_error(e)
        finally:
            self.closed = True
            self._opened.set()

    def load_started(self):
        with self._lock:
            self._outstanding += 1

    def load_done(self):
        """A load's lease was released; closes an orphaned session once none is left."""
        with self._lock:
            self._outstanding -= 1
            close = self._orphaned and self._outstanding == 0
        if close:
            self._close_orphan()

    def orphan(self, channel):
        """The Client is gone: keep the stream (and `channel`) open until the last tensor of
        its loads is gone, then close both."""
        with self._lock:
            self._orphaned = True
            self._orphan_channel = channel
            close = self._outstanding == 0
        if close:
            self._close_orphan()

    def _close_orphan(self):
        if sys.is_finalizing():
            return  # interpreter exit: the process's exit ends the stream (see Client.__del__)
        self.close(timeout=0 if threading.current_thread() is self._thread else 5.0)
        channel, self._orphan_channel = self._orphan_channel, None
        if channel is not None:
            channel.close()

    @property
    def alive(self):
        return not self.closed

    def acquire(self, model_id):
        if not self.closed:
            self._requests.put(pb.LeaseRequest(acquire_model_id=model_id))

    def release(self, model_id):
        if not self.closed:
            self._requests.put(pb.LeaseRequest(release_model_id=model_id))

    def close(self, timeout=5.0):
        """Ends the stream; the daemon drops every lease of the session."""
        self.closed = True
        self._requests.put(_END)
        self._call.cancel()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)


class LoadLease:
    """The lease one load() took. Released when every anchor (the per-load objects all of its
    tensors keep alive) has been collected."""

    def __init__(self, session, model_id, anchors):
        self._session = session
        self._model_id = model_id
        self._lock = threading.Lock()
        self._left = len(anchors)
        self.released = threading.Event()
        session.load_started()
        if not anchors:
            self._release()
            return
        for anchor in anchors:
            finalizer = weakref.finalize(anchor, self._one_gone)
            finalizer.atexit = False  # process exit ends the stream; the daemon releases then

    def _one_gone(self):
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self._release()

    def _release(self):
        self._session.release(self._model_id)
        self.released.set()
        self._session.load_done()
