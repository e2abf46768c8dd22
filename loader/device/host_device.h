// The host "device": arenas are POSIX shared-memory segments that clients map
// read-only through the exported handle (or the segment name). Copies are
// plain memcpy done at submission, so events are always complete; the staging
// pipeline skips staging and reads file bytes straight into the arena.
#ifndef WEIGHTD_LOADER_DEVICE_HOST_DEVICE_H_
#define WEIGHTD_LOADER_DEVICE_HOST_DEVICE_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "loader/device/device.h"
#include "loader/device/shared_memory.h"

namespace weightd {

class HostDevice : public Device {
 public:
  struct Options {
    int num_streams = 1;
    // Fault every arena page in at allocation (MAP_POPULATE).
    bool populate_arenas = false;
  };
  static absl::StatusOr<std::unique_ptr<HostDevice>> Create(
      const Options& options);
  static absl::StatusOr<std::unique_ptr<HostDevice>> Create() {
    return Create(Options());
  }

  DeviceKind kind() const override { return DeviceKind::kHost; }
  int index() const override { return 0; }
  std::string placement() const override { return "cpu"; }
  std::string uuid() const override { return "host"; }
  std::string name() const override { return "host shared memory"; }
  absl::StatusOr<MemoryInfo> GetMemoryInfo() const override;
  int num_streams() const override { return options_.num_streams; }

  absl::StatusOr<std::unique_ptr<DeviceArena>> Allocate(
      uint64_t bytes) override;
  absl::StatusOr<std::unique_ptr<PinnedBuffer>> AllocatePinned(
      uint64_t bytes) override;
  absl::Status CopyToDeviceAsync(DeviceArena* arena, uint64_t offset,
                                 const void* src, uint64_t length,
                                 int stream) override;
  absl::StatusOr<std::unique_ptr<DeviceEvent>> CreateEvent() override;
  absl::Status RecordEvent(DeviceEvent* event, int stream) override;
  absl::Status Synchronize() override { return absl::OkStatus(); }
  absl::StatusOr<IpcHandle> ExportHandle(const DeviceArena& arena) override;

  // The segment behind a host arena (its name is what clients open).
  static const SharedMemorySegment* Segment(const DeviceArena& arena);

 private:
  explicit HostDevice(const Options& options) : options_(options) {}
  const Options options_;
};

}  // namespace weightd

#endif  // WEIGHTD_LOADER_DEVICE_HOST_DEVICE_H_
