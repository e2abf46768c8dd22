// The loader's front door: path policy (model roots), the cache, format
// readers, placement onto host and GPU devices. The gRPC service is a thin
// layer over this.
#ifndef WEIGHTD_LOADER_CACHE_MODEL_MANAGER_H_
#define WEIGHTD_LOADER_CACHE_MODEL_MANAGER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "loader/cache/checkpoint_cache.h"
#include "loader/cache/loaded_model.h"
#include "loader/common/cancellation.h"

namespace weightd {

class DeviceSet;

struct LoadSpec {
  std::string path;
  std::string format_hint;  // "" or a CheckpointFormatName
  // map_location: one target for all ("cpu", "meta", "cuda:N",
  // "cuda:GPU-<uuid>"), or empty to keep saved locations; `remap` maps saved
  // tags to targets, unmapped tags kept.
  std::string target;
  std::map<std::string, std::string> remap;
  std::string cast_dtype;  // "", "bfloat16", "float16", "float32"
  std::vector<std::string>
      filter;  // tensor names or dotted prefixes; empty = all
  std::string lease_session;
};

using ProgressFn =
    std::function<void(uint64_t bytes_done, uint64_t bytes_total)>;

struct GpuDescription {
  int index = 0;
  std::string uuid;
  std::string name;
  uint64_t total_bytes = 0;
  uint64_t free_bytes = 0;
  bool fake = false;
};

struct ManagerInfo {
  std::vector<GpuDescription> gpus;
  std::string gpu_status;  // why there are no real GPUs, when there are none
  std::string io_backend;
  std::string io_backend_reason;
  std::vector<std::string> model_roots;
  uint64_t host_budget_bytes = 0;
  uint64_t gpu_budget_bytes =
      0;  // per GPU, as configured (0: 90% of each GPU's memory)
};

class ModelManager {
 public:
  struct Options {
    std::vector<std::string> model_roots;
    uint64_t host_budget_bytes = 0;  // 0: unlimited
    uint64_t gpu_budget_bytes = 0;   // per GPU; 0: 90% of its memory
    int fake_gpus = 0;
    absl::Duration fake_gpu_copy_delay = absl::ZeroDuration();
    std::string io_backend = "auto";
    uint64_t staging_chunk_bytes = 8ull << 20;
    int staging_buffers = 4;
    int max_concurrent_loads = 4;
  };

  struct LoadResult {
    std::string model_id;
    std::shared_ptr<const LoadedModel> model;
    bool cache_hit = false;
  };

  static absl::StatusOr<std::unique_ptr<ModelManager>> Create(
      const Options& options);
  ~ModelManager();

  // NOT_FOUND (no such file), PERMISSION_DENIED (outside the model roots),
  // INVALID_ARGUMENT (bad checkpoint or spec), RESOURCE_EXHAUSTED (budget),
  // each naming the file. `cancel` (may be null) is the request's: see
  // CheckpointCache::GetOrLoad (a load nobody waits for any more stops and
  // frees what it placed; CANCELLED).
  absl::StatusOr<LoadResult> Load(const LoadSpec& spec,
                                  const ProgressFn& progress,
                                  const CancellationToken* cancel = nullptr);

  absl::StatusOr<CacheEntryInfo> Describe(const std::string& model_id) const;
  std::vector<CacheEntryInfo> List() const;
  CacheStats Stats() const;
  uint64_t BytesRead() const { return bytes_read_.load(); }
  ManagerInfo Info() const;
  // The budget of every tier that has one ("host", each GPU's UUID).
  TierBytes Budgets() const;

  // Lease sessions: see CheckpointCache::OpenSession.
  void OpenSession(const std::string& session);
  absl::Status Acquire(const std::string& model_id, const std::string& session);
  absl::Status Release(const std::string& model_id, const std::string& session);
  int ReleaseSession(const std::string& session);
  absl::StatusOr<uint64_t> Unload(const std::string& model_id, bool force);

  // Resolves `path` inside the model roots (realpath); PERMISSION_DENIED
  // outside them.
  absl::StatusOr<std::string> ResolvePath(const std::string& path) const;

 private:
  ModelManager() = default;
  struct Impl;

  Options options_;
  std::unique_ptr<Impl> impl_;
  std::vector<std::string> canonical_roots_;
  std::unique_ptr<DeviceSet> devices_;
  std::unique_ptr<CheckpointCache> cache_;
  std::atomic<uint64_t> bytes_read_{0};
};

}  // namespace weightd

#endif  // WEIGHTD_LOADER_CACHE_MODEL_MANAGER_H_
