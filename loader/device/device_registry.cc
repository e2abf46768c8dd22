#include "loader/device/device_registry.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "loader/common/logging.h"

namespace weightd {

absl::StatusOr<std::unique_ptr<DeviceRegistry>> DeviceRegistry::Create(
    const DeviceRegistryOptions& options) {
  if (options.fake_gpus < 0 || options.fake_gpus > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("fake_gpus must be in [0, 64], got ", options.fake_gpus));
  }
  std::unique_ptr<DeviceRegistry> registry(new DeviceRegistry());

  if (options.use_cuda) {
    CudaEnumeration e = EnumerateCudaDevices();
    registry->cuda_status_ = e.status;
    std::vector<std::string> failed;
    for (int i = 0; i < e.count; ++i) {
      auto device = CreateCudaDevice(i, options.cuda);
      if (!device.ok()) {
        // Keep numbering dense: a GPU that fails to open ends the list.
        LogError("GPU %d unusable: %s", i, device.status().ToString());
        failed.push_back(
            absl::StrCat("GPU ", i, ": ", device.status().ToString()));
        break;
      }
      registry->gpus_.push_back(device->get());
      registry->owned_.push_back(std::move(*device));
    }
    if (!failed.empty()) {
      registry->cuda_status_ = absl::StrCat(registry->cuda_status_, "; ",
                                            absl::StrJoin(failed, "; "));
    }
  } else {
    registry->cuda_status_ = "CUDA disabled by configuration";
  }
  registry->num_cuda_ = static_cast<int>(registry->gpus_.size());
  if (registry->num_cuda_ == 0) {
    LogInfo("no CUDA GPUs: %s", registry->cuda_status_);
  }

  for (int i = 0; i < options.fake_gpus; ++i) {
    FakeDevice::Options fake = options.fake;
    fake.index = registry->num_cuda_ + i;
    auto device = FakeDevice::Create(fake);
    if (!device.ok()) return device.status();
    registry->gpus_.push_back(device->get());
    registry->owned_.push_back(std::move(*device));
  }
  return registry;
}

}  // namespace weightd
