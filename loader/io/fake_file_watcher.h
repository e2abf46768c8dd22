// A FileWatcher for tests of its users: records what is watched, and fires
// changes when the test says so, on the test's thread.
#ifndef WEIGHTD_LOADER_IO_FAKE_FILE_WATCHER_H_
#define WEIGHTD_LOADER_IO_FAKE_FILE_WATCHER_H_

#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "loader/common/mutex.h"
#include "loader/io/file_watcher.h"

namespace weightd {

class FakeFileWatcher : public FileWatcher {
 public:
  struct Watched {
    WatchId id;
    std::string path;
    FileIdentity loaded;
    std::string cookie;
  };

  explicit FakeFileWatcher(ChangeCallback on_change);

  absl::StatusOr<WatchId> Watch(const std::string& path,
                                const FileIdentity& loaded,
                                std::string cookie) override;
  void Unwatch(WatchId id) override;
  size_t active_watches() const override;

  // Every later Watch fails with `error` (OK again to accept them).
  void SetWatchError(absl::Status error);
  // The active watches, in the order they were made.
  std::vector<Watched> watches() const;
  // Fires every active watch of `path` once, as the real watcher would: each
  // retires, then the callback runs for it on this thread (not under the
  // fake's lock). Returns how many fired.
  int FireChange(const std::string& path, FileChangeKind kind,
                 const std::string& detail = "fired by a test");

 private:
  const ChangeCallback on_change_;
  mutable Mutex mu_;
  WatchId next_id_ ABSL_GUARDED_BY(mu_) = 1;
  absl::Status watch_error_ ABSL_GUARDED_BY(mu_);
  std::vector<Watched> watches_ ABSL_GUARDED_BY(mu_);
};

}  // namespace weightd

#endif  // WEIGHTD_LOADER_IO_FAKE_FILE_WATCHER_H_
