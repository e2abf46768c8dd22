// The GPUs this process places checkpoints on: the CUDA GPUs (none when built
// without CUDA or when there is no driver/GPU, with the reason kept), and
// optionally N fake GPUs (fake_gpus=N) numbered after them.
#ifndef WEIGHTD_LOADER_DEVICE_DEVICE_REGISTRY_H_
#define WEIGHTD_LOADER_DEVICE_DEVICE_REGISTRY_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "loader/device/cuda_device.h"
#include "loader/device/device.h"
#include "loader/device/fake_device.h"

namespace weightd {

struct DeviceRegistryOptions {
  bool use_cuda = true;
  CudaDeviceOptions cuda;
  int fake_gpus = 0;
  FakeDevice::Options fake;  // `index` is assigned per fake GPU
};

class DeviceRegistry {
 public:
  static absl::StatusOr<std::unique_ptr<DeviceRegistry>> Create(
      const DeviceRegistryOptions& options);

  // Real GPUs by CUDA ordinal, then the fake ones; gpus()[i]->index() == i.
  const std::vector<Device*>& gpus() const { return gpus_; }
  int num_cuda_gpus() const { return num_cuda_; }
  // Why there are (no) CUDA GPUs: "built without the CUDA toolkit...",
  // "cudaGetDeviceCount: ...", "2 CUDA device(s)".
  const std::string& cuda_status() const { return cuda_status_; }

 private:
  DeviceRegistry() = default;

  std::vector<std::unique_ptr<Device>> owned_;
  std::vector<Device*> gpus_;
  int num_cuda_ = 0;
  std::string cuda_status_;
};

}  // namespace weightd

#endif  // WEIGHTD_LOADER_DEVICE_DEVICE_REGISTRY_H_
