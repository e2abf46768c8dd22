// A fake GPU for CI and demos (the daemon's --fake_gpus): its memory is a
// shared-memory segment per arena, exported as a shared-memory handle (so a
// second process opens an arena with OpenArenaHandle()), and copies run
// asynchronously on one worker thread per stream with a fixed delay.
//
// Failures are injected only by a test subclass
// (fault_injecting_fake_device.h, testonly) through the protected seams
// below; the daemon's fake GPUs never fail on purpose.
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
  struct Options {
    int index = 0;
    uint64_t total_memory = 16ull << 30;
    int num_streams = 4;
    // Each copy takes at least this long (--fake_gpu_copy_delay_us).
    absl::Duration copy_delay = absl::ZeroDuration();
  };

  static absl::StatusOr<std::unique_ptr<FakeDevice>> Create(
      const Options& options);
  ~FakeDevice() override;

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
  // A shared-memory handle naming the arena's segment.
  absl::StatusOr<ArenaHandle> ExportHandle(const DeviceArena& arena) override;
  // The arena's shared-memory mapping; null with a copy_delay (that fake
  // models a slow device, whose bytes must go through its copies).
  uint8_t* HostAddress(const DeviceArena& arena) const override;

  struct State;  // shared with arenas, events and the stream workers

 protected:
  // Starts the stream workers; the subclass's Create() passes the result to
  // the constructor.
  static absl::StatusOr<std::shared_ptr<State>> Start(const Options& options);
  FakeDevice(const Options& options, std::shared_ptr<State> state);

  // Seams for fault injection, called on the caller's thread (never from a
  // stream worker); each returns the failure to inject, OK for none.
  // Allocate() fails with it.
  virtual absl::Status AllocationFault(uint64_t bytes) {
    return absl::OkStatus();
  }
  // CopyToDeviceAsync() (arguments already checked) fails with it at once.
  virtual absl::Status SubmitFault() { return absl::OkStatus(); }
  // The accepted copy fails with it when its worker runs it: the first event
  // recorded on its stream after it, and Synchronize(), report it.
  virtual absl::Status CopyFault() { return absl::OkStatus(); }
  // GetMemoryInfo() fails with it.
  virtual absl::Status MemoryInfoFault() const { return absl::OkStatus(); }

  // Arenas not yet destroyed (leak checks of the subclass).
  int live_arenas() const;
  // An arena of this device's mapping, whatever the copy delay; null for
  // another device's.
  uint8_t* ArenaMemory(const DeviceArena& arena) const;

 private:
  const int index_;
  const int num_streams_;
  std::shared_ptr<State> state_;
};

}  // namespace weightd

#endif  // WEIGHTD_LOADER_DEVICE_FAKE_DEVICE_H_
