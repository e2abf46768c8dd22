#include "loader/io/file_watcher.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "loader/common/mutex.h"
#include "loader/common/test_child.h"
#include "loader/io/fake_file_watcher.h"
#include "loader/io/test_util.h"

namespace weightd {
namespace {

using Change = FileWatcher::Change;
using WatchId = FileWatcher::WatchId;

// Collects the changes the watcher's thread reports.
class ChangeRecorder {
 public:
  FileWatcher::ChangeCallback Callback() {
    return [this](const Change& change) {
      MutexLock lock(&mu_);
      changes_.push_back(change);
      cv_.SignalAll();
    };
  }

  // Waits for a change of watch `id`; false if none came within a minute (a
  // bound against hanging, not a measurement).
  bool WaitFor(WatchId id) {
    absl::Time deadline = absl::Now() + absl::Minutes(1);
    MutexLock lock(&mu_);
    while (CountLocked(id) == 0) {
      absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) return false;
      cv_.WaitWithTimeout(&mu_, left);
    }
    return true;
  }

  int Count(WatchId id) {
    MutexLock lock(&mu_);
    return CountLocked(id);
  }

  Change Get(WatchId id) {
    MutexLock lock(&mu_);
    for (const Change& change : changes_) {
      if (change.id == id) return change;
    }
    return Change{};
  }

 private:
  int CountLocked(WatchId id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    int count = 0;
    for (const Change& change : changes_) count += change.id == id;
    return count;
  }

  Mutex mu_;
  CondVar cv_;
  std::vector<Change> changes_ ABSL_GUARDED_BY(mu_);
};

bool WriteText(const std::string& path, const std::string& text,
               int flags = O_WRONLY | O_CREAT | O_TRUNC) {
  int fd = open(path.c_str(), flags | O_CLOEXEC, 0644);
  if (fd < 0) return false;
  bool ok =
      write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  return close(fd) == 0 && ok;
}

class FileWatcherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::TempPath("watched");
    ASSERT_EQ(mkdir(dir_.c_str(), 0700), 0);
    auto watcher = CreateInotifyFileWatcher(options_, recorder_.Callback());
    ASSERT_TRUE(watcher.ok()) << watcher.status();
    watcher_ = std::move(*watcher);
  }
  void TearDown() override {
    watcher_.reset();
    std::string command = absl::StrCat("rm -rf '", dir_, "'");
    ASSERT_EQ(std::system(command.c_str()), 0);
  }

  std::string File(const std::string& name, const std::string& text) {
    std::string path = absl::StrCat(dir_, "/", name);
    EXPECT_TRUE(WriteText(path, text)) << path;
    return path;
  }

  WatchId WatchFile(const std::string& path, const std::string& cookie = "") {
    auto identity = StatFileIdentity(path);
    EXPECT_TRUE(identity.ok()) << identity.status();
    auto id = watcher_->Watch(path, *identity, cookie);
    EXPECT_TRUE(id.ok()) << id.status();
    return id.ok() ? *id : 0;
  }

  // Every event queued before this call has been handled when it returns:
  // inotify reports in order, and the sentinel's change comes after them.
  void Sync() {
    std::string sentinel = File(absl::StrCat("sentinel-", sentinels_++), "s");
    WatchId id = WatchFile(sentinel);
    ASSERT_TRUE(WriteText(sentinel, "more", O_WRONLY | O_APPEND));
    ASSERT_TRUE(recorder_.WaitFor(id));
  }

  FileWatcherOptions options_;
  std::string dir_;
  ChangeRecorder recorder_;
  std::unique_ptr<FileWatcher> watcher_;
  int sentinels_ = 0;
};

