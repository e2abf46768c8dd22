// Carrying out a LoadPlan: zero-copy views of the mapped file for host
// storages whose bytes do not change, one shared-memory segment for those that
// do (casts, byte swaps, compressed records), and one arena per GPU filled
// through the staging pipeline. Every read of the mapping goes through
// ReadMapped, casts and byte swaps are split over a persistent thread pool.
#ifndef WEIGHTD_LOADER_CACHE_PLACEMENT_H_
#define WEIGHTD_LOADER_CACHE_PLACEMENT_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "loader/cache/device_set.h"
#include "loader/cache/load_plan.h"
#include "loader/cache/loaded_model.h"
#include "loader/cache/shared_region_reads.h"
#include "loader/common/cancellation.h"
#include "loader/common/thread_pool.h"
#include "loader/format/checkpoint.h"
#include "loader/io/mapped_file.h"

namespace weightd {

// The parsed checkpoint a load places, and the mapping its bytes come from.
// For a model directory, `checkpoint` is every shard's merged (hf_model.h),
// `file` the first shard and `directory` says which shard holds each storage:
// host views are made per shard, and each GPU gets one arena filled from
// every shard in one staging run (reads of several shards in flight at once).
struct LoadSource {
  std::string path;  // canonical, for errors and the model's description
  std::shared_ptr<const MappedFile> file;
  Checkpoint checkpoint;
  std::shared_ptr<const ModelDirectory> directory;  // null: a single file

  size_t ShardOf(size_t storage_index) const {
    return directory ? directory->storage_shard[storage_index] : 0;
  }
  const MappedFile& ShardFile(size_t shard) const {
    return directory ? *directory->shard_files[shard] : *file;
  }
  const std::string& ShardPath(size_t shard) const {
    return directory ? directory->shard_paths[shard] : path;
  }
};

// Places `plan` for `source`. `placement_key` is recorded on the model.
// `cancel` is checked between storages and chunks (CANCELLED, nothing kept);
// `progress` (may be empty) sees placed bytes against plan.bytes_total. On
// any error every segment and arena made so far is freed. For a sharded plan,
// `shared_reads` (may be null) lets the group's ranks read each replicated
// storage bound for a GPU once between them.
absl::StatusOr<std::shared_ptr<LoadedModel>> Place(
    const LoadPlan& plan, const LoadSource& source,
    const std::string& placement_key, DeviceSet& devices, ThreadPool& workers,
    const CancellationToken& cancel, const ProgressFn& progress,
    SharedRegionReads* shared_reads = nullptr);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_CACHE_PLACEMENT_H_
