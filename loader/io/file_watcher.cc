#include "loader/io/file_watcher.h"

#include <errno.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "loader/common/logging.h"
#include "loader/common/mutex.h"

namespace weightd {

const char* FileChangeKindName(FileChangeKind kind) {
  switch (kind) {
    case FileChangeKind::kModified:
      return "modified";
    case FileChangeKind::kAttributes:
      return "attributes changed";
    case FileChangeKind::kRemoved:
      return "removed";
    case FileChangeKind::kReplaced:
      return "replaced";
    case FileChangeKind::kUnknown:
      break;
  }
  return "changed";
}

namespace {

// On the file itself (its inode: symlinks are followed).
constexpr uint32_t kFileEvents =
    IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_DELETE_SELF | IN_MOVE_SELF;
// On its directory: the name being replaced (torch.save to a temporary, then
// rename), removed or renamed away, and the directory itself going.
constexpr uint32_t kDirectoryEvents = IN_CREATE | IN_MOVED_TO | IN_DELETE |
                                      IN_MOVED_FROM | IN_DELETE_SELF |
                                      IN_MOVE_SELF;

std::string EventNames(uint32_t mask) {
  static constexpr std::pair<uint32_t, const char*> kNames[] = {
      {IN_MODIFY, "IN_MODIFY"},           {IN_ATTRIB, "IN_ATTRIB"},
      {IN_CLOSE_WRITE, "IN_CLOSE_WRITE"}, {IN_DELETE_SELF, "IN_DELETE_SELF"},
      {IN_MOVE_SELF, "IN_MOVE_SELF"},     {IN_CREATE, "IN_CREATE"},
      {IN_MOVED_TO, "IN_MOVED_TO"},       {IN_DELETE, "IN_DELETE"},
      {IN_MOVED_FROM, "IN_MOVED_FROM"},   {IN_IGNORED, "IN_IGNORED"},
      {IN_UNMOUNT, "IN_UNMOUNT"},         {IN_Q_OVERFLOW, "IN_Q_OVERFLOW"},
  };
  std::vector<const char*> names;
  for (const auto& [bit, name] : kNames) {
    if (mask & bit) names.push_back(name);
  }
  return absl::StrJoin(names, "|");
}

// One of inotify's per-user limits, as it applies in this user namespace
// (/proc/sys/user/...; the fs.inotify.* sysctls are the same in the initial
// namespace), for error messages.
std::string InotifyLimit(const char* user_limit, const char* fs_limit) {
  for (const char* path : {user_limit, fs_limit}) {
    std::ifstream in(path);
    std::string value;
    if (in >> value) return value;
  }
  return "unknown";
}

// The directory part of `path` ("." when it has none) and its last component.
bool SplitPath(const std::string& path, std::string* directory,
               std::string* name) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) {
    *directory = ".";
    *name = path;
  } else {
    *directory = slash == 0 ? "/" : path.substr(0, slash);
    *name = path.substr(slash + 1);
  }
  return !name->empty() && *name != "." && *name != "..";
}

class InotifyFileWatcher : public FileWatcher {
 public:
  InotifyFileWatcher(const FileWatcherOptions& options,
                     ChangeCallback on_change, ScopedFd inotify, ScopedFd wake)
      : options_(options),
        on_change_(std::move(on_change)),
        inotify_(std::move(inotify)),
        wake_(std::move(wake)) {
    thread_ = std::thread([this] { Run(); });
  }

  ~InotifyFileWatcher() override {
    {
      MutexLock lock(&mu_);
      stopping_ = true;
    }
    Wake();
    thread_.join();
  }

