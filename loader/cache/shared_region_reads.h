// Reads of one file region shared by the ranks of a tensor-parallel group:
// the W ranks of a node each need a replicated tensor's bytes on their own
// GPU, and the node should read them once, not W times. The first rank to ask
// for a region reads it into host memory; the others take those bytes. An
// entry is freed once all W consumers took it, and evicted oldest-first when
// the host budget is exceeded (a late rank then reads again, counted). Nobody
// waits for a rank that has not arrived: a rank waits only while another is
// reading the region it wants, and reads for itself when the budget is full.
#ifndef WEIGHTD_LOADER_CACHE_SHARED_REGION_READS_H_
#define WEIGHTD_LOADER_CACHE_SHARED_REGION_READS_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "loader/common/mutex.h"
#include "loader/io/mapped_file.h"

namespace weightd {

class SharedRegionReads {
 public:
  struct Options {
    // Host bytes held in regions read but not yet taken by every consumer.
    uint64_t budget_bytes = uint64_t{1} << 30;
    // Evicted regions remembered (no bytes), so their late consumers still
    // count towards freeing them.
    size_t max_evicted_remembered = 65536;
    // Groups remembered with abandoned consumers; beyond, one is forgotten
    // (regions read later then wait for its consumers, within the budget).
    size_t max_abandoned_groups = 4096;
    // A ready region nobody took for this long is freed: the ranks it waits
    // for may never come (a rank reloaded alone after the others finished
    // looks like the first of a new group).
    absl::Duration linger = absl::Seconds(30);
    // The time now; empty: absl::Now.
    std::function<absl::Time()> clock;
  };

  struct Region {
    FileIdentity file;
    uint64_t offset = 0;
    uint64_t length = 0;
    // How many takes free the region (the group's world size). At most 1:
    // never kept.
    int consumers = 1;
    // Which consumer takes, in [0, consumers): a consumer's second take
    // shares what is there but frees nothing. Outside: reads alone.
    int consumer = 0;
  };

  struct Bytes {
    std::unique_ptr<uint8_t[]> data;
    uint64_t size = 0;
  };

  struct Taken {
    std::shared_ptr<const Bytes> bytes;
    uint64_t bytes_read = 0;  // read from the file by this take (0: shared)
  };

  struct Stats {
    uint64_t bytes_read = 0;    // read from files, rereads included
    uint64_t bytes_shared = 0;  // taken from another take's read
    uint64_t rereads = 0;       // regions read again after an eviction
    uint64_t evictions = 0;
    uint64_t expired = 0;     // freed after `linger` untaken
    uint64_t held_bytes = 0;  // now
    uint64_t regions = 0;     // now: reading, ready or evicted, remembered
    uint64_t abandoned_groups = 0;  // now: groups with a consumer gone
  };

  // Fills `out` (region.length bytes) from the file.
  using ReadFn = absl::FunctionRef<absl::Status(uint8_t* out)>;

  explicit SharedRegionReads(Options options);

  // The region's bytes: another consumer's read, or `read` on this thread.
  // Waits only while another take reads the same region. The read's error,
  // if it fails (the region is then not kept).
  absl::StatusOr<Taken> Take(const Region& region, ReadFn read);

  // Consumer `consumer` of the group reading `file` with `consumers` takes
  // nothing more (its load failed or was cancelled): regions that only it
  // had yet to take are freed, and regions read from now on do not wait for
  // it, until it takes again.
  void Abandon(const FileIdentity& file, int consumers, int consumer);

  // Also frees regions past their linger.
  Stats stats();

 private:
  struct Key {
    FileIdentity file;
    uint64_t offset;
    uint64_t length;
    int consumers;
    bool operator==(const Key& o) const {
      return file == o.file && offset == o.offset && length == o.length &&
             consumers == o.consumers;
    }
    template <typename H>
    friend H AbslHashValue(H h, const Key& k) {
      return H::combine(std::move(h), k.file, k.offset, k.length, k.consumers);
    }
  };
  struct GroupKey {
    FileIdentity file;
    int consumers;
    bool operator==(const GroupKey& o) const {
      return file == o.file && consumers == o.consumers;
    }
    template <typename H>
    friend H AbslHashValue(H h, const GroupKey& k) {
      return H::combine(std::move(h), k.file, k.consumers);
    }
  };
  // Consumers of a group that gave up (Abandon) and have not taken since.
  struct Group {
    std::vector<bool> abandoned;
    int count = 0;
  };
  enum class State { kReading, kReady, kEvicted };
  struct Entry {
    State state = State::kReading;
    std::shared_ptr<const Bytes> bytes;
    std::vector<bool> takers;  // by consumer: took it, or abandoned
    int taken = 0;             // takers set
    uint64_t sequence = 0;     // insertion order, for oldest-first eviction
    absl::Time last_use;       // read or last taken
  };

  enum class Decision { kShared, kReadAlone, kReadAndKeep };

  absl::StatusOr<Taken> ReadAlone(const Region& region, ReadFn read);
  // Takes a ready region into `*taken` (kShared), or says who reads: this
  // take alone, or this take for every consumer (its entry now kReading).
  Decision Decide(const Key& key, int consumer, Taken* taken);
  // Evicts ready regions, oldest first, until `length` more bytes fit.
  bool MakeRoom(uint64_t length) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Frees ready regions untaken for `linger` (a sweep at most every quarter
  // linger).
  void ExpireLingering() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Time Now() const;
  void Forget(const Key& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Marks `consumer` in `entry`; whether every consumer now has.
  static bool MarkTaken(Entry& entry, int consumer, int consumers);
  // A consumer takes again: it is no longer abandoned.
  void Rejoin(const Key& key, int consumer) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  mutable Mutex mu_;
  CondVar read_done_;
  absl::flat_hash_map<Key, Entry> entries_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<GroupKey, Group> groups_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, Key> ready_order_ ABSL_GUARDED_BY(mu_);  // sequence
  std::deque<std::pair<uint64_t, Key>> evicted_ ABSL_GUARDED_BY(mu_);
  uint64_t next_sequence_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time last_sweep_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  uint64_t held_ ABSL_GUARDED_BY(mu_) = 0;  // ready and reading entries
  Stats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace weightd

#endif  // WEIGHTD_LOADER_CACHE_SHARED_REGION_READS_H_
