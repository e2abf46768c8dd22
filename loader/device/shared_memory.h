// POSIX shared-memory segments: the host arenas (and the fake GPU's memory),
// their 64-byte handles, and the client-side read-only mapping.
//
// Handle layout (little-endian): bytes 0-3 magic ("WDSH" host, "WDFG" fake
// GPU), 4 version (1), 5 device index, 6-7 zero, 8-15 size, 16-63 the segment
// name (starts with '/', NUL-padded, at most 47 characters).
#ifndef WEIGHTD_LOADER_DEVICE_SHARED_MEMORY_H_
#define WEIGHTD_LOADER_DEVICE_SHARED_MEMORY_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "loader/device/device.h"

namespace weightd {

// A segment this process created, mapped read-write. Destruction unmaps it
// and unlinks its name; mappings other processes hold stay valid until they
// unmap.
class SharedMemorySegment {
 public:
  // Creates "/<prefix>-<pid>-<counter>" of `size` bytes (size 0: no mapping,
  // data() null). `populate` faults every page in up front (MAP_POPULATE).
  static absl::StatusOr<std::unique_ptr<SharedMemorySegment>> Create(
      uint64_t size, absl::string_view prefix = "weightd",
      bool populate = false);
  ~SharedMemorySegment();
  SharedMemorySegment(const SharedMemorySegment&) = delete;
  SharedMemorySegment& operator=(const SharedMemorySegment&) = delete;

  const std::string& name() const { return name_; }
  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  SharedMemorySegment() = default;
  std::string name_;
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

// Another process's segment, mapped read-only.
class SharedMapping {
 public:
  ~SharedMapping();
  SharedMapping(const SharedMapping&) = delete;
  SharedMapping& operator=(const SharedMapping&) = delete;

  const std::string& name() const { return name_; }
  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  friend absl::StatusOr<std::unique_ptr<SharedMapping>> OpenSharedSegment(
      const std::string& name, uint64_t size);
  SharedMapping() = default;
  std::string name_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

// Maps the first `size` bytes of segment `name` read-only. NOT_FOUND when the
// segment is gone, OUT_OF_RANGE when it is smaller than `size`.
absl::StatusOr<std::unique_ptr<SharedMapping>> OpenSharedSegment(
    const std::string& name, uint64_t size);

enum class SharedHandleKind { kHost, kFakeGpu };

struct SharedHandleInfo {
  SharedHandleKind kind = SharedHandleKind::kHost;
  int device_index = 0;
  uint64_t size = 0;
  std::string name;
};

absl::StatusOr<IpcHandle> EncodeSharedHandle(const SharedHandleInfo& info);
// INVALID_ARGUMENT for anything that is not a host or fake-GPU handle (a
// CUDA handle, garbage).
absl::StatusOr<SharedHandleInfo> DecodeSharedHandle(const IpcHandle& handle);

// The client side: decodes a host or fake-GPU handle and maps the arena's
// bytes read-only.
absl::StatusOr<std::unique_ptr<SharedMapping>> OpenSharedHandle(
    const IpcHandle& handle);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_DEVICE_SHARED_MEMORY_H_
