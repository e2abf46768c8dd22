"""One Lease stream per Client: models loaded with its session id (or acquired on the stream)
stay resident in the daemon while the stream is open; each load's lease is released once its
last tensor is gone."""
import _thread
import collections
import queue
import sys
import threading
import weakref

import grpc

from ._proto import weightd_pb2 as pb
from .errors import WeightdError, from_rpc_error

_END = object()


class Acquisition:
    """The daemon's answer to one acquire request: wait() is True once the model is leased on
    the session, False with `error` set when the daemon refused (the model is gone) or the
    stream ended first."""

    def __init__(self, session, model_id):
        self._session = session
        self.model_id = model_id
        self._answered = threading.Event()
        self._abandoned = False
        self.acquired = False
        self.error = None

    def wait(self, timeout):
        """True: leased; False: refused (`error` says why). DEADLINE_EXCEEDED after `timeout`
        seconds without an answer (a late lease is then released as it arrives)."""
        if not self._answered.wait(timeout):
            self.abandon()
            if not self._answered.is_set():
                raise WeightdError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                   "the daemon did not answer a lease of %s in %gs"
                                   % (self.model_id, timeout))
        return self.acquired

    @property
    def answered(self):
        return self._answered.is_set()

    def wait_answer(self, timeout=None):
        """Waits for the daemon's answer without giving the lease up, up to the session's
        open timeout (or `timeout` seconds if shorter); True once answered."""
        limit = self._session.open_timeout
        return self._answered.wait(limit if timeout is None else min(timeout, limit))

    def abandon(self):
        """Nobody will use this lease: release it if (or once) the daemon grants it."""
        release = False
        with self._session._lock:
            self._abandoned = True
            release = self.acquired
            self.acquired = False
        if release:
            self._session.release(self.model_id)

    def _answer(self, acquired, error):
        """Called by the stream's reader, under the session's lock; True if the lease it
        granted must be released (abandoned)."""
        self.acquired = acquired and not self._abandoned
        self.error = error
        self._answered.set()
        return acquired and self._abandoned


class LeaseSession:
    """The stream opens in the background: session_id is None until the daemon's first
    event; wait_open() waits for it."""

    def __init__(self, stub, open_timeout=30.0):
        self._requests = queue.Queue()
        self._opened = threading.Event()
        self._lock = threading.Lock()
        self.open_timeout = open_timeout
        # One entry per request sent, in order: the daemon answers each request with one
        # event, in the order it reads them (an Acquisition, or None for a release).
        self._pending = collections.deque()
        self.session_id = None
        self.error = None
        self.closed = False
        self.events = []  # (kind name, model_id, error) as they arrive; for diagnostics
        self._outstanding = 0  # loads whose lease is not yet released
        self._orphaned = False
        self._orphan_channel = None
        self._call = None
        self._reader = None  # the reading thread's ident
        self._sender = None  # gRPC's thread iterating _request_iterator
        self._finished = threading.Event()  # the reading thread is done
        # Creating the call starts gRPC's threads and threading.Thread.start() waits for its
        # thread to run: together over 2 ms on a busy machine, which the first load's Load
        # spends in the daemon instead. A daemon-like thread that nothing waits for at exit.
        _thread.start_new_thread(self._run, (stub,))

    def wait_open(self):
        """The session id once the daemon opened the stream; the stream's error if it could
        not, DEADLINE_EXCEEDED after open_timeout."""
        if not self._opened.wait(self.open_timeout):
            self.close()
            raise WeightdError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               "the daemon did not open a lease session in %gs"
                               % self.open_timeout)
        if self.session_id is None:
            raise self.error or WeightdError(grpc.StatusCode.UNAVAILABLE,
                                             "the lease stream ended before it opened")
        return self.session_id

    def _request_iterator(self):
        # gRPC's thread that sends the requests: close() waits for it too, since one still
        # holding the call's lock as the interpreter exits deadlocks the call's __del__.
        self._sender = threading.current_thread()
        while True:
            item = self._requests.get()
            if item is _END:
                return
            yield item

    def _run(self, stub):
        self._reader = _thread.get_ident()
        try:
            call = stub.Lease(self._request_iterator())
            with self._lock:
                self._call = call
                cancel = self.closed
            if cancel:
                call.cancel()
            self._consume(call)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED or not self.closed:
                self.error = from_rpc_error(e)
        except Exception as e:  # e.g. the channel closed under us
            self.error = WeightdError(grpc.StatusCode.UNAVAILABLE,
                                      "the lease stream failed: %s" % e)
        finally:
            with self._lock:
                self.closed = True
                pending, self._pending = self._pending, collections.deque()
                for waiter in pending:
                    if waiter is not None:
                        waiter._answer(False, "the lease stream ended")
            self._opened.set()
            self._finished.set()

    def _consume(self, call):
        for event in call:
            kind = pb.LeaseEvent.Kind.Name(event.kind)
            if event.kind == pb.LeaseEvent.OPENED and self.session_id is None:
                self.session_id = event.session_id
                self._opened.set()
                continue
            release = False
            with self._lock:
                self.events.append((kind, event.model_id, event.error))
                del self.events[:-1000]
                waiter = self._pending.popleft() if self._pending else None
                if waiter is not None:
                    acquired = event.kind == pb.LeaseEvent.ACQUIRED
                    release = waiter._answer(acquired,
                                             None if acquired else event.error or kind)
            if release:
                self.release(event.model_id)
            if event.kind == pb.LeaseEvent.ERROR and waiter is None:
                # A refused acquire is its caller's to report; a failed release is not.
                sys.stderr.write("weightd: lease %s: %s\n" % (event.model_id, event.error))

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
        self.close(timeout=0 if _thread.get_ident() == self._reader else 5.0)
        channel, self._orphan_channel = self._orphan_channel, None
        if channel is not None:
            channel.close()

    @property
    def alive(self):
        return not self.closed

    def acquire(self, model_id):
        """Asks the daemon to lease `model_id` on this session (sent once the stream is open);
        returns the Acquisition that carries its answer."""
        waiter = Acquisition(self, model_id)
        with self._lock:
            if self.closed:
                waiter._answer(False, "the lease stream ended")
                return waiter
            self._pending.append(waiter)
            self._requests.put(pb.LeaseRequest(acquire_model_id=model_id))
        return waiter

    def release(self, model_id):
        with self._lock:
            if not self.closed:
                self._pending.append(None)
                self._requests.put(pb.LeaseRequest(release_model_id=model_id))

    def close(self, timeout=5.0):
        """Ends the stream; the daemon drops every lease of the session."""
        with self._lock:
            self.closed = True
            call = self._call
        self._requests.put(_END)
        if call is not None:
            call.cancel()
        if _thread.get_ident() != self._reader:
            self._finished.wait(timeout)
            sender = self._sender
            if sender is not None and sender is not threading.current_thread():
                sender.join(timeout)


class LoadLease:
    """The lease one load() took. Released when every anchor (the per-load objects all of its
    tensors keep alive) has been collected. With `acquisition` (a lease asked for on the
    stream and maybe not granted yet) it is released once granted, and not at all if the
    daemon refused it."""

    def __init__(self, session, model_id, anchors, acquisition=None):
        self._session = session
        self._model_id = model_id
        self._acquisition = acquisition
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
        if self._acquisition is not None:
            self._acquisition.abandon()
        else:
            self._session.release(self._model_id)
        self.released.set()
        self._session.load_done()
