#include "loader/device/host_device.h"

#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"

namespace weightd {
namespace {

class HostArena : public DeviceArena {
 public:
  explicit HostArena(std::unique_ptr<SharedMemorySegment> segment)
      : segment_(std::move(segment)) {}
  uint64_t size() const override { return segment_->size(); }
  int device_index() const override { return 0; }
  void* device_pointer() const override { return segment_->data(); }
  uint8_t* host_data() const override { return segment_->data(); }
  const SharedMemorySegment* segment() const { return segment_.get(); }

 private:
  std::unique_ptr<SharedMemorySegment> segment_;
};

class DoneEvent : public DeviceEvent {
 public:
  absl::StatusOr<bool> Query() override { return true; }
  absl::Status Wait() override { return absl::OkStatus(); }
};

}  // namespace

absl::StatusOr<std::unique_ptr<HostDevice>> HostDevice::Create(
    const Options& options) {
  if (options.num_streams < 1) {
    return absl::InvalidArgumentError("host device needs at least one stream");
  }
  return std::unique_ptr<HostDevice>(new HostDevice(options));
}

absl::StatusOr<MemoryInfo> HostDevice::GetMemoryInfo() const {
  long page = sysconf(_SC_PAGESIZE);
  long total = sysconf(_SC_PHYS_PAGES);
  long avail = sysconf(_SC_AVPHYS_PAGES);
  if (page <= 0 || total <= 0 || avail < 0) {
    return absl::InternalError("sysconf(_SC_PHYS_PAGES) failed");
  }
  MemoryInfo info;
  info.total_bytes = static_cast<uint64_t>(total) * page;
  info.free_bytes = static_cast<uint64_t>(avail) * page;
  return info;
}

absl::StatusOr<std::unique_ptr<DeviceArena>> HostDevice::Allocate(
    uint64_t bytes) {
  auto segment =
      SharedMemorySegment::Create(bytes, "weightd", options_.populate_arenas);
  if (!segment.ok()) return segment.status();
  return std::unique_ptr<DeviceArena>(new HostArena(std::move(*segment)));
}

absl::StatusOr<std::unique_ptr<PinnedBuffer>> HostDevice::AllocatePinned(
    uint64_t bytes) {
  return AllocateAlignedHostBuffer(bytes);
}

absl::Status HostDevice::CopyToDeviceAsync(DeviceArena* arena, uint64_t offset,
                                           const void* src, uint64_t length,
                                           int stream) {
  absl::Status s = CheckStream(stream, options_.num_streams);
  if (!s.ok()) return s;
  s = CheckArenaRange(arena->size(), offset, length);
  if (!s.ok()) return s;
  if (arena->host_data() == nullptr && length > 0) {
    return absl::InvalidArgumentError("not a host arena");
  }
  if (length > 0) std::memcpy(arena->host_data() + offset, src, length);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<DeviceEvent>> HostDevice::CreateEvent() {
  return std::unique_ptr<DeviceEvent>(new DoneEvent());
}

absl::Status HostDevice::RecordEvent(DeviceEvent* event, int stream) {
  return CheckStream(stream, options_.num_streams);
}

const SharedMemorySegment* HostDevice::Segment(const DeviceArena& arena) {
  const HostArena* host = dynamic_cast<const HostArena*>(&arena);
  return host == nullptr ? nullptr : host->segment();
}

absl::StatusOr<IpcHandle> HostDevice::ExportHandle(const DeviceArena& arena) {
  const SharedMemorySegment* segment = Segment(arena);
  if (segment == nullptr) {
    return absl::InvalidArgumentError("not an arena of the host device");
  }
  SharedHandleInfo info;
  info.kind = SharedHandleKind::kHost;
  info.device_index = 0;
  info.size = segment->size();
  info.name = segment->name();
  return EncodeSharedHandle(info);
}

}  // namespace weightd
