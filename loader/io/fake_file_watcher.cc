#include "loader/io/fake_file_watcher.h"

#include <algorithm>
#include <utility>

namespace weightd {

FakeFileWatcher::FakeFileWatcher(ChangeCallback on_change)
    : on_change_(std::move(on_change)) {}

absl::StatusOr<FileWatcher::WatchId> FakeFileWatcher::Watch(
    const std::string& path, const FileIdentity& loaded, std::string cookie) {
  MutexLock lock(&mu_);
  if (!watch_error_.ok()) return watch_error_;
  WatchId id = next_id_++;
  watches_.push_back(Watched{id, path, loaded, std::move(cookie)});
  return id;
}

void FakeFileWatcher::Unwatch(WatchId id) {
  MutexLock lock(&mu_);
  watches_.erase(std::remove_if(watches_.begin(), watches_.end(),
                                [id](const Watched& w) { return w.id == id; }),
                 watches_.end());
}

size_t FakeFileWatcher::active_watches() const {
  MutexLock lock(&mu_);
  return watches_.size();
}

void FakeFileWatcher::SetWatchError(absl::Status error) {
  MutexLock lock(&mu_);
  watch_error_ = std::move(error);
}

std::vector<FakeFileWatcher::Watched> FakeFileWatcher::watches() const {
  MutexLock lock(&mu_);
  return watches_;
}

int FakeFileWatcher::FireChange(const std::string& path, FileChangeKind kind,
                                const std::string& detail) {
  std::vector<Change> fired;
  {
    MutexLock lock(&mu_);
    auto firing =
        std::stable_partition(watches_.begin(), watches_.end(),
                              [&](const Watched& w) { return w.path != path; });
    for (auto it = firing; it != watches_.end(); ++it) {
      fired.push_back(Change{it->id, it->path, it->cookie, kind, detail});
    }
    watches_.erase(firing, watches_.end());
  }
  for (const Change& change : fired) on_change_(change);
  return static_cast<int>(fired.size());
}

}  // namespace weightd
