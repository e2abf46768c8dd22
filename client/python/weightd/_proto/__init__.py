"""Generated gRPC code for weightd/v1 (see client/python/regenerate.sh). Do not edit."""
from . import weightd_pb2, weightd_pb2_grpc  # noqa: F401