TEST_F(FileWatcherTest, ModifyFiresOnce) {
  std::string path = File("model.pt", "weights");
  WatchId id = WatchFile(path, "model-1");
  EXPECT_EQ(watcher_->active_watches(), 1u);
  ASSERT_TRUE(WriteText(path, "other", O_WRONLY | O_APPEND));
  ASSERT_TRUE(WriteText(path, "again", O_WRONLY | O_APPEND));
  ASSERT_TRUE(recorder_.WaitFor(id));
  Sync();
  EXPECT_EQ(recorder_.Count(id), 1);
  Change change = recorder_.Get(id);
  EXPECT_EQ(change.path, path);
  EXPECT_EQ(change.cookie, "model-1");
  EXPECT_EQ(change.kind, FileChangeKind::kModified) << change.detail;
  EXPECT_EQ(watcher_->active_watches(), 0u);  // retired; sentinel's too
}

TEST_F(FileWatcherTest, TruncateFiresOnce) {
  std::string path = File("latest.pt", std::string(10000, 'x'));
  WatchId id = WatchFile(path);
  ASSERT_EQ(truncate(path.c_str(), 0), 0);  // torch.save's first step
  ASSERT_TRUE(WriteText(path, "new", O_WRONLY));
  ASSERT_TRUE(recorder_.WaitFor(id));
  Sync();
  EXPECT_EQ(recorder_.Count(id), 1);
  EXPECT_EQ(recorder_.Get(id).kind, FileChangeKind::kModified);
}

TEST_F(FileWatcherTest, RenameOverFiresOnce) {
  std::string path = File("latest.pt", "old");
  WatchId id = WatchFile(path);
  std::string temporary = File("latest.pt.tmp", "new");
  ASSERT_EQ(rename(temporary.c_str(), path.c_str()), 0);
  ASSERT_TRUE(recorder_.WaitFor(id));
  Sync();
  EXPECT_EQ(recorder_.Count(id), 1);
  // The directory's IN_MOVED_TO, or the old file's link count (IN_ATTRIB).
  FileChangeKind kind = recorder_.Get(id).kind;
  EXPECT_TRUE(kind == FileChangeKind::kReplaced ||
              kind == FileChangeKind::kAttributes)
      << FileChangeKindName(kind);
}

TEST_F(FileWatcherTest, DeleteFiresOnce) {
  std::string path = File("model.pt", "weights");
  WatchId id = WatchFile(path);
  ASSERT_EQ(unlink(path.c_str()), 0);
  ASSERT_TRUE(recorder_.WaitFor(id));
  Sync();
  EXPECT_EQ(recorder_.Count(id), 1);
  FileChangeKind kind = recorder_.Get(id).kind;
  EXPECT_TRUE(kind == FileChangeKind::kRemoved ||
              kind == FileChangeKind::kAttributes)
      << FileChangeKindName(kind);
}

TEST_F(FileWatcherTest, RenameAwayFiresOnce) {
  std::string path = File("model.pt", "weights");
  WatchId id = WatchFile(path);
  ASSERT_EQ(rename(path.c_str(), (path + ".old").c_str()), 0);
  ASSERT_TRUE(recorder_.WaitFor(id));
  Sync();
  EXPECT_EQ(recorder_.Count(id), 1);
}

TEST_F(FileWatcherTest, MetadataChangeFires) {
  std::string path = File("model.pt", "weights");
  WatchId id = WatchFile(path);
  ASSERT_EQ(chmod(path.c_str(), 0600), 0);
  ASSERT_TRUE(recorder_.WaitFor(id));
  EXPECT_EQ(recorder_.Get(id).kind, FileChangeKind::kAttributes);
}

TEST_F(FileWatcherTest, UnrelatedFilesInTheDirectoryDoNotFire) {
  std::string watched = File("model.pt", "weights");
  std::string neighbour = File("other.pt", "weights");
  WatchId id = WatchFile(watched);
  ASSERT_TRUE(WriteText(neighbour, "changed", O_WRONLY | O_APPEND));
  ASSERT_EQ(truncate(neighbour.c_str(), 1), 0);
  ASSERT_EQ(chmod(neighbour.c_str(), 0600), 0);
  std::string replacement = File("other.pt.tmp", "new");
  ASSERT_EQ(rename(replacement.c_str(), neighbour.c_str()), 0);
  ASSERT_EQ(unlink(neighbour.c_str()), 0);
  File("model.pt.tmp", "a name that starts like the watched one");
  // Reading the watched file is not a change either.
  {
    FILE* f = std::fopen(watched.c_str(), "rb");
    ASSERT_NE(f, nullptr);
    char buffer[16];
    EXPECT_GT(std::fread(buffer, 1, sizeof(buffer), f), 0u);
    std::fclose(f);
  }
  Sync();
  EXPECT_EQ(recorder_.Count(id), 0);
  EXPECT_EQ(watcher_->active_watches(), 1u);
}

