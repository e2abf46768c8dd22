// The devices a daemon places weights on, behind one small surface the
// ModelManager uses: GPUs (CUDA and fake) with the staging pipeline that fills
// their arenas, host shared-memory segments, and the file Reader the pipeline
// reads through.
#ifndef WEIGHTD_LOADER_CACHE_DEVICE_SET_H_
#define WEIGHTD_LOADER_CACHE_DEVICE_SET_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "loader/cache/gpu_description.h"
#include "loader/cache/loaded_model.h"
#include "loader/common/cancellation.h"
#include "loader/device/staging_pipeline.h"

namespace weightd {

// Placed bytes so far, of the load's total.
using ProgressFn =
    std::function<void(uint64_t bytes_done, uint64_t bytes_total)>;

// A file a GPU arena's file ranges are read from.
struct ArenaFile {
  int fd = -1;
  std::string name;  // for errors
};

struct FilledArena {
  std::unique_ptr<LoadedModel::Owned> owner;  // frees the arena
  ArenaHandleKind handle_kind = ArenaHandleKind::kCudaIpc;
  std::string ipc_handle;  // 64 bytes
};

struct HostSegment {
  std::unique_ptr<LoadedModel::Owned> owner;  // unlinks and unmaps the segment
  std::string name;
  uint8_t* data = nullptr;
};

class DeviceSet {
 public:
  struct Options {
    int fake_gpus = 0;
    absl::Duration fake_gpu_copy_delay = absl::ZeroDuration();
    std::string io_backend = "auto";
    // The staging ring per GPU; defaults are the pipeline's own.
    uint64_t staging_chunk_bytes = StagingOptions{}.chunk_bytes;
    int staging_buffers = StagingOptions{}.num_buffers;
    // "on": file ranges of files whose file system allows it read their
    // large, uncached chunks with O_DIRECT; "auto": the same where the
    // block device measured faster direct (DirectIoProbe); "off": buffered.
    std::string direct_io = "auto";
    // SQEs (pread threads) in flight per pipeline; 0: 64.
    int io_queue_depth = 0;
    // Bytes per read request; 0: per file from its block device
    // (AutoRequestBytes, direct_io.h).
    uint64_t io_request_bytes = 0;
  };
  static absl::StatusOr<std::unique_ptr<DeviceSet>> Create(
      const Options& options);
  virtual ~DeviceSet() = default;

  // Memory figures are read now.
  virtual std::vector<GpuDescription> Gpus() const = 0;
  virtual std::string gpu_status() const = 0;
  virtual std::string io_backend() const = 0;
  virtual std::string io_backend_reason() const = 0;
  // What is in effect and why (DirectIoSummary, direct_io.h).
  virtual std::string direct_io() const { return "off: not supported"; }
  virtual int io_queue_depth() const { return 0; }
  // 0: chosen per file from its block device.
  virtual uint64_t io_request_bytes() const { return 0; }

  // Allocates an arena of `size` bytes on GPU `gpu` and fills it through the
  // staging pipeline in one run: file ranges are read from
  // files[range.file_index] (reads of several files in flight together),
  // generated ranges (bytes that change on the way) are produced chunk by
  // chunk into the ring.
  virtual absl::StatusOr<FilledArena> FillGpuArena(
      int gpu, absl::Span<const ArenaFile> files, uint64_t size,
      const std::vector<CopyRange>& ranges, const CancellationToken* cancel,
      const ProgressFn& progress) = 0;
  // A writable shared-memory segment other processes can map read-only by name.
  virtual absl::StatusOr<HostSegment> CreateHostSegment(uint64_t size) = 0;
};

}  // namespace weightd

#endif  // WEIGHTD_LOADER_CACHE_DEVICE_SET_H_
