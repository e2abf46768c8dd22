// The other end of Device::ExportHandle(): opens, in this process, an arena a
// daemon exported, by the handle's kind alone (never by what device is behind
// it). The C++ client and the tests open arenas only through here; the Python
// client mirrors it (client/python/weightd/_model.py).
//
//   kSharedMemory: the handle names a POSIX shared-memory segment (layout in
//     shared_memory.h); it is mapped read-only, host_data() is its bytes.
//   kCudaIpc: a cudaIpcMemHandle_t of the GPU named by its UUID (found among
//     this process's GPUs whatever CUDA_VISIBLE_DEVICES numbers them);
//     device_pointer() is the opened allocation. UNIMPLEMENTED in a build
//     without the CUDA toolkit.
#ifndef WEIGHTD_LOADER_DEVICE_ARENA_HANDLE_H_
#define WEIGHTD_LOADER_DEVICE_ARENA_HANDLE_H_

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "loader/device/device.h"

namespace weightd {

// An arena of another process opened here; closing it (destruction) unmaps
// the segment or closes the IPC handle.
class OpenedArena {
 public:
  virtual ~OpenedArena() = default;
  virtual ArenaHandleKind kind() const = 0;
  // The bytes this process may address (the size the daemon described).
  virtual uint64_t size() const = 0;
  // The arena's bytes, readable here (shared memory); null otherwise.
  virtual const uint8_t* host_data() const { return nullptr; }
  // The arena in this process's CUDA address space (CUDA IPC); null
  // otherwise.
  virtual void* device_pointer() const { return nullptr; }
  // Copies [offset, offset + length) into host memory at `dst`; OUT_OF_RANGE
  // past size().
  virtual absl::Status CopyToHost(uint64_t offset, uint64_t length,
                                  void* dst) const = 0;
};

// Opens `handle` for `size` bytes. `gpu_uuid` ("GPU-...") names the GPU of a
// CUDA IPC handle (ignored for shared memory). INVALID_ARGUMENT for a handle
// that is not what its kind says; OUT_OF_RANGE when the arena is smaller than
// `size`; NOT_FOUND when the segment is gone or the GPU is not visible here.
absl::StatusOr<std::unique_ptr<OpenedArena>> OpenArenaHandle(
    const ArenaHandle& handle, uint64_t size, absl::string_view gpu_uuid);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_DEVICE_ARENA_HANDLE_H_
