#include "loader/device/cuda_status.h"

#ifdef WEIGHTD_HAVE_CUDA

#include "absl/strings/str_cat.h"

namespace weightd {

absl::Status CudaStatus(cudaError_t err, absl::string_view call) {
  std::string message = absl::StrCat(call, ": ", cudaGetErrorString(err), " (",
                                     cudaGetErrorName(err), ")");
  switch (err) {
    case cudaErrorMemoryAllocation:
      return absl::ResourceExhaustedError(message);
    case cudaErrorInvalidValue:
    case cudaErrorInvalidDevicePointer:
    case cudaErrorInvalidDevice:
      return absl::InvalidArgumentError(message);
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
      return absl::UnavailableError(message);
    default:
      return absl::InternalError(message);
  }
}

}  // namespace weightd

#endif  // WEIGHTD_HAVE_CUDA
