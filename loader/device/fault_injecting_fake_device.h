// Tests only (a testonly target): a fake GPU that fails on purpose. The Nth
// allocation, the Nth copy (fails when it runs, reported by events), the Nth
// copy submission, memory info; plus the counters leak checks need. The
// daemon's fake GPUs are plain FakeDevices: nothing here is in its binary.
#ifndef WEIGHTD_LOADER_DEVICE_FAULT_INJECTING_FAKE_DEVICE_H_
#define WEIGHTD_LOADER_DEVICE_FAULT_INJECTING_FAKE_DEVICE_H_

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "loader/common/mutex.h"
#include "loader/device/fake_device.h"

namespace weightd {

class FaultInjectingFakeDevice : public FakeDevice {
 public:
  struct Faults {
    // Allocate() call number N (from 1) fails; with fail_all_allocations,
    // every call from N on. 0: never.
    uint64_t fail_allocation = 0;
    bool fail_all_allocations = false;
    // Copy number N (from 1, counted over accepted copies) fails when the
    // worker runs it. The first event recorded on its stream after it (and
    // Synchronize()) report `copy_error`.
    uint64_t fail_copy = 0;
    absl::Status copy_error = absl::InternalError("injected copy failure");
    // CopyToDeviceAsync call number N (counted over calls whose arguments
    // are good) returns an error at once.
    uint64_t fail_copy_submit = 0;
    // GetMemoryInfo() fails.
    bool fail_memory_info = false;
  };

  static absl::StatusOr<std::unique_ptr<FaultInjectingFakeDevice>> Create(
      const Options& options, const Faults& faults);
  // With no faults (SetFaults() adds them later).
  static absl::StatusOr<std::unique_ptr<FaultInjectingFakeDevice>> Create(
      const Options& options);

  // Replaces the injected faults; counters keep running.
  void SetFaults(const Faults& faults);

  // Copies accepted so far (to aim fail_copy at a later one).
  uint64_t copies_started() const;
  // Bytes of arenas not yet destroyed, and how many.
  uint64_t allocated_bytes() const;
  using FakeDevice::live_arenas;

  // Null by default: its faults are injected into copies, so every byte
  // goes through CopyToDeviceAsync (a pipeline keeps its staging ring). With
  // set_host_addressed(true), the arena's mapping, whatever the copy delay
  // (pipelines then write it directly and no copy fault fires).
  uint8_t* HostAddress(const DeviceArena& arena) const override;
  void set_host_addressed(bool host_addressed);

 protected:
  absl::Status AllocationFault(uint64_t bytes) override;
  absl::Status SubmitFault() override;
  absl::Status CopyFault() override;
  absl::Status MemoryInfoFault() const override;

 private:
  FaultInjectingFakeDevice(const Options& options, std::shared_ptr<State> state,
                           const Faults& faults)
      : FakeDevice(options, std::move(state)), faults_(faults) {}

  mutable Mutex mu_;
  Faults faults_ ABSL_GUARDED_BY(mu_);
  uint64_t allocations_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t copy_submits_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t copies_ ABSL_GUARDED_BY(mu_) = 0;
  bool host_addressed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace weightd

#endif  // WEIGHTD_LOADER_DEVICE_FAULT_INJECTING_FAKE_DEVICE_H_
