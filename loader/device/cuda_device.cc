#include "loader/device/cuda_device.h"

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

#ifdef WEIGHTD_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "loader/common/logging.h"
#include "loader/device/cuda_status.h"
#endif

namespace weightd {

std::string FormatGpuUuid(const uint8_t b[16]) {
  return absl::StrFormat(
      "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%"
      "02x",
      b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11],
      b[12], b[13], b[14], b[15]);
}

#ifndef WEIGHTD_HAVE_CUDA

bool CudaCompiledIn() { return false; }

CudaEnumeration EnumerateCudaDevices() {
  CudaEnumeration e;
  e.status = "built without the CUDA toolkit: no GPU support";
  return e;
}

absl::StatusOr<std::unique_ptr<Device>> CreateCudaDevice(
    int ordinal, const CudaDeviceOptions& options) {
  return absl::UnimplementedError(
      "built without the CUDA toolkit: no GPU support");
}

#else  // WEIGHTD_HAVE_CUDA

namespace {

class CudaArena : public DeviceArena {
 public:
  CudaArena(int ordinal, void* ptr, uint64_t size)
      : ordinal_(ordinal), ptr_(ptr), size_(size) {}
  ~CudaArena() override {
    if (ptr_ == nullptr) return;
    cudaError_t err = cudaSetDevice(ordinal_);
    if (err == cudaSuccess) err = cudaFree(ptr_);
    if (err != cudaSuccess) {
      LogError("cudaFree(%u bytes on GPU %d): %s", size_, ordinal_,
               cudaGetErrorString(err));
    }
  }
  uint64_t size() const override { return size_; }
  int device_index() const override { return ordinal_; }
  void* device_pointer() const override { return ptr_; }

 private:
  const int ordinal_;
  void* const ptr_;
  const uint64_t size_;
};

class CudaPinnedBuffer : public PinnedBuffer {
 public:
  CudaPinnedBuffer(uint8_t* data, uint64_t size) : data_(data), size_(size) {}
  ~CudaPinnedBuffer() override {
    cudaError_t err = cudaFreeHost(data_);
    if (err != cudaSuccess) {
      LogError("cudaFreeHost: %s", cudaGetErrorString(err));
    }
  }
  uint8_t* data() const override { return data_; }
  uint64_t size() const override { return size_; }

 private:
  uint8_t* const data_;
  const uint64_t size_;
};

class CudaEvent : public DeviceEvent {
 public:
  CudaEvent(int ordinal, cudaEvent_t event)
      : ordinal_(ordinal), event_(event) {}
  ~CudaEvent() override {
    cudaSetDevice(ordinal_);
    cudaEventDestroy(event_);
  }
  absl::StatusOr<bool> Query() override {
    cudaError_t err = cudaEventQuery(event_);
    if (err == cudaSuccess) return true;
    if (err == cudaErrorNotReady) return false;
    return CudaStatus(err, "cudaEventQuery");
  }
  absl::Status Wait() override {
    WEIGHTD_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(event_));
    return absl::OkStatus();
  }
  cudaEvent_t event() const { return event_; }
  int ordinal() const { return ordinal_; }

 private:
  const int ordinal_;
  const cudaEvent_t event_;
};

class CudaDevice : public Device {
 public:
  CudaDevice(int ordinal, std::string uuid, std::string name)
      : ordinal_(ordinal), uuid_(std::move(uuid)), name_(std::move(name)) {}
  ~CudaDevice() override {
    if (cudaSetDevice(ordinal_) != cudaSuccess) return;
    for (cudaStream_t s : streams_) {
      cudaStreamSynchronize(s);
      cudaStreamDestroy(s);
    }
  }

