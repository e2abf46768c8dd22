"""Exceptions raised by the weightd client."""
import grpc


class WeightdError(Exception):
    """An error from the daemon or from using what it handed out.

    `code` is the grpc.StatusCode (e.g. grpc.StatusCode.PERMISSION_DENIED); `message` is the
    daemon's message (which names the file and the reason) or the client's own.
    """

    def __init__(self, code, message):
        self.code = code
        self.message = message
        name = code.name if isinstance(code, grpc.StatusCode) else str(code)
        super().__init__("%s: %s" % (name, message))

    @property
    def details(self):
        return self.message


class FileChangedError(WeightdError):
    """The checkpoint file on disk is not the one the daemon loaded (identity mismatch)."""

    def __init__(self, message):
        super().__init__(grpc.StatusCode.FAILED_PRECONDITION, message)


class UnsupportedDtypeError(WeightdError):
    """A dtype this client (or the installed torch / numpy) cannot represent."""

    def __init__(self, message):
        super().__init__(grpc.StatusCode.UNIMPLEMENTED, message)


def from_rpc_error(error):
    """Turns a grpc.RpcError into a WeightdError carrying its code and the daemon's message."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    if code is None:
        code = grpc.StatusCode.UNKNOWN
    return WeightdError(code, details or str(error))
