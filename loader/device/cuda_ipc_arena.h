// OpenArenaHandle()'s CUDA IPC half (arena_handle.cc): kept apart so that
// only this file needs the CUDA runtime's headers.
#ifndef WEIGHTD_LOADER_DEVICE_CUDA_IPC_ARENA_H_
#define WEIGHTD_LOADER_DEVICE_CUDA_IPC_ARENA_H_

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "loader/device/arena_handle.h"
#include "loader/device/device.h"

namespace weightd {

absl::StatusOr<std::unique_ptr<OpenedArena>> OpenCudaIpcArena(
    const IpcHandle& handle, uint64_t size, absl::string_view gpu_uuid);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_DEVICE_CUDA_IPC_ARENA_H_
