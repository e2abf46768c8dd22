// Copies byte ranges of a checkpoint into a device arena.
//
// Each range is a file byte range (read through the Reader) or host memory,
// with a destination offset in the arena. File bytes are read in chunks into
// a ring of num_buffers pinned staging buffers of chunk_bytes each (memory
// bounded by num_buffers * chunk_bytes, whatever the checkpoint size); each
// filled buffer's host-to-device copy is queued asynchronously on a stream
// and an event recorded after it; a buffer is reused once its event has
// completed, so reads of later chunks overlap copies of earlier ones.
// Host-addressable arenas (the host device) skip staging: file bytes are
// read straight into the arena, up to the reader's queue depth at once.
//
// The cancellation token is checked between chunks. Any read or copy error,
// a short read, or cancellation stops issuing work, waits for everything in
// flight, and returns the first error (CANCELLED for cancellation). Nothing
// leaks: staging buffers and events belong to the pipeline and are reused by
// the next Run(); Load() frees the arena it allocated when it fails.
#ifndef WEIGHTD_LOADER_DEVICE_STAGING_PIPELINE_H_
#define WEIGHTD_LOADER_DEVICE_STAGING_PIPELINE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "loader/common/mutex.h"
#include "loader/device/device.h"
#include "loader/io/reader.h"

namespace weightd {

class CancellationToken {
 public:
  void Cancel() { cancelled_.store(true, std::memory_order_release); }
  bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }

 private:
  std::atomic<bool> cancelled_{false};
};

// Called on the thread running the pipeline after each chunk lands.
using StagingProgressFn =
    std::function<void(uint64_t bytes_done, uint64_t bytes_total)>;

// The file the file ranges come from.
struct FileSource {
  int fd = -1;
  int direct_fd = -1;  // same file with O_DIRECT, or -1
  uint64_t size = 0;   // file ranges are checked against it
  std::string name;    // for error messages
};

struct CopyRange {
  // File range when host_source is null, else `length` bytes at host_source.
  uint64_t file_offset = 0;
  const void* host_source = nullptr;
  uint64_t length = 0;
  uint64_t arena_offset = 0;

  static CopyRange FromFile(uint64_t file_offset, uint64_t length,
                            uint64_t arena_offset) {
    CopyRange r;
    r.file_offset = file_offset;
    r.length = length;
    r.arena_offset = arena_offset;
    return r;
  }
  static CopyRange FromMemory(const void* src, uint64_t length,
                              uint64_t arena_offset) {
    CopyRange r;
    r.host_source = src;
    r.length = length;
    r.arena_offset = arena_offset;
    return r;
  }
};

struct StagingOptions {
  uint64_t chunk_bytes = 8ull << 20;
  int num_buffers = 4;
  // Read straight into host-addressable arenas instead of staging.
  bool direct_host_reads = true;
};

struct StagingStats {
  uint64_t bytes = 0;
  uint64_t chunks = 0;
  bool staged = false;  // false: read straight into the arena
  int max_reads_in_flight = 0;
  int max_copies_in_flight = 0;
};

class StagingPipeline {
 public:
  // Takes the reader (created by CreateReader(), possibly wrapped for fault
  // injection). Staging buffers are allocated on the first staged Run().
  static absl::StatusOr<std::unique_ptr<StagingPipeline>> Create(
      Device* device, std::unique_ptr<Reader> reader,
      const StagingOptions& options);
  ~StagingPipeline();

  // Copies `ranges` into `arena` (an arena of device()). Runs one at a time
  // (concurrent calls wait). `cancel` and `progress` may be null.
  absl::Status Run(DeviceArena* arena, const FileSource& file,
                   absl::Span<const CopyRange> ranges,
                   const CancellationToken* cancel,
                   const StagingProgressFn& progress,
                   StagingStats* stats = nullptr);

  // Allocates an arena of `arena_bytes` on device(), runs, and returns the
  // arena; on any failure the arena is freed before returning.
  absl::StatusOr<std::unique_ptr<DeviceArena>> Load(
      uint64_t arena_bytes, const FileSource& file,
      absl::Span<const CopyRange> ranges, const CancellationToken* cancel,
      const StagingProgressFn& progress, StagingStats* stats = nullptr);

  Device* device() const { return device_; }
  Reader* reader() const { return reader_.get(); }
  const StagingOptions& options() const { return options_; }
  // Host memory held for staging now (0 until the first staged Run()).
  uint64_t staging_bytes() const;

 private:
  struct Slot;
  StagingPipeline(Device* device, std::unique_ptr<Reader> reader,
                  const StagingOptions& options);
  absl::Status EnsureBuffers() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status RunStaged(DeviceArena* arena, const FileSource& file,
                         absl::Span<const CopyRange> ranges, uint64_t total,
                         const CancellationToken* cancel,
                         const StagingProgressFn& progress, StagingStats* stats)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status RunDirect(DeviceArena* arena, const FileSource& file,
                         absl::Span<const CopyRange> ranges, uint64_t total,
                         const CancellationToken* cancel,
                         const StagingProgressFn& progress, StagingStats* stats)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Device* const device_;
  const StagingOptions options_;
  mutable Mutex mu_;
  const std::unique_ptr<Reader> reader_;  // used only under mu_
  std::vector<std::unique_ptr<Slot>> slots_ ABSL_GUARDED_BY(mu_);
  // Set when the reader failed with reads possibly still in flight: the
  // staging buffers may still be written, so they are never reused.
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace weightd

#endif  // WEIGHTD_LOADER_DEVICE_STAGING_PIPELINE_H_
