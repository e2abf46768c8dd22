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
                                                      Taken* taken) {
  MutexLock lock(&mu_);
  while (true) {
    auto it = entries_.find(key);
    if (it == entries_.end()) break;
    Entry& entry = it->second;
    if (entry.state == State::kReading) {
      read_done_.Wait(&mu_);
      continue;
    }
    ++entry.taken;
    const bool last = entry.taken >= key.consumers;
    if (entry.state == State::kReady) {
      *taken = Taken{entry.bytes, 0};
      stats_.bytes_shared += key.length;
      if (last) Forget(key);
      return Decision::kShared;
    }
    // Evicted before this consumer came: read again, without keeping it.
    ++stats_.rereads;
    if (last) Forget(key);
    return Decision::kReadAlone;
  }
  // The first consumer reads and keeps the bytes, if the budget has room.
  if (!MakeRoom(key.length)) return Decision::kReadAlone;
  Entry& entry = entries_[key];
  entry.state = State::kReading;
  entry.sequence = next_sequence_++;
  held_ += key.length;
  return Decision::kReadAndKeep;
}

absl::StatusOr<SharedRegionReads::Taken> SharedRegionReads::Take(
    const Region& region, ReadFn read) {
  if (region.consumers <= 1) return ReadAlone(region, read);
  const Key key{region.file, region.offset, region.length, region.consumers};
  Taken taken;
  switch (Decide(key, &taken)) {
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
  entry.state = State::kReady;
  entry.bytes = bytes;
  entry.taken = 1;
  ready_order_.emplace(entry.sequence, key);
  read_done_.SignalAll();
  return Taken{std::move(bytes), region.length};
}

SharedRegionReads::Stats SharedRegionReads::stats() const {
  MutexLock lock(&mu_);
  Stats stats = stats_;
  stats.held_bytes = held_;
  return stats;
}

}  // namespace weightd