  absl::Status Init(const CudaDeviceOptions& options) {
    if (options.num_streams < 1 || options.num_streams > 64) {
      return absl::InvalidArgumentError("CUDA streams must be in [1, 64]");
    }
    WEIGHTD_CUDA_RETURN_IF_ERROR(cudaSetDevice(ordinal_));
    for (int i = 0; i < options.num_streams; ++i) {
      cudaStream_t s;
      WEIGHTD_CUDA_RETURN_IF_ERROR(
          cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
      streams_.push_back(s);
    }
    return absl::OkStatus();
  }

  DeviceKind kind() const override { return DeviceKind::kCuda; }
  int index() const override { return ordinal_; }
  std::string placement() const override {
    return absl::StrCat("cuda:", ordinal_);
  }
  std::string uuid() const override { return uuid_; }
  std::string name() const override { return name_; }
  int num_streams() const override { return static_cast<int>(streams_.size()); }

  absl::StatusOr<MemoryInfo> GetMemoryInfo() const override {
    WEIGHTD_CUDA_RETURN_IF_ERROR(cudaSetDevice(ordinal_));
    size_t free_bytes = 0, total_bytes = 0;
    WEIGHTD_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes));
    MemoryInfo info;
    info.free_bytes = free_bytes;
    info.total_bytes = total_bytes;
    return info;
  }

  absl::StatusOr<std::unique_ptr<DeviceArena>> Allocate(
      uint64_t bytes) override {
    WEIGHTD_CUDA_RETURN_IF_ERROR(cudaSetDevice(ordinal_));
    void* ptr = nullptr;
    if (bytes > 0) {
      cudaError_t err = cudaMalloc(&ptr, static_cast<size_t>(bytes));
      if (err != cudaSuccess) {
        return CudaStatus(err, absl::StrCat("cudaMalloc(", bytes,
                                            " bytes on GPU ", ordinal_, ")"));
      }
    }
    return std::unique_ptr<DeviceArena>(new CudaArena(ordinal_, ptr, bytes));
  }

  absl::StatusOr<std::unique_ptr<PinnedBuffer>> AllocatePinned(
      uint64_t bytes) override {
    WEIGHTD_CUDA_RETURN_IF_ERROR(cudaSetDevice(ordinal_));
    void* ptr = nullptr;
    cudaError_t err = cudaHostAlloc(
        &ptr, static_cast<size_t>(bytes ? bytes : 1), cudaHostAllocPortable);
    if (err != cudaSuccess) {
      return CudaStatus(err, absl::StrCat("cudaHostAlloc(", bytes, " bytes)"));
    }
    return std::unique_ptr<PinnedBuffer>(
        new CudaPinnedBuffer(static_cast<uint8_t*>(ptr), bytes));
  }

  absl::Status CopyToDeviceAsync(DeviceArena* arena, uint64_t offset,
                                 const void* src, uint64_t length,
                                 int stream) override {
    absl::Status s = CheckStream(stream, num_streams());
    if (!s.ok()) return s;
    if (dynamic_cast<CudaArena*>(arena) == nullptr ||
        arena->device_index() != ordinal_) {
      return absl::InvalidArgumentError(
          absl::StrCat("not an arena of GPU ", ordinal_));
    }
    s = CheckArenaRange(arena->size(), offset, length);
    if (!s.ok()) return s;
    if (length == 0) return absl::OkStatus();
    WEIGHTD_CUDA_RETURN_IF_ERROR(cudaSetDevice(ordinal_));
    cudaError_t err = cudaMemcpyAsync(
        static_cast<uint8_t*>(arena->device_pointer()) + offset, src,
        static_cast<size_t>(length), cudaMemcpyHostToDevice, streams_[stream]);
    if (err != cudaSuccess) {
      return CudaStatus(err, absl::StrCat("cudaMemcpyAsync(", length,
                                          " bytes to GPU ", ordinal_, ")"));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<DeviceEvent>> CreateEvent() override {
    WEIGHTD_CUDA_RETURN_IF_ERROR(cudaSetDevice(ordinal_));
    cudaEvent_t event;
    WEIGHTD_CUDA_RETURN_IF_ERROR(
        cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
    return std::unique_ptr<DeviceEvent>(new CudaEvent(ordinal_, event));
  }

  absl::Status RecordEvent(DeviceEvent* event, int stream) override {
    absl::Status s = CheckStream(stream, num_streams());
    if (!s.ok()) return s;
    CudaEvent* cuda = dynamic_cast<CudaEvent*>(event);
    if (cuda == nullptr || cuda->ordinal() != ordinal_) {
      return absl::InvalidArgumentError(
          absl::StrCat("not an event of GPU ", ordinal_));
    }
    WEIGHTD_CUDA_RETURN_IF_ERROR(cudaSetDevice(ordinal_));
    WEIGHTD_CUDA_RETURN_IF_ERROR(
        cudaEventRecord(cuda->event(), streams_[stream]));
    return absl::OkStatus();
  }

  absl::Status Synchronize() override {
    WEIGHTD_CUDA_RETURN_IF_ERROR(cudaSetDevice(ordinal_));
    for (cudaStream_t s : streams_) {
      WEIGHTD_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<ArenaHandle> ExportHandle(const DeviceArena& arena) override {
    if (dynamic_cast<const CudaArena*>(&arena) == nullptr ||
        arena.device_index() != ordinal_) {
      return absl::InvalidArgumentError(
          absl::StrCat("not an arena of GPU ", ordinal_));
    }
    if (arena.device_pointer() == nullptr) {
      return absl::FailedPreconditionError("an empty arena has no IPC handle");
    }
    WEIGHTD_CUDA_RETURN_IF_ERROR(cudaSetDevice(ordinal_));
    cudaIpcMemHandle_t handle;
    WEIGHTD_CUDA_RETURN_IF_ERROR(
        cudaIpcGetMemHandle(&handle, arena.device_pointer()));
    static_assert(sizeof(handle) == kIpcHandleBytes,
                  "cudaIpcMemHandle_t is 64 bytes");
    ArenaHandle out;
    out.kind = ArenaHandleKind::kCudaIpc;
    std::memcpy(out.bytes.bytes.data(), &handle, kIpcHandleBytes);
    return out;
  }

 private:
  const int ordinal_;
  const std::string uuid_;
  const std::string name_;
  std::vector<cudaStream_t> streams_;
};

}  // namespace

bool CudaCompiledIn() { return true; }

CudaEnumeration EnumerateCudaDevices() {
  CudaEnumeration e;
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    e.status = CudaStatus(err, "cudaGetDeviceCount").ToString();
    cudaGetLastError();  // clear it
    return e;
  }
  e.count = count;
  e.status = count == 0 ? "cudaGetDeviceCount: 0 devices"
                        : absl::StrCat(count, " CUDA device(s)");
  return e;
}

absl::StatusOr<std::unique_ptr<Device>> CreateCudaDevice(
    int ordinal, const CudaDeviceOptions& options) {
  cudaDeviceProp prop;
  cudaError_t err = cudaGetDeviceProperties(&prop, ordinal);
  if (err != cudaSuccess) {
    return CudaStatus(err,
                      absl::StrCat("cudaGetDeviceProperties(", ordinal, ")"));
  }
  auto device = std::make_unique<CudaDevice>(
      ordinal, FormatGpuUuid(reinterpret_cast<const uint8_t*>(prop.uuid.bytes)),
      std::string(prop.name));
  absl::Status s = device->Init(options);
  if (!s.ok()) return s;
  return std::unique_ptr<Device>(std::move(device));
}

#endif  // WEIGHTD_HAVE_CUDA

}  // namespace weightd