// Opening for writing and closing without writing (IN_CLOSE_WRITE alone)
// leaves the file as loaded: no change.
TEST_F(FileWatcherTest, CloseWithoutWriteDoesNotFire) {
  std::string path = File("model.pt", "weights");
  WatchId id = WatchFile(path);
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  close(fd);
  Sync();
  EXPECT_EQ(recorder_.Count(id), 0);
}

TEST_F(FileWatcherTest, EveryWatchOfAFileFiresOnce) {
  std::string path = File("model.pt", "weights");
  WatchId first = WatchFile(path, "host");
  WatchId second = WatchFile(path, "gpu0");
  ASSERT_TRUE(WriteText(path, "new", O_WRONLY | O_APPEND));
  ASSERT_TRUE(recorder_.WaitFor(first));
  ASSERT_TRUE(recorder_.WaitFor(second));
  Sync();
  EXPECT_EQ(recorder_.Count(first), 1);
  EXPECT_EQ(recorder_.Count(second), 1);
  EXPECT_EQ(recorder_.Get(first).cookie, "host");
  EXPECT_EQ(recorder_.Get(second).cookie, "gpu0");
}

// Unwatching one of two watches of a file keeps the other (the inotify watch
// they share stays).
TEST_F(FileWatcherTest, UnwatchStopsOnlyThatWatch) {
  std::string path = File("model.pt", "weights");
  WatchId dropped = WatchFile(path);
  WatchId kept = WatchFile(path);
  watcher_->Unwatch(dropped);
  watcher_->Unwatch(dropped);  // twice: ignored
  watcher_->Unwatch(12345);    // unknown: ignored
  EXPECT_EQ(watcher_->active_watches(), 1u);
  ASSERT_TRUE(WriteText(path, "new", O_WRONLY | O_APPEND));
  ASSERT_TRUE(recorder_.WaitFor(kept));
  Sync();
  EXPECT_EQ(recorder_.Count(dropped), 0);
  EXPECT_EQ(recorder_.Count(kept), 1);
}

TEST_F(FileWatcherTest, ChangeBeforeTheWatchFiresAtOnce) {
  std::string path = File("model.pt", "weights");
  auto loaded = StatFileIdentity(path);
  ASSERT_TRUE(loaded.ok());
  std::string temporary = File("model.pt.tmp", "new weights");
  ASSERT_EQ(rename(temporary.c_str(), path.c_str()), 0);
  auto id = watcher_->Watch(path, *loaded, "stale");
  ASSERT_TRUE(id.ok()) << id.status();
  ASSERT_TRUE(recorder_.WaitFor(*id));
  EXPECT_EQ(recorder_.Get(*id).kind, FileChangeKind::kReplaced);
  EXPECT_EQ(recorder_.Get(*id).cookie, "stale");
}