  absl::StatusOr<WatchId> Watch(const std::string& path,
                                const FileIdentity& loaded,
                                std::string cookie) override {
    std::string directory, name;
    if (!SplitPath(path, &directory, &name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot watch ", path, ": it names no file"));
    }
    WatchId id;
    {
      MutexLock lock(&mu_);
      if (watches_.size() >= options_.max_watches) {
        return absl::ResourceExhaustedError(
            absl::StrCat("not watching ", path, ": ", watches_.size(),
                         " files are watched already, the most allowed"));
      }
      // Added under the lock: the event thread dispatches under it too, so no
      // event for a new watch descriptor is looked up before it is known.
      int file_wd = inotify_add_watch(inotify_.get(), path.c_str(),
                                      kFileEvents | IN_MASK_ADD);
      if (file_wd < 0) return AddWatchError(errno, path);
      int dir_wd =
          inotify_add_watch(inotify_.get(), directory.c_str(),
                            kDirectoryEvents | IN_ONLYDIR | IN_MASK_ADD);
      if (dir_wd < 0) {
        int err = errno;
        DropUnusedWatchLocked(file_wd);
        return AddWatchError(err, directory);
      }
      logged_limit_ = false;
      id = next_id_++;
      watches_[id] =
          Entry{path, name, std::move(cookie), file_wd, dir_wd, loaded};
      file_wd_users_[file_wd].insert(id);
      dir_wd_users_[dir_wd].insert(id);
    }
    // The file may have changed between its load and the watch.
    absl::StatusOr<FileIdentity> now = StatFileIdentity(path);
    if (!now.ok() || *now != loaded) {
      MutexLock lock(&mu_);
      FireLocked(
          id, now.ok() ? FileChangeKind::kReplaced : FileChangeKind::kRemoved,
          now.ok() ? absl::StrCat("changed before it was watched: now ",
                                  now->DebugString())
                   : std::string(now.status().message()),
          &pending_);
      Wake();
    }
    return id;
  }

  void Unwatch(WatchId id) override {
    MutexLock lock(&mu_);
    RetireLocked(id);
  }

  size_t active_watches() const override {
    MutexLock lock(&mu_);
    return watches_.size();
  }

 private:
  struct Entry {
    std::string path;
    std::string
        name;  // last path component, as events in the directory name it
    std::string cookie;
    int file_wd;
    int dir_wd;
    FileIdentity loaded;
  };
  // A watch whose event does not say by itself that the file changed.
  struct Recheck {
    WatchId id;
    std::string path;
    FileIdentity loaded;
    FileChangeKind kind;
    std::string detail;
  };
  struct RawEvent {
    int wd;
    uint32_t mask;
    std::string name;
  };

  absl::Status AddWatchError(int err, const std::string& path)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const std::string call = absl::StrCat("inotify_add_watch(", path, ")");
    if (err != ENOSPC) return absl::ErrnoToStatus(err, call);
    std::string message = absl::StrCat(
        call, ": ", std::strerror(err),
        ": the user's inotify watch limit (fs.inotify.max_user_watches = ",
        InotifyLimit("/proc/sys/user/max_inotify_watches",
                     "/proc/sys/fs/inotify/max_user_watches"),
        ") is reached; models load, but changes to their files are not seen "
        "until they are looked up");
    if (!logged_limit_) {
      LogWarning("file watcher: %s", message);
      logged_limit_ = true;
    }
    return absl::ResourceExhaustedError(message);
  }

