#include "loader/cache/shared_region_reads.h"

#include <utility>

namespace weightd {

SharedRegionReads::SharedRegionReads(Options options) : options_(options) {}

absl::StatusOr<SharedRegionReads::Taken> SharedRegionReads::ReadAlone(
    const Region& region, ReadFn read) {
  auto bytes = std::make_shared<Bytes>();
  bytes->data.reset(new uint8_t[region.length == 0 ? 1 : region.length]);
  bytes->size = region.length;
  absl::Status status = read(bytes->data.get());
  if (!status.ok()) return status;
  {
    MutexLock lock(&mu_);
    stats_.bytes_read += region.length;
  }
  return Taken{std::move(bytes), region.length};
}

void SharedRegionReads::Forget(const Key& key) {
  auto it = entries_.find(key);
  if (it == entries_.end()) return;
  if (it->second.state != State::kEvicted) {
    held_ -= key.length;
    ready_order_.erase(it->second.sequence);
  }
  entries_.erase(it);
}

bool SharedRegionReads::MarkTaken(Entry& entry, int consumer, int consumers) {
  if (!entry.takers[consumer]) {
    entry.takers[consumer] = true;
    ++entry.taken;
  }
  return entry.taken >= consumers;
}

void SharedRegionReads::Rejoin(const Key& key, int consumer) {
  auto it = groups_.find(GroupKey{key.file, key.consumers});
  if (it == groups_.end() || !it->second.abandoned[consumer]) return;
  it->second.abandoned[consumer] = false;
  if (--it->second.count == 0) groups_.erase(it);
}

absl::Time SharedRegionReads::Now() const {
  return options_.clock ? options_.clock() : absl::Now();
}

void SharedRegionReads::ExpireLingering() {
  if (ready_order_.empty()) return;
  const absl::Time now = Now();
  if (now - last_sweep_ < options_.linger / 4) return;
  last_sweep_ = now;
  std::vector<Key> stale;
  for (const auto& [sequence, key] : ready_order_) {
    if (now - entries_[key].last_use >= options_.linger) stale.push_back(key);
  }
  for (const Key& key : stale) Forget(key);
  stats_.expired += stale.size();
}

bool SharedRegionReads::MakeRoom(uint64_t length) {
  while (held_ + length > options_.budget_bytes && !ready_order_.empty()) {
    auto oldest = ready_order_.begin();
    const Key key = oldest->second;
    ready_order_.erase(oldest);
    Entry& entry = entries_[key];
    entry.state = State::kEvicted;
    entry.bytes.reset();
    held_ -= key.length;
    ++stats_.evictions;
    evicted_.emplace_back(entry.sequence, key);
    while (evicted_.size() > options_.max_evicted_remembered) {
      const auto [sequence, old] = evicted_.front();
      evicted_.pop_front();
      auto it = entries_.find(old);
      if (it != entries_.end() && it->second.state == State::kEvicted &&
          it->second.sequence == sequence)
        entries_.erase(it);
    }
  }
  return held_ + length <= options_.budget_bytes;
}

SharedRegionReads::Decision SharedRegionReads::Decide(const Key& key,
                                                      int consumer,
                                                      Taken* taken) {
  MutexLock lock(&mu_);
  ExpireLingering();
  Rejoin(key, consumer);
  while (true) {
    auto it = entries_.find(key);
    if (it == entries_.end()) break;
    Entry& entry = it->second;
    if (entry.state == State::kReading) {
      // The reader either keeps the bytes or, failing, erases the entry and
      // this take reads for itself: never a wait on a read that ended.
      read_done_.Wait(&mu_);
      continue;
    }
    const bool already = entry.takers[consumer];
    const bool last = MarkTaken(entry, consumer, key.consumers);
    if (entry.state == State::kReady) {
      *taken = Taken{entry.bytes, 0};
      entry.last_use = Now();
      stats_.bytes_shared += key.length;
      if (last) Forget(key);
      return Decision::kShared;
    }
    // Evicted before this consumer came: read again, without keeping it.
    if (!already) ++stats_.rereads;
    if (last) Forget(key);
    return Decision::kReadAlone;
  }
  // The first consumer reads and keeps the bytes for the others still to
  // come (not those that gave up), if the budget has room.
  Entry entry;
  entry.takers.assign(key.consumers, false);
  if (auto group = groups_.find(GroupKey{key.file, key.consumers});
      group != groups_.end()) {
    entry.takers = group->second.abandoned;
    entry.taken = group->second.count;
  }
  if (MarkTaken(entry, consumer, key.consumers)) return Decision::kReadAlone;
  if (!MakeRoom(key.length)) return Decision::kReadAlone;
  entry.state = State::kReading;
  entry.sequence = next_sequence_++;
  entries_[key] = std::move(entry);
  held_ += key.length;
  return Decision::kReadAndKeep;
}

absl::StatusOr<SharedRegionReads::Taken> SharedRegionReads::Take(
    const Region& region, ReadFn read) {
  if (region.consumers <= 1 || region.consumer < 0 ||
      region.consumer >= region.consumers)
    return ReadAlone(region, read);
  const Key key{region.file, region.offset, region.length, region.consumers};
  Taken taken;
  switch (Decide(key, region.consumer, &taken)) {
    case Decision::kShared:
      return taken;
    case Decision::kReadAlone:
      return ReadAlone(region, read);
    case Decision::kReadAndKeep:
      break;
  }
  auto bytes = std::make_shared<Bytes>();
  bytes->data.reset(new uint8_t[region.length == 0 ? 1 : region.length]);
  bytes->size = region.length;
  absl::Status status = read(bytes->data.get());
  MutexLock lock(&mu_);
  // Only this take moves its entry out of kReading, so it is still there.
  auto it = entries_.find(key);
  if (!status.ok()) {
    held_ -= region.length;
    entries_.erase(it);
    read_done_.SignalAll();
    return status;
  }
  Entry& entry = it->second;
  stats_.bytes_read += region.length;
  read_done_.SignalAll();
  // Abandon may have marked the others while this take read.
  if (entry.taken >= key.consumers) {
    held_ -= region.length;
    entries_.erase(it);
    return Taken{std::move(bytes), region.length};
  }
  entry.state = State::kReady;
  entry.bytes = bytes;
  entry.last_use = Now();
  ready_order_.emplace(entry.sequence, key);
  return Taken{std::move(bytes), region.length};
}

void SharedRegionReads::Abandon(const FileIdentity& file, int consumers,
                                int consumer) {
  if (consumers <= 1 || consumer < 0 || consumer >= consumers) return;
  MutexLock lock(&mu_);
  const GroupKey group_key{file, consumers};
  auto group = groups_.find(group_key);
  if (group == groups_.end()) {
    if (groups_.size() >= options_.max_abandoned_groups)
      groups_.erase(groups_.begin());
    group = groups_.emplace(group_key, Group{}).first;
    group->second.abandoned.assign(consumers, false);
  }
  if (!group->second.abandoned[consumer]) {
    group->second.abandoned[consumer] = true;
    ++group->second.count;
  }
  std::vector<Key> done;
  for (auto& [key, entry] : entries_) {
    if (key.file != file || key.consumers != consumers) continue;
    // A region being read is freed by its reader once it sees everyone
    // marked.
    if (MarkTaken(entry, consumer, consumers) && entry.state != State::kReading)
      done.push_back(key);
  }
  for (const Key& key : done) Forget(key);
}

SharedRegionReads::Stats SharedRegionReads::stats() {
  MutexLock lock(&mu_);
  ExpireLingering();
  Stats stats = stats_;
  stats.held_bytes = held_;
  stats.regions = entries_.size();
  stats.abandoned_groups = groups_.size();
  return stats;
}

}  // namespace weightd
