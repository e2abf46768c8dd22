"""Python client for weightd: load PyTorch checkpoints once, share their tensors.

    import weightd
    with weightd.Client("unix:run/weightd.sock") as client:
        state = client.load("/models/llama.pt", device="cuda:0")
        model.load_state_dict(state)
"""
from ._model import Model, TensorSpec
from ._proto import weightd_pb2 as pb
from .client import DEFAULT_ADDRESS, Client
from .errors import FileChangedError, UnsupportedDtypeError, WeightdError

__all__ = ["Client", "Model", "TensorSpec", "WeightdError", "FileChangedError",
           "UnsupportedDtypeError", "DEFAULT_ADDRESS", "pb"]
__version__ = "1.0.0"
