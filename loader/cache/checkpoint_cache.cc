#include "loader/cache/checkpoint_cache.h"

#include <sys/random.h>
#include <unistd.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace weightd {

struct CheckpointCache::Entry {
  enum class State { kLoading, kReady, kFailed };
  std::string model_id;
  CacheKey key;
  State state = State::kLoading;
  absl::Status error;
  TierBytes reserved;  // while loading
  TierBytes resident;  // once ready
  std::shared_ptr<const CacheValue> value;
  std::map<std::string, int> leases;  // session -> count
  int lease_count = 0;
  bool stale = false;
  bool in_index = true;
  std::list<EntryPtr>::iterator lru_position;
  bool in_lru = false;
  // Who still wants a loading entry: the loading request's token and those of
  // the requests waiting for it (null: a request that cannot be cancelled).
  const CancellationToken* loader_cancel = nullptr;
  std::vector<const CancellationToken*> waiters;
  bool abandoned = false;
};

CheckpointCache::CheckpointCache(Options options)
    : options_(std::move(options)) {}

CheckpointCache::~CheckpointCache() = default;

std::string CheckpointCache::NewModelIdLocked(const CacheKey& key) {
  // Short, readable and unique across restarts: a random prefix drawn once per
  // process (an id a client saved before a restart names no model afterwards,
  // rather than another one), a counter, and the file's base name.
  static const std::string* const kInstance = [] {
    uint32_t random = 0;
    if (getrandom(&random, sizeof(random), 0) != sizeof(random)) {
      // No entropy source: the clock still differs between restarts.
      random = static_cast<uint32_t>(absl::ToUnixNanos(absl::Now()) ^ getpid());
    }
    return new std::string(absl::StrFormat("%08x", random));
  }();
  std::string base = key.path.substr(key.path.find_last_of('/') + 1);
  return absl::StrFormat("m%s.%d-%s", *kInstance, next_id_++, base);
}

absl::Status CheckpointCache::ReserveLocked(const TierBytes& need,
                                            const std::string& for_path) {
  for (const auto& [tier, bytes] : need) {
    auto budget_it = options_.budgets.find(tier);
    if (budget_it == options_.budgets.end() || budget_it->second == 0 ||
        bytes == 0)
      continue;
    const uint64_t budget = budget_it->second;
    if (bytes > budget) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "%s: needs %d bytes on %s, more than its whole budget of %d bytes",
          for_path, bytes, tier, budget));
    }
    // Evict least recently used unleased entries holding bytes in this tier
    // until it fits.
    auto it = lru_.end();
    while (used_[tier] + bytes > budget && it != lru_.begin()) {
      --it;
      EntryPtr candidate = *it;
      if (candidate->lease_count > 0) continue;
      auto held = candidate->resident.find(tier);
      if (held == candidate->resident.end() || held->second == 0) continue;
      it = lru_.erase(it);
      candidate->in_lru = false;
      EraseLocked(candidate);
      ++counters_.evictions;
    }
    if (used_[tier] + bytes > budget) {
      return absl::ResourceExhaustedError(
          absl::StrFormat("%s: needs %d bytes on %s; budget %d bytes, %d in "
                          "use by leased or loading models",
                          for_path, bytes, tier, budget, used_[tier]));
    }
  }
  for (const auto& [tier, bytes] : need) used_[tier] += bytes;
  return absl::OkStatus();
}

void CheckpointCache::UnreserveLocked(const TierBytes& bytes) {
  for (const auto& [tier, count] : bytes) used_[tier] -= count;
}

absl::Status CheckpointCache::ReserveEntryLocked(const std::string& for_path) {
  if (options_.max_entries == 0 || by_key_.size() < options_.max_entries)
    return absl::OkStatus();
  for (auto it = lru_.end(); it != lru_.begin();) {
    --it;
    EntryPtr candidate = *it;
    if (candidate->lease_count > 0) continue;
    EraseLocked(candidate);
    ++counters_.evictions;
    return absl::OkStatus();
  }
  return absl::ResourceExhaustedError(absl::StrFormat(
      "%s: the cache holds %d models, its bound, and every one is leased or "
      "loading; release or unload some (or raise --max_models)",
      for_path, by_key_.size()));
}

