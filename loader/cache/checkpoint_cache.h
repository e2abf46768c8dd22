// The checkpoint cache: one entry per (file identity, placement), single-flight
// loads, lease counts per session, byte budgets per memory tier and LRU
// eviction of unleased entries. The cache knows nothing of formats or devices:
// it holds CacheValues and their tier usage.
#ifndef WEIGHTD_LOADER_CACHE_CHECKPOINT_CACHE_H_
#define WEIGHTD_LOADER_CACHE_CHECKPOINT_CACHE_H_

#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "loader/common/cancellation.h"
#include "loader/common/mutex.h"

namespace weightd {

// Bytes per memory tier: "host" (shared-memory copies) or a GPU's UUID.
// Zero-copy views of mapped files cost no tier bytes: the page cache owns them.
using TierBytes = std::map<std::string, uint64_t>;

class CacheValue {
 public:
  virtual ~CacheValue() = default;
  virtual TierBytes ResidentBytes() const = 0;
};

struct CacheKey {
  std::string path;  // canonical (realpath)
  std::string
      identity;  // device, inode, size, mtime: a changed file is a new key
  std::string
      placement;  // canonical placement: target, remap, cast, tensor filter

  bool operator==(const CacheKey& other) const {
    return path == other.path && identity == other.identity &&
           placement == other.placement;
  }
  template <typename H>
  friend H AbslHashValue(H h, const CacheKey& key) {
    return H::combine(std::move(h), key.path, key.identity, key.placement);
  }
};

struct CacheStats {
  uint64_t loads = 0;  // loads that ran (read a file)
  uint64_t hits =
      0;  // requests answered by a ready entry or by joining a load in flight
  uint64_t load_failures = 0;
  uint64_t evictions = 0;
  int models = 0;
  int active_leases = 0;
  int loads_in_flight = 0;
  int waiting_requests = 0;  // requests waiting for a load in flight
  TierBytes used;            // resident plus reserved for loads in flight
};

struct CacheEntryInfo {
  std::string model_id;
  CacheKey key;
  TierBytes resident;
  int lease_count = 0;
  bool stale =
      false;  // the file changed on disk; kept only for its lease holders
  std::shared_ptr<const CacheValue> value;
};

class CheckpointCache {
 public:
  struct Options {
    // Per tier; a tier absent or 0 is unlimited.
    TierBytes budgets;
    // Entries (ready and loading) at most; a new one evicts the least
    // recently used unleased entry, or is RESOURCE_EXHAUSTED when all are
    // leased or loading. 0: unbounded.
    size_t max_entries = 0;
  };
  // `abandoned` is cancelled once every request for this load has gone away
  // (each one's own token cancelled): the load should stop and free what it
  // made. It stays uncancelled while any request still waits for the result.
  using LoadFn =
      std::function<absl::StatusOr<std::shared_ptr<const CacheValue>>(
          const CancellationToken& abandoned)>;
  // Runs on a miss, before `load`: the bytes per tier the load will hold (it
  // may parse metadata to find out). Runs inside the single flight, so a hit
  // never pays for it.
  using PlanFn = std::function<absl::StatusOr<TierBytes>()>;

  struct Result {
    std::string model_id;
    std::shared_ptr<const CacheValue> value;
    bool hit = false;
  };

  explicit CheckpointCache(Options options);
  ~CheckpointCache();

  // The entry for `key`, loaded by `load` if absent. Concurrent callers for one
  // key share one load (single flight) and its result or error. `expected` is
  // reserved from the budgets before `load` runs, evicting least-recently-used
  // unleased entries; RESOURCE_EXHAUSTED when it cannot fit. With a non-empty
  // `lease_session` the entry is leased on it before return.
  //
  // `cancel` (may be null) is the request's own: once it is cancelled, a
  // request waiting for another's load returns CANCELLED at once, and a load
  // nobody waits for any more is abandoned (its LoadFn's token). A request that
  // joined a load abandoned by others starts a fresh one.
  absl::StatusOr<Result> GetOrLoad(const CacheKey& key, const PlanFn& plan,
                                   const LoadFn& load,
                                   const std::string& lease_session = "",
                                   const CancellationToken* cancel = nullptr);
  absl::StatusOr<Result> GetOrLoad(const CacheKey& key,
                                   const TierBytes& expected,
                                   const LoadFn& load,
                                   const std::string& lease_session = "",
                                   const CancellationToken* cancel = nullptr) {
    return GetOrLoad(
        key, [expected]() -> absl::StatusOr<TierBytes> { return expected; },
        load, lease_session, cancel);
  }

