// Planning a load, without touching any file or device: which tensors, where
// each storage goes (map_location), in which dtype, and how many bytes each
// memory tier will hold. Pure functions over the request, the checkpoint's
// metadata and the GPUs the daemon has; placement (placement.h) carries the
// plan out.
#ifndef WEIGHTD_LOADER_CACHE_LOAD_PLAN_H_
#define WEIGHTD_LOADER_CACHE_LOAD_PLAN_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "loader/cache/checkpoint_cache.h"
#include "loader/cache/gpu_description.h"
#include "loader/cache/shard.h"
#include "loader/format/checkpoint.h"
#include "loader/format/dtype.h"
#include "loader/format/map_location.h"

namespace weightd {

// What a client asks for (the Load request, before any checking).
struct LoadSpec {
  std::string path;
  std::string format_hint;  // "" or a CheckpointFormatName
  // map_location: one target for all ("cpu", "meta", "cuda", "cuda:N",
  // "cuda:GPU-<uuid>"), or empty to keep saved locations; `remap` maps saved
  // tags to targets, unmapped tags kept.
  std::string target;
  std::map<std::string, std::string> remap;
  std::string cast_dtype;  // "", "bfloat16", "float16", "float32" ("torch."
                           // prefix allowed)
  std::vector<std::string> filter;  // tensor names or dotted prefixes; empty:
                                    // all
  std::string lease_session;
  // Host storages copied into shared memory, never views of the file.
  bool host_copy = false;
  // Tensor parallelism: this rank's slices only (shard.h). world_size 0: the
  // whole checkpoint.
  ShardSpec shard;
};

// A request's placement in canonical form: one GPU has one name (cuda,
// cuda:0, cuda:00 and cuda:GPU-<uuid> are "cuda:0"), one dtype has one name,
// the filter is sorted; so equal placements are one cache entry.
struct Placement {
  MapLocation map;                  // targets are "cpu", "meta" or "cuda:N"
  std::optional<DType> cast;        // floating-point storages cast on load
  std::vector<std::string> filter;  // sorted, unique; empty: every tensor
  bool host_copy = false;  // host storages in shared memory, not file views
  CanonicalShard shard;    // world_size 0: not sharded

  // "saved" | target, then " map{a->b,...}", " as DTYPE", " copy",
  // " only{...}", " tp{R/W rules:HASH}": the cache key's placement part and
  // what clients are shown.
  std::string Key() const;
};

// Checks and canonicalises the request's placement. INVALID_ARGUMENT naming
// `spec.path` for a malformed or unknown device, a GPU the daemon does not
// have, both a target and a remap table, a cast to anything but bfloat16,
// float16 or float32, or a bad shard spec (CanonicalShardSpec).
absl::StatusOr<Placement> CanonicalPlacement(
    const LoadSpec& spec, absl::Span<const GpuDescription> gpus);

// Where one storage goes.
struct StorageTarget {
  enum class Kind { kHost, kGpu, kMeta };
  Kind kind = Kind::kHost;
  int gpu = -1;              // kGpu: the GPU's index
  std::string Name() const;  // "cpu", "cuda:N", "meta"
};

struct PlannedStorage {
  size_t index = 0;  // into Checkpoint::storages
  StorageTarget target;
  DType placed_dtype = DType::kUInt8;
  uint64_t placed_bytes = 0;
  bool changes_bytes = false;  // cast, byte swap, inflated record or a host
                               // copy asked for: no file view
};

// One tensor's slice of a sharded load. A host slice whose bytes do not change
// is a zero-copy view of the file (own_bytes false); every other slice gets
// its own contiguous bytes (row-major) in the host segment or the GPU arena.
struct PlannedSlice {
  size_t tensor = 0;  // into Checkpoint::tensors
  TensorSlice slice;  // the part, as a view of the tensor's storage
  StorageTarget target;
  DType placed_dtype = DType::kUInt8;
  uint64_t placed_bytes = 0;  // elements * placed element size
  uint64_t source_bytes = 0;  // elements * saved element size
  bool own_bytes = false;
  bool changes_bytes = false;  // cast, byte swap or inflated record
  // own_bytes, unchanged and one run of the storage: a plain file range.
  bool file_range = false;
};

struct LoadPlan {
  std::vector<size_t> tensors;           // selected, in checkpoint order
  std::vector<PlannedStorage> storages;  // those whole tensors use, by index
  std::vector<PlannedSlice> slices;      // sliced tensors, by tensor index
  TierBytes expected;        // bytes each tier holds once placed (aligned)
  uint64_t bytes_total = 0;  // placed bytes of storages with bytes (progress)
  // The shard group's size (0: not sharded): how many ranks read the same
  // replicated regions.
  int shard_world_size = 0;
  int shard_rank = 0;  // which of them this load is

  // The planned storage for checkpoint storage `index`, or null when no
  // selected tensor uses it.
  const PlannedStorage* ForStorage(size_t index) const;
  // The slice of checkpoint tensor `index`, or null when it is whole.
  const PlannedSlice* ForTensor(size_t index) const;
};

// Alignment of storages inside host segments and GPU arenas.
inline constexpr uint64_t kHostStorageAlignment = 64;
inline constexpr uint64_t kGpuStorageAlignment = 256;
uint64_t AlignUp(uint64_t value, uint64_t alignment);

// Plans `placement` for `checkpoint` (the file `file`, for errors). NOT_FOUND
// when a filter matches no tensor; INVALID_ARGUMENT when a saved location
// cannot be placed (an unknown device tag with no map_location for it, a GPU
// index the daemon lacks), or a shard rule that cannot split a tensor it
// matches (SliceFor).
absl::StatusOr<LoadPlan> PlanLoad(const Placement& placement,
                                  const Checkpoint& checkpoint,
                                  absl::Span<const GpuDescription> gpus,
                                  absl::string_view file);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_CACHE_LOAD_PLAN_H_