CheckpointCache::Result CheckpointCache::HitLocked(
    const EntryPtr& entry, const std::string& lease_session) {
  ++counters_.hits;
  TouchLocked(entry);
  LeaseIfOpenLocked(entry, lease_session);
  return Result{entry->model_id, entry->value, true};
}

void CheckpointCache::EraseLocked(const EntryPtr& entry) {
  if (!entry->in_index) return;
  entry->in_index = false;
  auto key_it = by_key_.find(entry->key);
  if (key_it != by_key_.end() && key_it->second == entry) by_key_.erase(key_it);
  by_id_.erase(entry->model_id);
  if (entry->in_lru) {
    lru_.erase(entry->lru_position);
    entry->in_lru = false;
  }
  counters_.active_leases -= entry->lease_count;
  entry->leases.clear();
  entry->lease_count = 0;
  UnreserveLocked(entry->state == Entry::State::kLoading ? entry->reserved
                                                         : entry->resident);
}

void CheckpointCache::AddLeaseLocked(const EntryPtr& entry,
                                     const std::string& session) {
  ++entry->leases[session];
  ++entry->lease_count;
  ++counters_.active_leases;
}

void CheckpointCache::LeaseIfOpenLocked(const EntryPtr& entry,
                                        const std::string& session) {
  if (!session.empty() && open_sessions_.contains(session)) {
    AddLeaseLocked(entry, session);
  }
}

absl::Status CheckpointCache::CheckSessionOpenLocked(
    const std::string& session) const {
  if (open_sessions_.contains(session)) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "lease session \"", session,
      "\" is not open (its Lease stream ended, or it never existed)"));
}

bool CheckpointCache::AbandonedLocked(Entry& entry) {
  if (entry.abandoned) return true;
  if (entry.state != Entry::State::kLoading) return false;
  auto gone = [](const CancellationToken* token) {
    return token != nullptr && token->cancelled();
  };
  if (!gone(entry.loader_cancel)) return false;
  for (const CancellationToken* waiter : entry.waiters) {
    if (!gone(waiter)) return false;
  }
  entry.abandoned = true;
  return true;
}

void CheckpointCache::OpenSession(const std::string& session) {
  MutexLock lock(&mu_);
  open_sessions_.insert(session);
}

void CheckpointCache::TouchLocked(const EntryPtr& entry) {
  if (entry->in_lru) lru_.erase(entry->lru_position);
  lru_.push_front(entry);
  entry->lru_position = lru_.begin();
  entry->in_lru = true;
}

void CheckpointCache::RetireLocked(const EntryPtr& entry) {
  entry->stale = true;
  if (entry->lease_count == 0) {
    EraseLocked(entry);
    ++counters_.evictions;
    return;
  }
  auto it = by_key_.find(entry->key);
  if (it != by_key_.end() && it->second == entry) by_key_.erase(it);
}

void CheckpointCache::MarkStaleLocked(const CacheKey& key) {
  std::vector<EntryPtr> changed;
  for (const auto& [other_key, entry] : by_key_) {
    if (other_key.path == key.path && other_key.identity != key.identity &&
        entry->state == Entry::State::kReady) {
      changed.push_back(entry);
    }
  }
  for (const EntryPtr& entry : changed) RetireLocked(entry);
}

int CheckpointCache::MarkStale(const std::string& path,
                               const std::string& identity) {
  MutexLock lock(&mu_);
  std::vector<EntryPtr> changed;
  for (const auto& [key, entry] : by_key_) {
    if (key.path == path && key.identity == identity &&
        entry->state == Entry::State::kReady) {
      changed.push_back(entry);
    }
  }
  for (const EntryPtr& entry : changed) RetireLocked(entry);
  return static_cast<int>(changed.size());
}

absl::Status CheckpointCache::FailLocked(const EntryPtr& entry,
                                         absl::Status error) {
  ++counters_.load_failures;
  --counters_.loads_in_flight;
  EraseLocked(entry);
  entry->state = Entry::State::kFailed;
  entry->error = error;
  loaded_.SignalAll();
  return error;
}

