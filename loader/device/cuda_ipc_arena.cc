#include "loader/device/cuda_ipc_arena.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "loader/device/cuda_device.h"

#ifdef WEIGHTD_HAVE_CUDA
#include <cuda_runtime_api.h>

#include <vector>

#include "loader/common/logging.h"
#include "loader/device/cuda_status.h"
#endif

namespace weightd {

#ifndef WEIGHTD_HAVE_CUDA

absl::StatusOr<std::unique_ptr<OpenedArena>> OpenCudaIpcArena(
    const IpcHandle& handle, uint64_t size, absl::string_view gpu_uuid) {
  return absl::UnimplementedError(
      absl::StrCat("cannot open the CUDA IPC handle of an arena on ", gpu_uuid,
                   ": built without the CUDA toolkit"));
}

#else  // WEIGHTD_HAVE_CUDA

namespace {

class CudaIpcArena : public OpenedArena {
 public:
  CudaIpcArena(int ordinal, void* pointer, uint64_t size)
      : ordinal_(ordinal), pointer_(pointer), size_(size) {}
  ~CudaIpcArena() override {
    cudaError_t err = cudaSetDevice(ordinal_);
    if (err == cudaSuccess) err = cudaIpcCloseMemHandle(pointer_);
    if (err != cudaSuccess) {
      LogError("cudaIpcCloseMemHandle (GPU %d): %s", ordinal_,
               cudaGetErrorString(err));
    }
  }
  ArenaHandleKind kind() const override { return ArenaHandleKind::kCudaIpc; }
  uint64_t size() const override { return size_; }
  void* device_pointer() const override { return pointer_; }

  absl::Status CopyToHost(uint64_t offset, uint64_t length,
                          void* dst) const override {
    absl::Status s = CheckArenaRange(size_, offset, length);
    if (!s.ok()) return s;
    if (length == 0) return absl::OkStatus();
    WEIGHTD_CUDA_RETURN_IF_ERROR(cudaSetDevice(ordinal_));
    WEIGHTD_CUDA_RETURN_IF_ERROR(
        cudaMemcpy(dst, static_cast<const uint8_t*>(pointer_) + offset,
                   static_cast<size_t>(length), cudaMemcpyDeviceToHost));
    return absl::OkStatus();
  }

 private:
  const int ordinal_;
  void* const pointer_;
  const uint64_t size_;
};

// The ordinal, in this process, of the GPU with this UUID.
absl::StatusOr<int> OrdinalOf(absl::string_view gpu_uuid) {
  int count = 0;
  WEIGHTD_CUDA_RETURN_IF_ERROR(cudaGetDeviceCount(&count));
  std::vector<std::string> visible;
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp props;
    WEIGHTD_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&props, i));
    std::string uuid =
        FormatGpuUuid(reinterpret_cast<const uint8_t*>(props.uuid.bytes));
    if (uuid == gpu_uuid) return i;
    visible.push_back(std::move(uuid));
  }
  return absl::NotFoundError(absl::StrCat(
      "GPU ", gpu_uuid, " is not visible to this process (visible: ",
      visible.empty() ? "none" : absl::StrJoin(visible, ", "), ")"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<OpenedArena>> OpenCudaIpcArena(
    const IpcHandle& handle, uint64_t size, absl::string_view gpu_uuid) {
  if (gpu_uuid.empty()) {
    return absl::InvalidArgumentError(
        "a CUDA IPC arena handle without the UUID of its GPU");
  }
  absl::StatusOr<int> ordinal = OrdinalOf(gpu_uuid);
  if (!ordinal.ok()) return ordinal.status();
  WEIGHTD_CUDA_RETURN_IF_ERROR(cudaSetDevice(*ordinal));
  static_assert(sizeof(cudaIpcMemHandle_t) == kIpcHandleBytes,
                "cudaIpcMemHandle_t is 64 bytes");
  cudaIpcMemHandle_t raw;
  std::memcpy(&raw, handle.bytes.data(), kIpcHandleBytes);
  void* pointer = nullptr;
  cudaError_t err =
      cudaIpcOpenMemHandle(&pointer, raw, cudaIpcMemLazyEnablePeerAccess);
  if (err != cudaSuccess) {
    return CudaStatus(err, absl::StrCat("cudaIpcOpenMemHandle (", size,
                                        " bytes on ", gpu_uuid, ")"));
  }
  return std::unique_ptr<OpenedArena>(
      new CudaIpcArena(*ordinal, pointer, size));
}

#endif  // WEIGHTD_HAVE_CUDA

}  // namespace weightd