// A symlinked checkpoint (a Hugging Face snapshot): writes to its target and a
// new link over its name are both seen.
TEST_F(FileWatcherTest, SymlinkTargetAndLinkAreWatched) {
  std::string target = File("blob", "weights");
  std::string link = absl::StrCat(dir_, "/model.pt");
  ASSERT_EQ(symlink(target.c_str(), link.c_str()), 0);
  WatchId by_target = WatchFile(link);
  ASSERT_TRUE(WriteText(target, "new", O_WRONLY | O_APPEND));
  ASSERT_TRUE(recorder_.WaitFor(by_target));
  EXPECT_EQ(recorder_.Get(by_target).kind, FileChangeKind::kModified);

  WatchId by_link = WatchFile(link);
  std::string other = File("blob2", "other weights");
  std::string new_link = absl::StrCat(dir_, "/model.pt.new");
  ASSERT_EQ(symlink(other.c_str(), new_link.c_str()), 0);
  ASSERT_EQ(rename(new_link.c_str(), link.c_str()), 0);
  ASSERT_TRUE(recorder_.WaitFor(by_link));
  EXPECT_EQ(recorder_.Get(by_link).kind, FileChangeKind::kReplaced);
}

TEST_F(FileWatcherTest, CallbackMayWatchAndUnwatch) {
  std::string first = File("a.pt", "a");
  std::string second = File("b.pt", "b");
  Notification rewatched;
  WatchId from_callback = 0;
  auto watcher = CreateInotifyFileWatcher(options_, [&](const Change& change) {
    if (change.cookie != "first") return;
    auto identity = StatFileIdentity(second);
    ASSERT_TRUE(identity.ok());
    auto id = watcher_->Watch(second, *identity, "second");
    ASSERT_TRUE(id.ok()) << id.status();
    watcher_->Unwatch(*id);
    from_callback = *id;
    rewatched.Notify();
  });
  ASSERT_TRUE(watcher.ok());
  // The callback uses watcher_, so swap the fixture's for this one.
  watcher_ = std::move(*watcher);
  auto identity = StatFileIdentity(first);
  ASSERT_TRUE(identity.ok());
  ASSERT_TRUE(watcher_->Watch(first, *identity, "first").ok());
  ASSERT_TRUE(WriteText(first, "new", O_WRONLY | O_APPEND));
  ASSERT_TRUE(rewatched.WaitForNotificationWithTimeout(absl::Minutes(1)));
  EXPECT_NE(from_callback, 0u);
  EXPECT_EQ(watcher_->active_watches(), 0u);
}

TEST_F(FileWatcherTest, Errors) {
  std::string missing = absl::StrCat(dir_, "/missing.pt");
  auto id = watcher_->Watch(missing, FileIdentity{}, "");
  EXPECT_TRUE(absl::IsNotFound(id.status())) << id.status();
  EXPECT_NE(id.status().message().find(missing), std::string::npos);
  auto no_name = watcher_->Watch(dir_ + "/", FileIdentity{}, "");
  EXPECT_TRUE(absl::IsInvalidArgument(no_name.status())) << no_name.status();
  EXPECT_EQ(watcher_->active_watches(), 0u);
  EXPECT_FALSE(CreateInotifyFileWatcher(options_, nullptr).ok());
}

TEST(FileWatcherCapTest, WatchesPastTheCapAreRefused) {
  std::string dir = testing::TempPath("capped");
  ASSERT_EQ(mkdir(dir.c_str(), 0700), 0);
  FileWatcherOptions options;
  options.max_watches = 2;
  auto watcher = CreateInotifyFileWatcher(options, [](const Change&) {});
  ASSERT_TRUE(watcher.ok());
  std::vector<WatchId> ids;
  for (int i = 0; i < 3; ++i) {
    std::string path = absl::StrCat(dir, "/m", i);
    ASSERT_TRUE(WriteText(path, "w"));
    auto identity = StatFileIdentity(path);
    ASSERT_TRUE(identity.ok());
    auto id = (*watcher)->Watch(path, *identity, "");
    if (i < 2) {
      ASSERT_TRUE(id.ok()) << id.status();
      ids.push_back(*id);
    } else {
      EXPECT_TRUE(absl::IsResourceExhausted(id.status())) << id.status();
      EXPECT_NE(id.status().message().find(path), std::string::npos);
      (*watcher)->Unwatch(ids[0]);
      EXPECT_TRUE((*watcher)->Watch(path, *identity, "").ok());
    }
  }
  watcher->reset();
  ASSERT_EQ(std::system(absl::StrCat("rm -rf '", dir, "'").c_str()), 0);
}