absl::StatusOr<CheckpointCache::Result> CheckpointCache::GetOrLoad(
    const CacheKey& key, const PlanFn& plan, const LoadFn& load,
    const std::string& lease_session, const CancellationToken* cancel) {
  EntryPtr entry;
  {
    MutexLock lock(&mu_);
    if (!lease_session.empty()) {
      absl::Status open = CheckSessionOpenLocked(lease_session);
      if (!open.ok()) return open;
    }
    MarkStaleLocked(key);
    // Loops only when an entry it waited for was unloaded before this request
    // woke up.
    for (auto it = by_key_.find(key); it != by_key_.end();
         it = by_key_.find(key)) {
      entry = it->second;
      // Join a load in flight, or take the ready entry. A cancellable request
      // wakes up now and then to see whether it was cancelled.
      if (entry->state == Entry::State::kLoading) {
        entry->waiters.push_back(cancel);
        ++counters_.waiting_requests;
        while (entry->state == Entry::State::kLoading) {
          if (cancel == nullptr) {
            loaded_.Wait(&mu_);
            continue;
          }
          loaded_.WaitWithTimeout(&mu_, absl::Milliseconds(20));
          if (cancel->cancelled()) break;
        }
        entry->waiters.erase(
            std::find(entry->waiters.begin(), entry->waiters.end(), cancel));
        --counters_.waiting_requests;
        if (entry->state == Entry::State::kLoading) {
          return absl::CancelledError(
              absl::StrCat("request for ", key.path,
                           " cancelled while waiting for its load"));
        }
      }
      if (entry->state == Entry::State::kFailed) {
        // Abandoned by everyone else while this request still wants it.
        if (entry->abandoned && !(cancel != nullptr && cancel->cancelled()))
          continue;
        ++counters_.hits;
        return entry->error;
      }
      if (!entry->in_index) continue;
      return HitLocked(entry, lease_session);
    }
    absl::Status room = ReserveEntryLocked(key.path);
    if (!room.ok()) return room;
    entry = std::make_shared<Entry>();
    entry->loader_cancel = cancel;
    entry->key = key;
    entry->model_id = NewModelIdLocked(key);
    by_key_[key] = entry;
    by_id_[entry->model_id] = entry;
    ++counters_.loads;
    ++counters_.loads_in_flight;
  }

  // Plan and load run without the lock; joiners wait on the entry's state.
  absl::StatusOr<TierBytes> expected = plan();
  {
    MutexLock lock(&mu_);
    if (!expected.ok()) return FailLocked(entry, expected.status());
    absl::Status reserved = ReserveLocked(*expected, key.path);
    if (!reserved.ok()) return FailLocked(entry, reserved);
    entry->reserved = *expected;
  }
  // Polled by the load between chunks: a short critical section.
  CancellationToken abandoned([this, raw = entry.get()] {
    MutexLock lock(&mu_);
    return AbandonedLocked(*raw);
  });
  absl::StatusOr<std::shared_ptr<const CacheValue>> loaded = load(abandoned);

  MutexLock lock(&mu_);
  if (!loaded.ok()) return FailLocked(entry, loaded.status());
  entry->value = *std::move(loaded);
  UnreserveLocked(entry->reserved);
  entry->resident = entry->value->ResidentBytes();
  for (const auto& [tier, bytes] : entry->resident) used_[tier] += bytes;
  entry->state = Entry::State::kReady;
  --counters_.loads_in_flight;
  loaded_.SignalAll();
  TouchLocked(entry);
  LeaseIfOpenLocked(entry, lease_session);
  return Result{entry->model_id, entry->value, false};
}

absl::StatusOr<std::optional<CheckpointCache::Result>> CheckpointCache::Lookup(
    const CacheKey& key, const std::string& lease_session) {
  MutexLock lock(&mu_);
  if (!lease_session.empty()) {
    absl::Status open = CheckSessionOpenLocked(lease_session);
    if (!open.ok()) return open;
  }
  MarkStaleLocked(key);
  auto it = by_key_.find(key);
  if (it == by_key_.end() || it->second->state != Entry::State::kReady)
    return std::nullopt;
  return HitLocked(it->second, lease_session);
}

