// A fake GPU for CI: its memory is a shared-memory segment per arena (so a
// second process can read an arena through the exported 64-byte handle with
// OpenSharedHandle()), copies run asynchronously on one worker thread per
// stream with a configurable delay, and failures can be injected: the Nth
// allocation, the Nth copy (fails when it runs, reported by events), the Nth
// copy submission, memory info.
#ifndef WEIGHTD_LOADER_DEVICE_FAKE_DEVICE_H_
#define WEIGHTD_LOADER_DEVICE_FAKE_DEVICE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "loader/device/device.h"

namespace weightd {

class FakeDevice : public Device {
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
    // CopyToDeviceAsync call number N returns an error at once.
    uint64_t fail_copy_submit = 0;
    // GetMemoryInfo() fails.
    bool fail_memory_info = false;
  };

  struct Options {
    int index = 0;
    uint64_t total_memory = 16ull << 30;
    int num_streams = 4;
    absl::Duration copy_delay = absl::ZeroDuration();
    Faults faults;
  };

  static absl::StatusOr<std::unique_ptr<FakeDevice>> Create(
      const Options& options);
  ~FakeDevice() override;

  // Replaces the injected faults; counters keep running.
  void SetFaults(const Faults& faults);
  void SetCopyDelay(absl::Duration delay);

  DeviceKind kind() const override { return DeviceKind::kFakeGpu; }
  int index() const override { return index_; }
  std::string placement() const override;
  // "GPU-fake-0000-0000-0000-00000000000N" (N = index, zero-padded).
  std::string uuid() const override;
  std::string name() const override;
  absl::StatusOr<MemoryInfo> GetMemoryInfo() const override;
  int num_streams() const override { return num_streams_; }

  absl::StatusOr<std::unique_ptr<DeviceArena>> Allocate(
      uint64_t bytes) override;
  absl::StatusOr<std::unique_ptr<PinnedBuffer>> AllocatePinned(
      uint64_t bytes) override;
  absl::Status CopyToDeviceAsync(DeviceArena* arena, uint64_t offset,
                                 const void* src, uint64_t length,
                                 int stream) override;
  absl::StatusOr<std::unique_ptr<DeviceEvent>> CreateEvent() override;
  absl::Status RecordEvent(DeviceEvent* event, int stream) override;
  absl::Status Synchronize() override;
  absl::StatusOr<IpcHandle> ExportHandle(const DeviceArena& arena) override;

  // Test access to an arena's bytes (null if not a fake arena).
  static const uint8_t* ArenaBytes(const DeviceArena& arena);

  // Bookkeeping for leak checks.
  uint64_t allocated_bytes() const;
  int live_arenas() const;
  uint64_t copies_started() const;

  struct State;  // shared with arenas and events

 private:
  FakeDevice(int index, int num_streams, std::shared_ptr<State> state)
      : index_(index), num_streams_(num_streams), state_(std::move(state)) {}

  const int index_;
  const int num_streams_;
  std::shared_ptr<State> state_;
};

}  // namespace weightd

#endif  // WEIGHTD_LOADER_DEVICE_FAKE_DEVICE_H_
