#include "loader/device/device_registry.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
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
  auto host = HostDevice::Create(options.host);
  if (!host.ok()) return host.status();
  registry->host_ = std::move(*host);

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

absl::StatusOr<Device*> DeviceRegistry::Find(absl::string_view spec) const {
  std::string s = absl::AsciiStrToLower(spec);
  if (s == "cpu" || s == "host") return host_.get();
  absl::string_view rest = spec;
  if (absl::StartsWithIgnoreCase(rest, "cuda")) {
    rest.remove_prefix(4);
    if (rest.empty())
      rest = "0";
    else if (rest[0] == ':')
      rest.remove_prefix(1);
    else
      rest = spec;  // not "cuda" / "cuda:..."
  }
  int index = -1;
  if (absl::StartsWith(rest, "GPU-")) {
    for (Device* d : gpus_) {
      if (d->uuid() == rest) return d;
    }
  } else if (absl::SimpleAtoi(rest, &index) && index >= 0 &&
             index < static_cast<int>(gpus_.size())) {
    return gpus_[index];
  }
  std::vector<std::string> have;
  for (Device* d : gpus_)
    have.push_back(absl::StrCat(d->placement(), "=", d->uuid()));
  return absl::NotFoundError(
      absl::StrCat("no device '", spec, "' (GPUs: ",
                   have.empty() ? absl::StrCat("none; ", cuda_status_)
                                : absl::StrJoin(have, ", "),
                   ")"));
}

FakeDevice* DeviceRegistry::fake_gpu(int index) const {
  if (index < 0 || index >= static_cast<int>(gpus_.size())) return nullptr;
  return dynamic_cast<FakeDevice*>(gpus_[index]);
}

}  // namespace weightd