bool WriteProc(const char* path, const char* value) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok =
      write(fd, value, strlen(value)) == static_cast<ssize_t>(strlen(value));
  return close(fd) == 0 && ok;
}

// inotify's per-user limits reached: Watch fails with the reason and the
// watcher keeps working; with no inotify instance left, CreateFileWatcher
// gives a watcher that refuses every Watch with the reason. Run in a child in
// its own user namespace, whose inotify limits it may lower without touching
// the machine's.
TEST(FileWatcherLimitsTest, InotifyLimitsDegradeToNoWatching) {
  std::string path = testing::WritePatternFile("limited", 10, 1);
  ASSERT_FALSE(path.empty());
  const int status = testing::RunInChild([&] {
    if (unshare(CLONE_NEWUSER) != 0) return 77;
    if (!WriteProc("/proc/sys/user/max_inotify_watches", "1")) return 77;
    auto watcher = CreateInotifyFileWatcher({}, [](const Change&) {});
    if (!watcher.ok()) return 10;
    auto identity = StatFileIdentity(path);
    if (!identity.ok()) return 11;
    // The file's watch fits, its directory's does not.
    auto refused = (*watcher)->Watch(path, *identity, "");
    if (!absl::IsResourceExhausted(refused.status())) return 12;
    if (refused.status().message().find("max_user_watches") ==
        std::string::npos) {
      return 13;
    }
    if ((*watcher)->active_watches() != 0) return 14;
    if (!WriteProc("/proc/sys/user/max_inotify_watches", "10")) return 15;
    if (!(*watcher)->Watch(path, *identity, "").ok()) return 16;
    if (!WriteProc("/proc/sys/user/max_inotify_instances", "0")) return 17;
    if (CreateInotifyFileWatcher({}, [](const Change&) {}).ok()) return 18;
    std::unique_ptr<FileWatcher> off =
        CreateFileWatcher({}, [](const Change&) {});
    auto unavailable = off->Watch(path, *identity, "");
    if (!absl::IsUnavailable(unavailable.status())) return 19;
    if (unavailable.status().message().find("inotify_init1") ==
        std::string::npos) {
      return 20;
    }
    return 0;
  });
  unlink(path.c_str());
  if (status == 77) {
    GTEST_SKIP() << "no user namespace with its own inotify limits here";
  }
  EXPECT_EQ(status, 0) << "failed check, see the child's return codes";
}

TEST(FakeFileWatcherTest, FiresEachWatchOfAPathOnce) {
  std::vector<Change> fired;
  FakeFileWatcher fake([&](const Change& change) { fired.push_back(change); });
  auto a = fake.Watch("/m/a.pt", FileIdentity{1, 2, 3, 4, 5}, "a");
  auto b = fake.Watch("/m/b.pt", FileIdentity{}, "b");
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(fake.watches().size(), 2u);
  EXPECT_EQ(fake.watches()[0].loaded, (FileIdentity{1, 2, 3, 4, 5}));
  EXPECT_EQ(fake.FireChange("/m/a.pt", FileChangeKind::kReplaced), 1);
  EXPECT_EQ(fake.FireChange("/m/a.pt", FileChangeKind::kReplaced), 0);
  ASSERT_EQ(fired.size(), 1u);
  EXPECT_EQ(fired[0].id, *a);
  EXPECT_EQ(fired[0].cookie, "a");
  EXPECT_EQ(fired[0].kind, FileChangeKind::kReplaced);
  fake.Unwatch(*b);
  EXPECT_EQ(fake.FireChange("/m/b.pt", FileChangeKind::kModified), 0);
  EXPECT_EQ(fake.active_watches(), 0u);
  fake.SetWatchError(absl::ResourceExhaustedError("full"));
  EXPECT_TRUE(absl::IsResourceExhausted(
      fake.Watch("/m/c.pt", FileIdentity{}, "c").status()));
}

}  // namespace
}  // namespace weightd