absl::StatusOr<CheckpointCache::EntryPtr> CheckpointCache::FindReadyLocked(
    const std::string& model_id) const {
  auto it = by_id_.find(model_id);
  if (it == by_id_.end() || it->second->state != Entry::State::kReady) {
    return absl::NotFoundError(
        absl::StrCat("no model \"", model_id, "\" in the cache"));
  }
  return it->second;
}

CacheEntryInfo CheckpointCache::InfoLocked(const Entry& entry) const {
  return CacheEntryInfo{entry.model_id,    entry.key,   entry.resident,
                        entry.lease_count, entry.stale, entry.value};
}

absl::StatusOr<CacheEntryInfo> CheckpointCache::Describe(
    const std::string& model_id) const {
  MutexLock lock(&mu_);
  auto entry = FindReadyLocked(model_id);
  if (!entry.ok()) return entry.status();
  return InfoLocked(**entry);
}

std::vector<CacheEntryInfo> CheckpointCache::List() const {
  MutexLock lock(&mu_);
  std::vector<CacheEntryInfo> out;
  for (const EntryPtr& entry : lru_) out.push_back(InfoLocked(*entry));
  return out;
}

CacheStats CheckpointCache::Stats() const {
  MutexLock lock(&mu_);
  CacheStats stats = counters_;
  stats.models = static_cast<int>(lru_.size());
  stats.used = used_;
  return stats;
}

absl::Status CheckpointCache::Acquire(const std::string& model_id,
                                      const std::string& session) {
  MutexLock lock(&mu_);
  absl::Status open = CheckSessionOpenLocked(session);
  if (!open.ok()) return open;
  auto entry = FindReadyLocked(model_id);
  if (!entry.ok()) return entry.status();
  AddLeaseLocked(*entry, session);
  TouchLocked(*entry);
  return absl::OkStatus();
}

absl::Status CheckpointCache::Release(const std::string& model_id,
                                      const std::string& session) {
  MutexLock lock(&mu_);
  auto it = by_id_.find(model_id);
  if (it == by_id_.end() || it->second->leases.count(session) == 0) {
    return absl::NotFoundError(
        absl::StrCat("session holds no lease on model \"", model_id, "\""));
  }
  EntryPtr entry = it->second;
  if (--entry->leases[session] == 0) entry->leases.erase(session);
  --entry->lease_count;
  --counters_.active_leases;
  if (entry->stale && entry->lease_count == 0) {
    EraseLocked(entry);
    ++counters_.evictions;
  }
  return absl::OkStatus();
}

int CheckpointCache::ReleaseSession(const std::string& session) {
  MutexLock lock(&mu_);
  open_sessions_.erase(session);
  int released = 0;
  std::vector<EntryPtr> stale_unleased;
  for (const auto& [id, entry] : by_id_) {
    auto it = entry->leases.find(session);
    if (it == entry->leases.end()) continue;
    released += it->second;
    entry->lease_count -= it->second;
    counters_.active_leases -= it->second;
    entry->leases.erase(it);
    if (entry->stale && entry->lease_count == 0)
      stale_unleased.push_back(entry);
  }
  for (const EntryPtr& entry : stale_unleased) {
    EraseLocked(entry);
    ++counters_.evictions;
  }
  return released;
}

absl::StatusOr<uint64_t> CheckpointCache::Unload(const std::string& model_id,
                                                 bool force) {
  MutexLock lock(&mu_);
  auto entry = FindReadyLocked(model_id);
  if (!entry.ok()) return entry.status();
  if ((*entry)->lease_count > 0 && !force) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s (%s) is leased by %d lease(s); release them or unload with force",
        model_id, (*entry)->key.path, (*entry)->lease_count));
  }
  uint64_t freed = 0;
  for (const auto& [tier, bytes] : (*entry)->resident) freed += bytes;
  EraseLocked(*entry);
  return freed;
}

}  // namespace weightd
