// CUDA runtime errors as Status (built with the CUDA toolkit only): the call
// that failed and cudaGetErrorString's text, with a code for what the error
// means (out of memory, a bad argument, no usable GPU, anything else).
#ifndef WEIGHTD_LOADER_DEVICE_CUDA_STATUS_H_
#define WEIGHTD_LOADER_DEVICE_CUDA_STATUS_H_

#ifdef WEIGHTD_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace weightd {

absl::Status CudaStatus(cudaError_t err, absl::string_view call);

}  // namespace weightd

#define WEIGHTD_CUDA_RETURN_IF_ERROR(call)                    \
  do {                                                        \
    cudaError_t weightd_cuda_err_ = (call);                   \
    if (weightd_cuda_err_ != cudaSuccess) {                   \
      return ::weightd::CudaStatus(weightd_cuda_err_, #call); \
    }                                                         \
  } while (0)

#endif  // WEIGHTD_HAVE_CUDA

#endif  // WEIGHTD_LOADER_DEVICE_CUDA_STATUS_H_