  // The ready entry for `key`, leased on `lease_session` (if not empty) as
  // GetOrLoad would; nullopt when there is none (absent, or still loading).
  // Never waits and never loads.
  absl::StatusOr<std::optional<Result>> Lookup(
      const CacheKey& key, const std::string& lease_session = "");

  // The file at `path` with identity `identity` changed on disk: its entries
  // are never handed to a new request again (kept, marked stale, only while
  // leased). Returns how many entries were marked.
  int MarkStale(const std::string& path, const std::string& identity);

  absl::StatusOr<CacheEntryInfo> Describe(const std::string& model_id) const;
  std::vector<CacheEntryInfo> List() const;
  CacheStats Stats() const;

  // Leases belong to open sessions (a client's Lease stream). A load or an
  // Acquire naming a session that is not open is FAILED_PRECONDITION; a load
  // that finishes after its session closed (the client died mid-load) takes
  // no lease, so nothing stays pinned for a client that is gone.
  void OpenSession(const std::string& session);
  // Leases are counted per (session, model): acquiring twice needs two
  // releases.
  absl::Status Acquire(const std::string& model_id, const std::string& session);
  absl::Status Release(const std::string& model_id, const std::string& session);
  // Drops every lease a session holds and closes it (the client closed its
  // stream, disconnected or died).
  int ReleaseSession(const std::string& session);

  // Removes an entry. FAILED_PRECONDITION while leased unless `force` (then its
  // leases are dropped; memory is freed once the last in-flight user lets go).
  // Returns the tier bytes the entry held.
  absl::StatusOr<uint64_t> Unload(const std::string& model_id, bool force);

 private:
  struct Entry;
  using EntryPtr = std::shared_ptr<Entry>;

  absl::Status ReserveLocked(const TierBytes& need, const std::string& for_path)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UnreserveLocked(const TierBytes& bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Makes room for one more entry under max_entries.
  absl::Status ReserveEntryLocked(const std::string& for_path)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A request answered by a ready entry.
  Result HitLocked(const EntryPtr& entry, const std::string& lease_session)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends a load that failed: the entry leaves the index and its waiters get
  // `error`.
  absl::Status FailLocked(const EntryPtr& entry, absl::Status error)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EraseLocked(const EntryPtr& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void TouchLocked(const EntryPtr& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AddLeaseLocked(const EntryPtr& entry, const std::string& session)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Leases the entry on `session` unless it is empty or no longer open: a
  // session can close while its request waits or loads (the client died), and
  // then nothing must stay pinned for it.
  void LeaseIfOpenLocked(const EntryPtr& entry, const std::string& session)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CheckSessionOpenLocked(const std::string& session) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether every request for a loading entry has gone away (sticky).
  bool AbandonedLocked(Entry& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Entries of `key.path` with another identity than `key`'s: the file
  // changed since they were loaded.
  void MarkStaleLocked(const CacheKey& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Stale: out of the key index (no request gets it), dropped unless leased.
  void RetireLocked(const EntryPtr& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<EntryPtr> FindReadyLocked(const std::string& model_id) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  CacheEntryInfo InfoLocked(const Entry& entry) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::string NewModelIdLocked(const CacheKey& key)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  mutable Mutex mu_;
  CondVar loaded_;  // signalled when any entry leaves the loading state
  absl::flat_hash_map<CacheKey, EntryPtr> by_key_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, EntryPtr> by_id_ ABSL_GUARDED_BY(mu_);
  std::list<EntryPtr> lru_
      ABSL_GUARDED_BY(mu_);  // front: most recently used ready entry
  TierBytes used_ ABSL_GUARDED_BY(mu_);
  CacheStats counters_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_set<std::string> open_sessions_ ABSL_GUARDED_BY(mu_);
};

}  // namespace weightd

#endif  // WEIGHTD_LOADER_CACHE_CHECKPOINT_CACHE_H_
