#include "loader/device/fault_injecting_fake_device.h"

#include "absl/strings/str_cat.h"

namespace weightd {

absl::StatusOr<std::unique_ptr<FaultInjectingFakeDevice>>
FaultInjectingFakeDevice::Create(const Options& options, const Faults& faults) {
  absl::StatusOr<std::shared_ptr<State>> state = Start(options);
  if (!state.ok()) return state.status();
  return std::unique_ptr<FaultInjectingFakeDevice>(
      new FaultInjectingFakeDevice(options, *state, faults));
}

absl::StatusOr<std::unique_ptr<FaultInjectingFakeDevice>>
FaultInjectingFakeDevice::Create(const Options& options) {
  return Create(options, Faults());
}

void FaultInjectingFakeDevice::SetFaults(const Faults& faults) {
  MutexLock lock(&mu_);
  faults_ = faults;
}

uint64_t FaultInjectingFakeDevice::copies_started() const {
  MutexLock lock(&mu_);
  return copies_;
}

uint64_t FaultInjectingFakeDevice::allocated_bytes() const {
  absl::StatusOr<MemoryInfo> memory = FakeDevice::GetMemoryInfo();
  return memory.ok() ? memory->total_bytes - memory->free_bytes : 0;
}

uint8_t* FaultInjectingFakeDevice::HostAddress(const DeviceArena& arena) const {
  MutexLock lock(&mu_);
  return host_addressed_ ? ArenaMemory(arena) : nullptr;
}

void FaultInjectingFakeDevice::set_host_addressed(bool host_addressed) {
  MutexLock lock(&mu_);
  host_addressed_ = host_addressed;
}

absl::Status FaultInjectingFakeDevice::AllocationFault(uint64_t bytes) {
  MutexLock lock(&mu_);
  const uint64_t n = ++allocations_;
  const Faults& f = faults_;
  if (f.fail_allocation != 0 &&
      (n == f.fail_allocation ||
       (f.fail_all_allocations && n > f.fail_allocation))) {
    return absl::ResourceExhaustedError(
        absl::StrCat("fake GPU ", index(), ": injected failure allocating ",
                     bytes, " bytes"));
  }
  return absl::OkStatus();
}

absl::Status FaultInjectingFakeDevice::SubmitFault() {
  MutexLock lock(&mu_);
  const uint64_t n = ++copy_submits_;
  if (faults_.fail_copy_submit != 0 && n == faults_.fail_copy_submit) {
    return absl::InternalError(absl::StrCat(
        "fake GPU ", index(), ": injected failure submitting copy ", n));
  }
  return absl::OkStatus();
}

absl::Status FaultInjectingFakeDevice::CopyFault() {
  MutexLock lock(&mu_);
  const uint64_t n = ++copies_;
  if (faults_.fail_copy != 0 && n == faults_.fail_copy) {
    return faults_.copy_error;
  }
  return absl::OkStatus();
}

absl::Status FaultInjectingFakeDevice::MemoryInfoFault() const {
  MutexLock lock(&mu_);
  if (faults_.fail_memory_info) {
    return absl::UnavailableError(
        absl::StrCat("fake GPU ", index(), ": injected memory info failure"));
  }
  return absl::OkStatus();
}

}  // namespace weightd
