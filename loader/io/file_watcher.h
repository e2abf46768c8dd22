// Tells the owner at once when a file it loaded changes on disk, so the model
// can be marked stale before another client is handed it.
//
// Usage (the model cache): one watcher for the daemon, made with
// CreateFileWatcher(options, on_change). After loading PATH with identity ID
// as model KEY, `watcher->Watch(PATH, ID, KEY)`; keep the WatchId with the
// model and Unwatch it when the model is dropped. on_change(change) runs on
// the watcher's own thread, at most once per watch (a watch retires when it
// fires), never under the watcher's lock, and carries the cookie (KEY) given
// to Watch, so it can mark the model stale without having seen the id yet; it
// may take the cache's lock and call Watch / Unwatch (Watch never calls back
// into the caller, so the cache may call it under its lock). A Watch error
// never means the file is bad (too many watches, inotify's max_user_watches
// reached, watching unavailable): load anyway, log the reason, and rely on
// the identity check at lookup.
#ifndef WEIGHTD_LOADER_IO_FILE_WATCHER_H_
#define WEIGHTD_LOADER_IO_FILE_WATCHER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "loader/io/mapped_file.h"

namespace weightd {

enum class FileChangeKind {
  kModified,    // written or truncated in place
  kAttributes,  // metadata changed (times, mode, link count: an unlink)
  kRemoved,     // deleted, or renamed away: the path no longer names it
  kReplaced,    // another file was renamed or created over the path
  kUnknown,     // events were lost and a re-check found the file different
};

const char* FileChangeKindName(FileChangeKind kind);

class FileWatcher {
 public:
  using WatchId = uint64_t;

  struct Change {
    WatchId id = 0;
    std::string path;    // as given to Watch
    std::string cookie;  // as given to Watch
    FileChangeKind kind = FileChangeKind::kUnknown;
    std::string detail;  // what was seen, for logs
  };
  using ChangeCallback = std::function<void(const Change&)>;

  virtual ~FileWatcher() = default;

  // Starts watching the file at `path` (symlinks followed) that was loaded
  // with identity `loaded`; `cookie` comes back in its Change. Seen: writes
  // and truncation, metadata changes (chmod, touch, unlink), the path being
  // renamed away or removed, another file renamed or created over the path
  // (torch.save to a temporary, then rename), its directory going. If the
  // file already differs from `loaded` (it changed between the load and this
  // call) the change fires at once, on the watcher's thread.
  virtual absl::StatusOr<WatchId> Watch(const std::string& path,
                                        const FileIdentity& loaded,
                                        std::string cookie) = 0;
  // Stops a watch; unknown or already-fired ids are ignored. Does not wait
  // for a callback in flight: one that raced with this call may still run
  // (once) for `id` after it returns, so the callback must ignore ids it no
  // longer knows.
  virtual void Unwatch(WatchId id) = 0;
  // Watches that have neither fired nor been unwatched.
  virtual size_t active_watches() const = 0;
};

struct FileWatcherOptions {
  // Most files watched at once; Watch fails with RESOURCE_EXHAUSTED past it.
  // Each costs two inotify watches at most (the file and its directory,
  // shared by the files of one directory) out of the user's
  // fs.inotify.max_user_watches.
  size_t max_watches = 4096;
};

// The inotify watcher; the callback runs on its thread. Fails when inotify is
// unavailable (max_user_instances reached, no inotify in this kernel).
absl::StatusOr<std::unique_ptr<FileWatcher>> CreateInotifyFileWatcher(
    const FileWatcherOptions& options, FileWatcher::ChangeCallback on_change);

// The inotify watcher where it can be made; otherwise (logged once, with the
// reason) one whose Watch always fails UNAVAILABLE with that reason, so the
// daemon runs on without watching.
std::unique_ptr<FileWatcher> CreateFileWatcher(
    const FileWatcherOptions& options, FileWatcher::ChangeCallback on_change);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_IO_FILE_WATCHER_H_
