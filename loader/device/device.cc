#include "loader/device/device.h"

#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace weightd {

const char* DeviceKindName(DeviceKind kind) {
  switch (kind) {
    case DeviceKind::kCuda:
      return "cuda";
    case DeviceKind::kFakeGpu:
      return "fake";
  }
  return "?";
}

const char* ArenaHandleKindName(ArenaHandleKind kind) {
  switch (kind) {
    case ArenaHandleKind::kCudaIpc:
      return "cuda_ipc";
    case ArenaHandleKind::kSharedMemory:
      return "shared_memory";
  }
  return "?";
}

absl::StatusOr<IpcHandle> IpcHandle::FromString(const std::string& s) {
  if (s.size() != kIpcHandleBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "IPC handle must be ", kIpcHandleBytes, " bytes, got ", s.size()));
  }
  IpcHandle h;
  std::memcpy(h.bytes.data(), s.data(), kIpcHandleBytes);
  return h;
}

namespace {

class AlignedHostBuffer : public PinnedBuffer {
 public:
  AlignedHostBuffer(uint8_t* data, uint64_t size) : data_(data), size_(size) {}
  ~AlignedHostBuffer() override { std::free(data_); }
  uint8_t* data() const override { return data_; }
  uint64_t size() const override { return size_; }

 private:
  uint8_t* const data_;
  const uint64_t size_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<PinnedBuffer>> AllocateAlignedHostBuffer(
    uint64_t bytes) {
  void* p = nullptr;
  size_t n = static_cast<size_t>(bytes == 0 ? 1 : bytes);
  if (bytes > SIZE_MAX / 2 || posix_memalign(&p, 4096, n) != 0) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate a ", bytes, "-byte staging buffer"));
  }
  return std::unique_ptr<PinnedBuffer>(
      new AlignedHostBuffer(static_cast<uint8_t*>(p), bytes));
}

absl::Status CheckArenaRange(uint64_t arena_size, uint64_t offset,
                             uint64_t length) {
  if (offset > arena_size || length > arena_size - offset) {
    return absl::OutOfRangeError(absl::StrCat("range [", offset, ", +", length,
                                              ") is outside the arena of ",
                                              arena_size, " bytes"));
  }
  return absl::OkStatus();
}

absl::Status CheckStream(int stream, int num_streams) {
  if (stream < 0 || stream >= num_streams) {
    return absl::InvalidArgumentError(absl::StrCat(
        "stream slot ", stream, " out of range [0, ", num_streams, ")"));
  }
  return absl::OkStatus();
}

}  // namespace weightd
