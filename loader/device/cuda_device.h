// CUDA GPUs. Compiled in only where @local_cuda//:cudart defines
// WEIGHTD_HAVE_CUDA (the toolkit was found at build time); elsewhere these
// functions report zero GPUs and UNIMPLEMENTED. Every CUDA error becomes a
// Status naming the call and cudaGetErrorString's text.
//
// One cudaMalloc arena per checkpoint per GPU; cudaHostAlloc staging buffers;
// copies are cudaMemcpyAsync on non-blocking streams; events are
// cudaEventDisableTiming events; ExportHandle is cudaIpcGetMemHandle (a
// kCudaIpc handle; other processes open it with OpenArenaHandle()). GPUs are
// identified by the UUID from cudaGetDeviceProperties.
#ifndef WEIGHTD_LOADER_DEVICE_CUDA_DEVICE_H_
#define WEIGHTD_LOADER_DEVICE_CUDA_DEVICE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "loader/device/device.h"

namespace weightd {

// Whether this binary was built with the CUDA runtime.
bool CudaCompiledIn();

struct CudaEnumeration {
  int count = 0;
  // Why there are no GPUs when count is 0 ("built without CUDA",
  // "cudaGetDeviceCount: CUDA driver version is insufficient ...").
  std::string status;
};
// cudaGetDeviceCount; an error (no driver, no device) means zero GPUs.
CudaEnumeration EnumerateCudaDevices();

struct CudaDeviceOptions {
  int num_streams = 4;
};

// The GPU with CUDA ordinal `ordinal`.
absl::StatusOr<std::unique_ptr<Device>> CreateCudaDevice(
    int ordinal, const CudaDeviceOptions& options);

// "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" from the 16 UUID bytes.
std::string FormatGpuUuid(const uint8_t bytes[16]);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_DEVICE_CUDA_DEVICE_H_