  // Removes the inotify watch `wd` once no watch of ours uses it.
  void DropUnusedWatchLocked(int wd) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (file_wd_users_.contains(wd) || dir_wd_users_.contains(wd)) return;
    // EINVAL when the kernel already dropped it (IN_IGNORED): nothing to do.
    inotify_rm_watch(inotify_.get(), wd);
  }

  static void ForgetUser(
      absl::flat_hash_map<int, absl::flat_hash_set<WatchId>>* users, int wd,
      WatchId id) {
    auto it = users->find(wd);
    if (it == users->end()) return;
    it->second.erase(id);
    if (it->second.empty()) users->erase(it);
  }

  // Forgets watch `id`; false when it was not active.
  bool RetireLocked(WatchId id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = watches_.find(id);
    if (it == watches_.end()) return false;
    int file_wd = it->second.file_wd;
    int dir_wd = it->second.dir_wd;
    watches_.erase(it);
    ForgetUser(&file_wd_users_, file_wd, id);
    ForgetUser(&dir_wd_users_, dir_wd, id);
    DropUnusedWatchLocked(file_wd);
    DropUnusedWatchLocked(dir_wd);
    return true;
  }

  // Retires `id` and queues its change in `out` (a watch fires once).
  void FireLocked(WatchId id, FileChangeKind kind, std::string detail,
                  std::vector<Change>* out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = watches_.find(id);
    if (it == watches_.end()) return;
    Change change{id, it->second.path, it->second.cookie, kind,
                  std::move(detail)};
    RetireLocked(id);
    out->push_back(std::move(change));
  }

  void Wake() {
    uint64_t one = 1;
    // Fails (EAGAIN) only when the counter is saturated: a wake-up is pending
    // anyway.
    ssize_t ignored = write(wake_.get(), &one, sizeof(one));
    (void)ignored;
  }

  void Run() {
    pollfd fds[2] = {{inotify_.get(), POLLIN, 0}, {wake_.get(), POLLIN, 0}};
    bool logged_poll_error = false;
    while (true) {
      int ready = poll(fds, 2, -1);
      if (ready < 0) {
        if (errno == EINTR) continue;
        // Not expected (EFAULT, EINVAL, ENOMEM); keep trying, slowly.
        if (!logged_poll_error) {
          LogError("file watcher: poll: %s", std::strerror(errno));
          logged_poll_error = true;
        }
        usleep(100 * 1000);
        continue;
      }
      if (fds[1].revents & POLLIN) {
        uint64_t count;
        ssize_t ignored = read(wake_.get(), &count, sizeof(count));
        (void)ignored;
      }
      std::vector<RawEvent> events;
      if (fds[0].revents & POLLIN) ReadEvents(&events);
      std::vector<Change> fired;
      std::vector<Recheck> rechecks;
      {
        MutexLock lock(&mu_);
        if (stopping_) return;
        for (const RawEvent& event : events) {
          DispatchLocked(event, &fired, &rechecks);
        }
        for (Change& change : pending_) fired.push_back(std::move(change));
        pending_.clear();
      }
      RunRechecks(rechecks, &fired);
      for (const Change& change : fired) on_change_(change);
    }
  }

  void ReadEvents(std::vector<RawEvent>* events) {
    alignas(struct inotify_event) char buffer[16 * 1024];
    while (true) {
      ssize_t got = read(inotify_.get(), buffer, sizeof(buffer));
      if (got < 0) {
        if (errno == EINTR) continue;
        return;  // EAGAIN: drained
      }
      if (got == 0) return;
      size_t offset = 0;
      while (offset + sizeof(struct inotify_event) <=
             static_cast<size_t>(got)) {
        const auto* event =
            reinterpret_cast<const struct inotify_event*>(buffer + offset);
        size_t total = sizeof(struct inotify_event) + event->len;
        if (offset + total > static_cast<size_t>(got)) break;
        events->push_back(RawEvent{
            event->wd, event->mask,
            std::string(event->name, strnlen(event->name, event->len))});
        offset += total;
      }
    }
  }

  void FireAllLocked(const absl::flat_hash_set<WatchId>& users,
                     FileChangeKind kind, const std::string& detail,
                     std::vector<Change>* fired)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    // Copied: firing retires watches, which edits the set.
    std::vector<WatchId> ids(users.begin(), users.end());
    for (WatchId id : ids) FireLocked(id, kind, detail, fired);
  }

  void DispatchLocked(const RawEvent& event, std::vector<Change>* fired,
                      std::vector<Recheck>* rechecks)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::string names = EventNames(event.mask);
    if (event.mask & IN_Q_OVERFLOW) {
      // Events were dropped: compare every watched file with what was loaded.
      for (const auto& [id, entry] : watches_) {
        rechecks->push_back(Recheck{id, entry.path, entry.loaded,
                                    FileChangeKind::kUnknown,
                                    "inotify queue overflowed, and a re-check "
                                    "found it different"});
      }
      return;
    }
    if (auto it = file_wd_users_.find(event.wd); it != file_wd_users_.end()) {
      if (event.mask & IN_MODIFY) {
        FireAllLocked(it->second, FileChangeKind::kModified, names, fired);
      } else if (event.mask & IN_ATTRIB) {
        FireAllLocked(it->second, FileChangeKind::kAttributes, names, fired);
      } else if (event.mask &
                 (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED | IN_UNMOUNT)) {
        FireAllLocked(it->second, FileChangeKind::kRemoved, names, fired);
      } else if (event.mask & IN_CLOSE_WRITE) {
        // A writer closed the file; a write would have been IN_MODIFY, so
        // this matters only if the file differs now (writes through a mapping).
        for (WatchId id : it->second) {
          const Entry& entry = watches_.at(id);
          rechecks->push_back(Recheck{id, entry.path, entry.loaded,
                                      FileChangeKind::kModified, names});
        }
      }
      return;
    }
    if (auto it = dir_wd_users_.find(event.wd); it != dir_wd_users_.end()) {
      if (event.mask &
          (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED | IN_UNMOUNT)) {
        FireAllLocked(it->second, FileChangeKind::kRemoved,
                      absl::StrCat("its directory: ", names), fired);
        return;
      }
      if (event.name.empty()) return;
      FileChangeKind kind = (event.mask & (IN_CREATE | IN_MOVED_TO))
                                ? FileChangeKind::kReplaced
                                : FileChangeKind::kRemoved;
      // Re-checked, not fired: an event queued before the watch was made
      // (the file's own creation) may be read after it; a replacement or a
      // removal always leaves the path with another identity or none.
      for (WatchId id : it->second) {
        const Entry& entry = watches_.at(id);
        if (entry.name != event.name) continue;
        rechecks->push_back(Recheck{id, entry.path, entry.loaded, kind,
                                    absl::StrCat(names, " in its directory")});
      }
    }
  }

  void RunRechecks(const std::vector<Recheck>& rechecks,
                   std::vector<Change>* fired) {
    for (const Recheck& recheck : rechecks) {
      absl::StatusOr<FileIdentity> now = StatFileIdentity(recheck.path);
      if (now.ok() && *now == recheck.loaded) continue;
      MutexLock lock(&mu_);
      FireLocked(recheck.id, recheck.kind, recheck.detail, fired);
    }
  }

  const FileWatcherOptions options_;
  const ChangeCallback on_change_;
  const ScopedFd inotify_;
  const ScopedFd wake_;  // an eventfd: stop, or deliver pending_
  std::thread thread_;

  mutable Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  WatchId next_id_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<WatchId, Entry> watches_ ABSL_GUARDED_BY(mu_);
  // Inotify watch descriptor -> our watches that use it, for each role.
  absl::flat_hash_map<int, absl::flat_hash_set<WatchId>> file_wd_users_
      ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<int, absl::flat_hash_set<WatchId>> dir_wd_users_
      ABSL_GUARDED_BY(mu_);
  // Changes found by Watch, delivered by the thread.
  std::vector<Change> pending_ ABSL_GUARDED_BY(mu_);
  // Whether the max_user_watches warning was logged since the last success.
  bool logged_limit_ ABSL_GUARDED_BY(mu_) = false;
};

