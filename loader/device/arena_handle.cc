#include "loader/device/arena_handle.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "loader/device/cuda_ipc_arena.h"
#include "loader/device/shared_memory.h"

namespace weightd {
namespace {

class SharedMemoryArena : public OpenedArena {
 public:
  SharedMemoryArena(std::unique_ptr<SharedMapping> mapping, uint64_t size)
      : mapping_(std::move(mapping)), size_(size) {}
  ArenaHandleKind kind() const override {
    return ArenaHandleKind::kSharedMemory;
  }
  uint64_t size() const override { return size_; }
  const uint8_t* host_data() const override { return mapping_->data(); }
  absl::Status CopyToHost(uint64_t offset, uint64_t length,
                          void* dst) const override {
    absl::Status s = CheckArenaRange(size_, offset, length);
    if (!s.ok()) return s;
    if (length > 0) std::memcpy(dst, mapping_->data() + offset, length);
    return absl::OkStatus();
  }

 private:
  const std::unique_ptr<SharedMapping> mapping_;
  const uint64_t size_;
};

absl::StatusOr<std::unique_ptr<OpenedArena>> OpenSharedMemoryArena(
    const IpcHandle& handle, uint64_t size) {
  absl::StatusOr<SharedHandleInfo> info = DecodeSharedHandle(handle);
  if (!info.ok()) return info.status();
  if (size > info->size) {
    return absl::OutOfRangeError(absl::StrCat("shared-memory arena ",
                                              info->name, " holds ", info->size,
                                              " bytes, ", size, " described"));
  }
  absl::StatusOr<std::unique_ptr<SharedMapping>> mapping =
      OpenSharedSegment(info->name, info->size);
  if (!mapping.ok()) return mapping.status();
  return std::unique_ptr<OpenedArena>(
      new SharedMemoryArena(std::move(*mapping), size));
}

}  // namespace

absl::StatusOr<std::unique_ptr<OpenedArena>> OpenArenaHandle(
    const ArenaHandle& handle, uint64_t size, absl::string_view gpu_uuid) {
  switch (handle.kind) {
    case ArenaHandleKind::kSharedMemory:
      return OpenSharedMemoryArena(handle.bytes, size);
    case ArenaHandleKind::kCudaIpc:
      return OpenCudaIpcArena(handle.bytes, size, gpu_uuid);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "arena handle of unknown kind ", static_cast<int>(handle.kind)));
}

}  // namespace weightd
