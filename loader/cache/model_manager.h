// The loader's front door: path policy (model roots), the cache, and for one
// load: resolve the path, key it (file identity + canonical placement), then
// get it from the cache or plan (load_plan.h) and place (placement.h) it.
// The gRPC service is a thin layer over this.
#ifndef WEIGHTD_LOADER_CACHE_MODEL_MANAGER_H_
#define WEIGHTD_LOADER_CACHE_MODEL_MANAGER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "loader/cache/checkpoint_cache.h"
#include "loader/cache/device_set.h"
#include "loader/cache/gpu_description.h"
#include "loader/cache/load_plan.h"
#include "loader/cache/loaded_model.h"
#include "loader/cache/shared_region_reads.h"
#include "loader/common/cancellation.h"
#include "loader/common/mutex.h"
#include "loader/common/thread_pool.h"
#include "loader/format/hf_model.h"
#include "loader/io/file_watcher.h"

namespace weightd {

struct ManagerInfo {
  std::vector<GpuDescription> gpus;
  std::string gpu_status;  // why there are no real GPUs, when there are none
  std::string io_backend;
  std::string io_backend_reason;
  std::string direct_io;
  int io_queue_depth = 0;
  uint64_t io_request_bytes = 0;
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
    // Loads that read files at once (threads of the load pool), and requests
    // that may wait for one of them before new ones are refused.
    int max_concurrent_loads = 4;
    size_t max_queued_loads = 256;
    // Models the cache holds at most (each costs a tensor table; zero-copy
    // ones no tier bytes, so budgets alone do not bound them).
    size_t max_models = 1024;
    // Threads for casts, byte swaps and ReadTensors byte production; 0: the
    // machine's cores, at most 8.
    int worker_threads = 0;
    // Host bytes held by tensor-parallel ranks' shared reads of replicated
    // tensors (read once, taken by each rank); never more than the host
    // budget when there is one.
    uint64_t shared_read_budget_bytes = uint64_t{1} << 30;
    // How long a shared block waits for ranks that have not taken it.
    absl::Duration shared_read_linger = absl::Seconds(30);
  };

  struct LoadResult {
    std::string model_id;
    std::shared_ptr<const LoadedModel> model;
    bool cache_hit = false;
  };
  using LoadDone = std::function<void(absl::StatusOr<LoadResult>)>;

  // Makes the watcher told of each mapped file (the inotify one by default):
  // a file that changes on disk makes its models stale at once.
  using WatcherFactory =
      std::function<std::unique_ptr<FileWatcher>(FileWatcher::ChangeCallback)>;

  static absl::StatusOr<std::unique_ptr<ModelManager>> Create(
      const Options& options, std::unique_ptr<DeviceSet> devices,
      const WatcherFactory& make_watcher = nullptr);
  // Shutdown(), then waits for running loads.
  ~ModelManager();

  // NOT_FOUND (no such file), PERMISSION_DENIED (outside the model roots),
  // INVALID_ARGUMENT (bad checkpoint or spec), RESOURCE_EXHAUSTED (budget),
  // DATA_LOSS (the file changed under its mapping), each naming the file.
  // `cancel` (may be null) is the request's: see CheckpointCache::GetOrLoad
  // (a load nobody waits for any more stops and frees what it placed;
  // CANCELLED). Runs on the calling thread.
  absl::StatusOr<LoadResult> Load(const LoadSpec& spec,
                                  const ProgressFn& progress,
                                  const CancellationToken* cancel = nullptr);

  // Load without blocking the caller: a cache hit is answered at once on the
  // calling thread, anything else runs on the load pool (bounded threads, a
  // bounded FIFO queue) and `done` is called there. `done` is called exactly
  // once: RESOURCE_EXHAUSTED when the queue is full, UNAVAILABLE once shut
  // down (queued loads included). `cancel` must outlive the call of `done`.
  void LoadAsync(LoadSpec spec, ProgressFn progress,
                 const CancellationToken* cancel, LoadDone done);

  // Refuses new loads and answers queued ones UNAVAILABLE; running loads
  // finish (their requests' tokens stop them). Idempotent.
  void Shutdown();

  // The pool for byte production off the RPC threads (ReadTensors).
  ThreadPool& workers() { return *workers_; }

  absl::StatusOr<CacheEntryInfo> Describe(const std::string& model_id) const;
  std::vector<CacheEntryInfo> List() const;
  CacheStats Stats() const;
  uint64_t BytesRead() const { return bytes_read_.load(); }
  SharedRegionReads::Stats SharedReadStats() const {
    return shared_reads_->stats();
  }
  ManagerInfo Info() const;
  // The budget of every tier that has one ("host", each GPU's UUID).
  TierBytes Budgets() const;
  int queued_loads() const;

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
  class LoadJob;
  class MappedFiles;
  struct DirectoryFile;
  struct DirectoryFiles;
  struct Request {
    std::string path;  // resolved
    Placement placement;
    CacheKey key;
    std::optional<HfLayout> layout;  // set when `path` is a model directory
  };

  ModelManager() = default;
  // Resolve and key: everything a cache lookup needs, without opening the
  // file.
  absl::StatusOr<Request> PrepareRequest(const LoadSpec& spec) const;
  absl::StatusOr<LoadResult> CheckHint(const LoadSpec& spec,
                                       absl::StatusOr<LoadResult> result);
  void OnFileChanged(const FileWatcher::Change& change);

  // A model directory's files and their identities (the cache key's identity
  // part): the index (read and parsed here; the load pool's), or, for a hit
  // on the RPC thread without reading files, the shard list remembered from
  // the last read of the same index (nullopt when there is none: a miss).
  absl::StatusOr<DirectoryFiles> ReadDirectoryFiles(
      const Request& request) const;
  absl::StatusOr<std::optional<DirectoryFiles>> KnownDirectoryFiles(
      const Request& request) const;
  // The directory's file `name`, its path resolved inside the roots (no
  // identity yet).
  absl::StatusOr<DirectoryFile> ResolveDirectoryFile(
      const Request& request, const std::string& name) const;
  // Resolves (inside the roots) and stats every shard and config file.
  absl::Status StatDirectoryFiles(const Request& request,
                                  DirectoryFiles& files) const;

  Options options_;
  std::vector<std::string> canonical_roots_;
  std::vector<GpuDescription> gpus_;  // fixed for the daemon's life
  std::unique_ptr<DeviceSet> devices_;
  std::unique_ptr<FileWatcher> watcher_;  // outlives the cache's mappings
  // Changes are applied to the cache only while it exists.
  Mutex changes_mu_;
  bool accepting_changes_ ABSL_GUARDED_BY(changes_mu_) = true;
  std::unique_ptr<CheckpointCache> cache_;
  std::unique_ptr<MappedFiles> mapped_files_;
  std::unique_ptr<SharedRegionReads> shared_reads_;
  std::unique_ptr<ThreadPool> workers_;
  std::unique_ptr<ThreadPool> load_pool_;  // destroyed first: its loads use
                                           // everything above
  std::atomic<uint64_t> bytes_read_{0};
  // Index path -> (its identity key, its shard names), so a cache hit on a
  // sharded directory needs only stats. Bounded: cleared when full.
  mutable Mutex index_mu_;
  mutable absl::flat_hash_map<std::string,
                              std::pair<std::string, std::vector<std::string>>>
      index_shards_ ABSL_GUARDED_BY(index_mu_);
};

}  // namespace weightd

#endif  // WEIGHTD_LOADER_CACHE_MODEL_MANAGER_H_
