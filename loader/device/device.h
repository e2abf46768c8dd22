// The GPU a checkpoint's bytes are placed on: a CUDA GPU, or a fake GPU (CI,
// demos) whose memory is host shared memory. One arena per checkpoint per
// device; bytes arrive through asynchronous host-to-device copies on stream
// slots, whose completion is observed through events; an arena exports a
// handle of a kind (a CUDA IPC handle, a shared-memory segment's) and 64
// bytes, which another process opens with OpenArenaHandle() (arena_handle.h).
// (Host placements are shared-memory segments, not a device: see
// loader/cache/placement.cc.)
//
// Devices are thread-safe: several loads may allocate, copy and record events
// concurrently. An arena must outlive the copies into it (wait on their
// events or Synchronize() before destroying it).
#ifndef WEIGHTD_LOADER_DEVICE_DEVICE_H_
#define WEIGHTD_LOADER_DEVICE_DEVICE_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace weightd {

enum class DeviceKind { kCuda, kFakeGpu };
const char* DeviceKindName(DeviceKind kind);  // "cuda", "fake"

// How another process opens an exported arena: what the 64 handle bytes are.
// Clients choose how to open an arena by this kind alone, never by the kind
// of device behind it.
enum class ArenaHandleKind {
  kCudaIpc,       // a cudaIpcMemHandle_t (cudaIpcOpenMemHandle)
  kSharedMemory,  // a shared-memory handle (shared_memory.h: magic, size, name)
};
const char* ArenaHandleKindName(ArenaHandleKind kind);  // "cuda_ipc", ...

inline constexpr size_t kIpcHandleBytes = 64;

// An exported arena handle: exactly 64 opaque bytes.
struct IpcHandle {
  std::array<uint8_t, kIpcHandleBytes> bytes{};

  std::string ToString() const {
    return std::string(reinterpret_cast<const char*>(bytes.data()),
                       bytes.size());
  }
  // INVALID_ARGUMENT unless `s` is exactly 64 bytes.
  static absl::StatusOr<IpcHandle> FromString(const std::string& s);
  bool operator==(const IpcHandle& o) const { return bytes == o.bytes; }
};

// What Device::ExportHandle() gives another process: the handle's kind and
// its bytes.
struct ArenaHandle {
  ArenaHandleKind kind = ArenaHandleKind::kCudaIpc;
  IpcHandle bytes;
};

struct MemoryInfo {
  uint64_t free_bytes = 0;
  uint64_t total_bytes = 0;
};

// Device memory holding one checkpoint (or part of it). Freed on destruction.
class DeviceArena {
 public:
  virtual ~DeviceArena() = default;
  virtual uint64_t size() const = 0;
  // The device's index (the n in "cuda:n").
  virtual int device_index() const = 0;
  // The arena's address on its device (a CUDA device pointer; the fake GPU's
  // shared-memory mapping).
  virtual void* device_pointer() const = 0;
};

// Page-aligned host memory for staging: pinned (page-locked) where the device
// needs that for asynchronous copies. Freed on destruction.
class PinnedBuffer {
 public:
  virtual ~PinnedBuffer() = default;
  virtual uint8_t* data() const = 0;
  virtual uint64_t size() const = 0;
};

// Completion of the work queued on one stream up to the point it was
// recorded. Reusable: RecordEvent() again moves it to the stream's new tail.
class DeviceEvent {
 public:
  virtual ~DeviceEvent() = default;
  // true: the work before the record has finished; false: still running; an
  // error: that work (a copy) failed.
  virtual absl::StatusOr<bool> Query() = 0;
  // Blocks until done; the error of the work, if it failed.
  virtual absl::Status Wait() = 0;
};

class Device {
 public:
  virtual ~Device() = default;

  virtual DeviceKind kind() const = 0;
  virtual int index() const = 0;
  // "cuda:0", or "cuda:1" for the second (fake) GPU.
  virtual std::string placement() const = 0;
  // "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" (CUDA), "GPU-fake-0000-..."
  // (fake).
  virtual std::string uuid() const = 0;
  virtual std::string name() const = 0;
  virtual absl::StatusOr<MemoryInfo> GetMemoryInfo() const = 0;
  // Stream slots available to CopyToDeviceAsync/RecordEvent: [0, n).
  virtual int num_streams() const = 0;

  virtual absl::StatusOr<std::unique_ptr<DeviceArena>> Allocate(
      uint64_t bytes) = 0;
  virtual absl::StatusOr<std::unique_ptr<PinnedBuffer>> AllocatePinned(
      uint64_t bytes) = 0;

  // Queues a copy of `length` bytes from host `src` to `arena` at `offset`
  // on stream slot `stream`. `src` must stay valid until an event recorded
  // after the copy completes. Bounds are checked (OUT_OF_RANGE).
  virtual absl::Status CopyToDeviceAsync(DeviceArena* arena, uint64_t offset,
                                         const void* src, uint64_t length,
                                         int stream) = 0;

  virtual absl::StatusOr<std::unique_ptr<DeviceEvent>> CreateEvent() = 0;
  // Makes `event` complete when the work queued on `stream` so far has.
  virtual absl::Status RecordEvent(DeviceEvent* event, int stream) = 0;

  // Waits for all work queued on every stream; the first copy error, if any.
  virtual absl::Status Synchronize() = 0;

  // The arena's handle for another process.
  virtual absl::StatusOr<ArenaHandle> ExportHandle(
      const DeviceArena& arena) = 0;

  // The arena's memory as an address this process's CPU may write directly,
  // or null where it is device memory (CUDA) or copies must go through
  // CopyToDeviceAsync. With an address, a staging pipeline reads file bytes
  // straight into the arena instead of through its ring.
  virtual uint8_t* HostAddress(const DeviceArena& arena) const {
    return nullptr;
  }
};

// Page-aligned ordinary host memory as a PinnedBuffer (the fake GPU; no page
// locking). RESOURCE_EXHAUSTED when allocation fails.
absl::StatusOr<std::unique_ptr<PinnedBuffer>> AllocateAlignedHostBuffer(
    uint64_t bytes);

// Checks [offset, offset + length) against an arena of `arena_size` bytes.
absl::Status CheckArenaRange(uint64_t arena_size, uint64_t offset,
                             uint64_t length);
// Checks a stream slot.
absl::Status CheckStream(int stream, int num_streams);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_DEVICE_DEVICE_H_