// Watching is off: every Watch says why.
class UnavailableFileWatcher : public FileWatcher {
 public:
  explicit UnavailableFileWatcher(std::string reason)
      : reason_(std::move(reason)) {}
  absl::StatusOr<WatchId> Watch(const std::string& path, const FileIdentity&,
                                std::string) override {
    return absl::UnavailableError(
        absl::StrCat("not watching ", path, ": ", reason_));
  }
  void Unwatch(WatchId) override {}
  size_t active_watches() const override { return 0; }

 private:
  const std::string reason_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<FileWatcher>> CreateInotifyFileWatcher(
    const FileWatcherOptions& options, FileWatcher::ChangeCallback on_change) {
  if (!on_change) {
    return absl::InvalidArgumentError("file watcher: no change callback");
  }
  ScopedFd inotify(inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
  if (!inotify.valid()) {
    int err = errno;
    std::string message = absl::StrCat("inotify_init1: ", std::strerror(err));
    if (err == EMFILE) {
      absl::StrAppend(&message, " (fs.inotify.max_user_instances = ",
                      InotifyLimit("/proc/sys/user/max_inotify_instances",
                                   "/proc/sys/fs/inotify/max_user_instances"),
                      ", or this process is out of file descriptors)");
    }
    return err == EMFILE || err == ENFILE || err == ENOMEM
               ? absl::ResourceExhaustedError(message)
               : absl::UnavailableError(message);
  }
  ScopedFd wake(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!wake.valid()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("eventfd: ", std::strerror(errno)));
  }
  return std::unique_ptr<FileWatcher>(new InotifyFileWatcher(
      options, std::move(on_change), std::move(inotify), std::move(wake)));
}

std::unique_ptr<FileWatcher> CreateFileWatcher(
    const FileWatcherOptions& options, FileWatcher::ChangeCallback on_change) {
  absl::StatusOr<std::unique_ptr<FileWatcher>> watcher =
      CreateInotifyFileWatcher(options, std::move(on_change));
  if (watcher.ok()) return std::move(*watcher);
  std::string reason = std::string(watcher.status().message());
  LogWarning(
      "file watcher: changed checkpoints are noticed only when looked up: %s",
      reason);
  return std::make_unique<UnavailableFileWatcher>(std::move(reason));
}

}  // namespace weightd
