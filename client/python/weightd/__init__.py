"""Python client for weightd: load PyTorch checkpoints once, share their tensors.

    import weightd
    with weightd.Client("unix:run/weightd.sock") as client:
        state = client.load("/models/llama.pt", device="cuda:0")
        model.load_state_dict(state)

    checkpoint = weightd.load("/models/run/checkpoint.pt")   # what torch.load returns
    weightd.load_into(model, "/models/llama.pt")            # zero-copy with torch >= 2.1
"""
import os as _os

from ._model import Model, TensorSpec
from ._proto import weightd_pb2 as pb
from .client import DEFAULT_ADDRESS, Client, Shard
from .errors import FileChangedError, UnsupportedDtypeError, WeightdError
from .torch_load import default_client, jit_load_state, load, load_into

__all__ = ["Client", "Shard", "Model", "TensorSpec", "WeightdError", "FileChangedError",
           "UnsupportedDtypeError", "DEFAULT_ADDRESS", "pb", "load", "jit_load_state",
           "load_into", "default_client"]


def _read_version():
    """The daemon's version: _version.py written when the package is built (pip install), else
    the repository's VERSION file (a checkout or Bazel runfiles)."""
    try:
        from ._version import version
        return version
    except ImportError:
        pass
    here = _os.path.dirname(_os.path.abspath(__file__))
    for base in (here, _os.path.dirname(_os.path.realpath(__file__))):
        try:
            with open(_os.path.join(base, _os.pardir, _os.pardir, _os.pardir, "VERSION")) as f:
                return f.readline().strip()
        except OSError:
            continue
    return "0+unknown"


__version__ = _read_version()
