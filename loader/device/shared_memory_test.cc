#include "loader/device/shared_memory.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "loader/common/test_child.h"
#include "loader/common/test_dir.h"
#include "loader/device/arena_handle.h"

namespace weightd {
namespace {

using testing::LingeringChild;
using testing::ReportAndWait;
using testing::RunInChild;

TEST(SharedMemoryTest, AnotherProcessReadsTheSegment) {
  auto segment = SharedMemorySegment::Create(1 << 20);
  ASSERT_TRUE(segment.ok()) << segment.status();
  SharedMemorySegment& seg = **segment;
  // "/weightd-<12 hex digits>-<counter>", the id the default instance's.
  auto instance = SharedMemoryInstance::Default();
  ASSERT_TRUE(instance.ok()) << instance.status();
  EXPECT_EQ(
      seg.name().rfind(absl::StrCat("/weightd-", (*instance)->id(), "-"), 0),
      0u)
      << seg.name();
  EXPECT_EQ((*instance)->id().size(), 12u);
  for (size_t i = 0; i < seg.size(); ++i) seg.data()[i] = i * 7 + 3;
  std::string name = seg.name();
  EXPECT_EQ(RunInChild([&] {
              auto m = OpenSharedSegment(name, 1 << 20);
              if (!m.ok()) return 1;
              for (size_t i = 0; i < (1 << 20); ++i) {
                if ((*m)->data()[i] != static_cast<uint8_t>(i * 7 + 3))
                  return 2;
              }
              return 0;
            }),
            0);
}

TEST(SharedMemoryTest, HandleRoundTripAndOpen) {
  auto segment = SharedMemorySegment::Create(4096, "weightd-test");
  ASSERT_TRUE(segment.ok());
  std::memset((*segment)->data(), 0xab, 4096);
  SharedHandleInfo info;
  info.kind = SharedHandleKind::kFakeGpu;
  info.device_index = 3;
  info.size = 4096;
  info.name = (*segment)->name();
  auto handle = EncodeSharedHandle(info);
  ASSERT_TRUE(handle.ok()) << handle.status();
  EXPECT_EQ(handle->ToString().size(), 64u);
  auto decoded = DecodeSharedHandle(*handle);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->kind, SharedHandleKind::kFakeGpu);
  EXPECT_EQ(decoded->device_index, 3);
  EXPECT_EQ(decoded->size, 4096u);
  EXPECT_EQ(decoded->name, info.name);
  auto again = IpcHandle::FromString(handle->ToString());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *handle);
  auto opened =
      OpenArenaHandle({ArenaHandleKind::kSharedMemory, *handle}, 4096, "");
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_EQ((*opened)->host_data()[4095], 0xab);
}

TEST(SharedMemoryTest, Errors) {
  IpcHandle garbage;
  garbage.bytes.fill(0x5a);
  EXPECT_TRUE(absl::IsInvalidArgument(DecodeSharedHandle(garbage).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(IpcHandle::FromString("short").status()));
  EXPECT_TRUE(
      absl::IsInvalidArgument(OpenSharedSegment("no-slash", 1).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(OpenSharedSegment("/a/b", 1).status()));

  std::string name;
  {
    auto segment = SharedMemorySegment::Create(100);
    ASSERT_TRUE(segment.ok());
    name = (*segment)->name();
    auto too_big = OpenSharedSegment(name, 1 << 20);
    EXPECT_TRUE(absl::IsOutOfRange(too_big.status())) << too_big.status();
    auto mapping = OpenSharedSegment(name, 100);
    ASSERT_TRUE(mapping.ok());
  }
  // Unlinked with the segment.
  auto gone = OpenSharedSegment(name, 100);
  EXPECT_TRUE(absl::IsNotFound(gone.status())) << gone.status();
}

TEST(SharedMemoryTest, EmptySegment) {
  auto segment = SharedMemorySegment::Create(0);
  ASSERT_TRUE(segment.ok()) << segment.status();
  EXPECT_EQ((*segment)->data(), nullptr);
  auto mapping = OpenSharedSegment((*segment)->name(), 0);
  ASSERT_TRUE(mapping.ok()) << mapping.status();
  EXPECT_EQ((*mapping)->size(), 0u);
}

TEST(SharedMemoryTest, MappingOutlivesUnlink) {
  std::unique_ptr<SharedMapping> mapping;
  {
    auto segment = SharedMemorySegment::Create(8192, "weightd", true);
    ASSERT_TRUE(segment.ok());
    (*segment)->data()[8191] = 42;
    auto m = OpenSharedSegment((*segment)->name(), 8192);
    ASSERT_TRUE(m.ok());
    mapping = std::move(*m);
  }
  EXPECT_EQ(mapping->data()[8191], 42);
}

// A fresh directory for an instance's files (creation and reclaim work in any
// directory; shm_open()-ing them by name needs /dev/shm).
std::string MakeShmDirectory() {
  const char* base = getenv("TEST_TMPDIR");
  std::string pattern =
      absl::StrCat(base != nullptr ? base : "/tmp", "/shm-XXXXXX");
  char* made = mkdtemp(pattern.data());
  return made != nullptr ? std::string(made) : std::string();
}

using testing::ListDirectory;

bool Exists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

uint64_t AllocatedBytes(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0 ? uint64_t(st.st_blocks) * 512 : 0;
}

void WriteFile(const std::string& path, const std::string& bytes) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
  ASSERT_EQ(write(fd, bytes.data(), bytes.size()),
            static_cast<ssize_t>(bytes.size()));
  close(fd);
}

// A process holding an instance in `directory` with segments of `sizes`:
// it reports "<id> <name> <name>..." and then waits to be killed.
class InstanceProcess {
 public:
  InstanceProcess(const std::string& directory,
                  const std::vector<uint64_t>& sizes)
      : child_([&](ReportAndWait report_and_wait) {
          SharedMemoryInstance::Options options;
          options.directory = directory;
          auto instance = SharedMemoryInstance::Create(options);
          if (!instance.ok()) return;
          std::string report = (*instance)->id();
          std::vector<std::unique_ptr<SharedMemorySegment>> segments;
          for (uint64_t size : sizes) {
            auto segment = (*instance)->CreateSegment(size);
            if (!segment.ok()) return;
            if (size > 0) std::memset((*segment)->data(), 0x5a, size);
            absl::StrAppend(&report, " ", (*segment)->name().substr(1));
            segments.push_back(std::move(*segment));
          }
          report_and_wait(report);
        }) {
    std::vector<std::string> words = absl::StrSplit(child_.report(), ' ');
    if (words.empty() || words[0].empty()) return;
    id_ = words[0];
    files_.assign(words.begin() + 1, words.end());
  }

  bool ok() const { return !id_.empty(); }
  const std::string& id() const { return id_; }
  // The segments' file names, without the leading '/'.
  const std::vector<std::string>& files() const { return files_; }
  void Kill() { child_.Kill(); }

 private:
  LingeringChild child_;
  std::string id_;
  std::vector<std::string> files_;
};

// A pid nobody has: a child's that exited and was reaped.
pid_t DeadPid() {
  pid_t pid = fork();
  if (pid == 0) _exit(0);
  waitpid(pid, nullptr, 0);
  return pid;
}

std::shared_ptr<SharedMemoryInstance> MakeInstance(
    const std::string& directory) {
  SharedMemoryInstance::Options options;
  options.directory = directory;
  auto instance = SharedMemoryInstance::Create(options);
  EXPECT_TRUE(instance.ok()) << instance.status();
  return instance.ok() ? *instance : nullptr;
}

TEST(SharedMemoryInstanceTest, LockFileLivesAsLongAsTheSegments) {
  std::string dir = MakeShmDirectory();
  ASSERT_FALSE(dir.empty());
  std::shared_ptr<SharedMemoryInstance> instance = MakeInstance(dir);
  ASSERT_NE(instance, nullptr);
  std::string lock = absl::StrCat("weightd-", instance->id(), ".lock");
  EXPECT_EQ(ListDirectory(dir), std::set<std::string>{lock});

  auto host = instance->CreateSegment(10000);
  ASSERT_TRUE(host.ok()) << host.status();
  auto fake = instance->CreateSegment(4096, "weightd-fake255", true);
  ASSERT_TRUE(fake.ok()) << fake.status();
  EXPECT_EQ((*host)->name(), absl::StrCat("/weightd-", instance->id(), "-0"));
  EXPECT_EQ((*fake)->name(),
            absl::StrCat("/weightd-fake255-", instance->id(), "-1"));
  // The space is reserved at creation, not at the first write.
  EXPECT_GE(AllocatedBytes(dir + (*host)->name()), 10000u);
  EXPECT_GE(AllocatedBytes(dir + (*fake)->name()), 4096u);
  struct stat st;
  ASSERT_EQ(stat((dir + (*host)->name()).c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 10000);
  EXPECT_EQ(st.st_mode & 0777, 0640u);

  // Another open file description cannot take the lock: the instance is live.
  int probe = open((dir + "/" + lock).c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(probe, 0);
  EXPECT_NE(flock(probe, LOCK_EX | LOCK_NB), 0);
  close(probe);

  // Dropping the instance's own reference keeps the lock while segments live.
  std::string host_file = dir + (*host)->name();
  instance.reset();
  EXPECT_TRUE(Exists(dir + "/" + lock));
  host->reset();
  EXPECT_FALSE(Exists(host_file));
  EXPECT_TRUE(Exists(dir + "/" + lock));
  fake->reset();
  EXPECT_EQ(ListDirectory(dir), std::set<std::string>{});
}

TEST(SharedMemoryInstanceTest, RejectsPrefixesReclaimCouldNotRecognize) {
  std::string dir = MakeShmDirectory();
  std::shared_ptr<SharedMemoryInstance> instance = MakeInstance(dir);
  ASSERT_NE(instance, nullptr);
  for (const char* prefix : {"", "other", "weightdx", "weightd-", "weightd-a/b",
                             "weightd-A", "weightd-x-", "/weightd"}) {
    auto segment = instance->CreateSegment(16, prefix);
    EXPECT_TRUE(absl::IsInvalidArgument(segment.status()))
        << "'" << prefix << "': " << segment.status();
  }
  auto too_long =
      instance->CreateSegment(16, "weightd-abcdefghijklmnopqrstuvwx");
  EXPECT_TRUE(absl::IsInvalidArgument(too_long.status())) << too_long.status();
  EXPECT_EQ(ListDirectory(dir), std::set<std::string>{absl::StrCat(
                                    "weightd-", instance->id(), ".lock")});
}

TEST(SharedMemoryInstanceTest, EachInstanceHasItsOwnId) {
  std::string dir = MakeShmDirectory();
  std::set<std::string> ids;
  std::vector<std::shared_ptr<SharedMemoryInstance>> instances;
  for (int i = 0; i < 8; ++i) {
    instances.push_back(MakeInstance(dir));
    ASSERT_NE(instances.back(), nullptr);
    ids.insert(instances.back()->id());
  }
  EXPECT_EQ(ids.size(), 8u);
  EXPECT_EQ(ListDirectory(dir).size(), 8u);
}

TEST(SharedMemoryInstanceTest, ReclaimsAKilledInstanceAndSparesLiveOnes) {
  std::string dir = MakeShmDirectory();
  ASSERT_FALSE(dir.empty());
  InstanceProcess killed(dir, {4096, 1 << 20, 0});
  ASSERT_TRUE(killed.ok());
  InstanceProcess running(dir, {8192});
  ASSERT_TRUE(running.ok());
  std::shared_ptr<SharedMemoryInstance> sibling = MakeInstance(dir);
  ASSERT_NE(sibling, nullptr);
  auto sibling_segment = sibling->CreateSegment(4096, "weightd-fake0");
  ASSERT_TRUE(sibling_segment.ok());

  uint64_t killed_bytes = 0;
  for (const std::string& file : killed.files()) {
    ASSERT_TRUE(Exists(dir + "/" + file)) << file;
    killed_bytes += AllocatedBytes(dir + "/" + file);
  }
  EXPECT_GE(killed_bytes, 4096u + (1 << 20));
  killed.Kill();  // SIGKILL: no destructor ran, its files stay
  std::string killed_lock = absl::StrCat("weightd-", killed.id(), ".lock");
  ASSERT_TRUE(Exists(dir + "/" + killed_lock));

  std::shared_ptr<SharedMemoryInstance> restarted = MakeInstance(dir);
  ASSERT_NE(restarted, nullptr);
  auto own = restarted->CreateSegment(4096);
  ASSERT_TRUE(own.ok());
  auto stats = restarted->ReclaimDeadInstances();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->instances, 1);
  EXPECT_EQ(stats->segments, 3);
  EXPECT_EQ(stats->bytes, killed_bytes);

  std::set<std::string> expected = {
      absl::StrCat("weightd-", running.id(), ".lock"),
      running.files()[0],
      absl::StrCat("weightd-", sibling->id(), ".lock"),
      (*sibling_segment)->name().substr(1),
      absl::StrCat("weightd-", restarted->id(), ".lock"),
      (*own)->name().substr(1),
  };
  EXPECT_EQ(ListDirectory(dir), expected);

  // Nothing left to do a second time.
  stats = restarted->ReclaimDeadInstances();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->segments, 0);
  EXPECT_EQ(stats->instances, 0);

  // Once the running one is killed too, it goes the same way.
  std::string running_segment = running.files()[0];
  running.Kill();
  stats = restarted->ReclaimDeadInstances();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->instances, 1);
  EXPECT_EQ(stats->segments, 1);
  EXPECT_FALSE(Exists(dir + "/" + running_segment));
}

TEST(SharedMemoryInstanceTest, ReclaimsLeftoversWithoutALiveOwner) {
  std::string dir = MakeShmDirectory();
  ASSERT_FALSE(dir.empty());
  pid_t dead = DeadPid();
  // A dead instance that had no segments, segments whose lock file is gone,
  // and segments of an older weightd named by a pid that is not running.
  std::vector<std::string> reclaimable = {
      "weightd-00000000dead.lock",
      "weightd-0123456789ab-0",
      "weightd-fake3-0123456789ab-17",
      absl::StrCat("weightd-", dead, "-0"),
      absl::StrCat("weightd-fake1-", dead, "-4"),
  };
  // Live pids (ours, init) in the old naming; names that only look alike;
  // things that are not regular files.
  std::vector<std::string> kept = {
      absl::StrCat("weightd-", getpid(), "-0"),
      "weightd-1-0",
      absl::StrCat("weightd-pytest-", dead, "-0"),
      absl::StrCat("weightd-", dead, "-x"),
      "weightd-0123456789AB-0",
      "other-0123456789ab-0",
      "weightd-0123456789ab.lock.tmp",
  };
  for (const std::string& name : reclaimable) WriteFile(dir + "/" + name, "x");
  for (const std::string& name : kept) WriteFile(dir + "/" + name, "x");
  ASSERT_EQ(mkdir((dir + "/weightd-aaaaaaaaaaaa-0").c_str(), 0700), 0);
  ASSERT_EQ(symlink((dir + "/target").c_str(),
                    (dir + "/weightd-bbbbbbbbbbbb-0").c_str()),
            0);
  WriteFile(dir + "/target", "x");
  // A lock file that is a symlink is not opened: its instance is left alone.
  ASSERT_EQ(symlink((dir + "/target").c_str(),
                    (dir + "/weightd-cccccccccccc.lock").c_str()),
            0);
  WriteFile(dir + "/weightd-cccccccccccc-0", "x");

  std::shared_ptr<SharedMemoryInstance> instance = MakeInstance(dir);
  ASSERT_NE(instance, nullptr);
  auto stats = instance->ReclaimDeadInstances();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->segments, 4);
  // 00000000dead, 0123456789ab and the dead pid (aaaaaaaaaaaa and
  // bbbbbbbbbbbb have no lock file either, but no regular file to remove).
  EXPECT_EQ(stats->instances, 3);

  std::set<std::string> left = ListDirectory(dir);
  for (const std::string& name : reclaimable) {
    EXPECT_EQ(left.count(name), 0u) << name;
  }
  for (const std::string& name : kept) EXPECT_EQ(left.count(name), 1u) << name;
  for (const char* name :
       {"weightd-aaaaaaaaaaaa-0", "weightd-bbbbbbbbbbbb-0", "target",
        "weightd-cccccccccccc.lock", "weightd-cccccccccccc-0"}) {
    EXPECT_EQ(left.count(name), 1u) << name;
  }
}

TEST(SharedMemoryInstanceTest, LeavesAnotherUsersFilesAlone) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to chown test files";
  std::string dir = MakeShmDirectory();
  ASSERT_FALSE(dir.empty());
  const uid_t other = 4242;
  pid_t dead = DeadPid();
  // Dead-looking by every rule (unlocked lock file, missing lock file, dead
  // pid), but another user's.
  std::vector<std::string> theirs = {
      "weightd-0000000000aa.lock",
      "weightd-0000000000aa-0",
      "weightd-0000000000bb-0",
      absl::StrCat("weightd-", dead, "-0"),
  };
  for (const std::string& name : theirs) {
    WriteFile(dir + "/" + name, "x");
    ASSERT_EQ(chown((dir + "/" + name).c_str(), other, other), 0);
  }
  // Our segment under their (unlocked) lock file: the instance is theirs.
  WriteFile(dir + "/weightd-0000000000aa-1", "x");
  // Our dead instance next to theirs still goes.
  WriteFile(dir + "/weightd-0000000000cc.lock", "");
  WriteFile(dir + "/weightd-0000000000cc-0", "x");

  std::shared_ptr<SharedMemoryInstance> instance = MakeInstance(dir);
  ASSERT_NE(instance, nullptr);
  auto stats = instance->ReclaimDeadInstances();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->segments, 1);
  std::set<std::string> left = ListDirectory(dir);
  for (const std::string& name : theirs) {
    EXPECT_EQ(left.count(name), 1u) << name;
  }
  EXPECT_EQ(left.count("weightd-0000000000aa-1"), 1u);
  EXPECT_EQ(left.count("weightd-0000000000cc.lock"), 0u);
  EXPECT_EQ(left.count("weightd-0000000000cc-0"), 0u);
}

// Through the real /dev/shm: segments of a killed process using the default
// instance are reclaimed (only those: any other test's live ones stay).
TEST(SharedMemoryInstanceTest, ReclaimsAKilledProcessesSegmentsInDevShm) {
  InstanceProcess killed("/dev/shm", {4096, 65536});
  ASSERT_TRUE(killed.ok());
  for (const std::string& file : killed.files()) {
    ASSERT_TRUE(Exists("/dev/shm/" + file)) << file;
  }
  killed.Kill();
  auto live = SharedMemorySegment::Create(4096);
  ASSERT_TRUE(live.ok()) << live.status();
  auto instance = SharedMemoryInstance::Default();
  ASSERT_TRUE(instance.ok()) << instance.status();
  auto stats = (*instance)->ReclaimDeadInstances();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_GE(stats->segments, 2);
  EXPECT_GE(stats->bytes, 4096u + 65536u);
  for (const std::string& file : killed.files()) {
    EXPECT_FALSE(Exists("/dev/shm/" + file)) << file;
  }
  EXPECT_FALSE(Exists(absl::StrCat("/dev/shm/weightd-", killed.id(), ".lock")));
  EXPECT_TRUE(Exists("/dev/shm" + (*live)->name()));
  auto mapping = OpenSharedSegment((*live)->name(), 4096);
  EXPECT_TRUE(mapping.ok()) << mapping.status();
}

TEST(HugePagePolicyTest, ReadsTheBracketedSysfsChoice) {
  EXPECT_EQ(SelectedSysfsChoice("always [madvise] never\n"), "madvise");
  EXPECT_EQ(SelectedSysfsChoice("always within_size advise [never] deny force"),
            "never");
  EXPECT_EQ(SelectedSysfsChoice("always madvise never"), "");
  EXPECT_EQ(SelectedSysfsChoice(""), "");
}

TEST(HugePagePolicyTest, FindsTheMountsHugeOptionByDevice) {
  const std::string mountinfo =
      "22 1 0:21 / /dev/shm rw,nosuid shared:2 - tmpfs tmpfs rw,size=8192k\n"
      "23 1 0:22 / /mnt/huge rw shared:3 - tmpfs tmpfs "
      "rw,size=64m,huge=advise\n"
      "24 1 0:23 / /mnt/a\\040b rw - tmpfs none rw,huge=within_size,mode=755\n";
  EXPECT_EQ(MountHugeOption(mountinfo, makedev(0, 21)), "never");
  EXPECT_EQ(MountHugeOption(mountinfo, makedev(0, 22)), "advise");
  EXPECT_EQ(MountHugeOption(mountinfo, makedev(0, 23)), "within_size");
  EXPECT_EQ(MountHugeOption(mountinfo, makedev(8, 1)), "");
  EXPECT_EQ(MountHugeOption("garbage\n22 1\n", makedev(0, 21)), "");
}

TEST(HugePagePolicyTest, DefaultInstanceDescribesWhatIsInEffect) {
  const std::string line = DescribeDefaultHugePages();
  EXPECT_TRUE(absl::StartsWith(line, "shared memory: ")) << line;
  EXPECT_TRUE(absl::StrContains(line, "/dev/shm")) << line;
  EXPECT_TRUE(absl::StrContains(line, "; anonymous: ")) << line;
}

// Big enough to be split over threads; not a multiple of 2 MiB.
TEST(SharedMemoryTest, PopulatedSegmentHoldsWhatIsWritten) {
  const uint64_t size = (96ull << 20) + 12345;
  auto segment = SharedMemorySegment::Create(size, "weightd", true);
  ASSERT_TRUE(segment.ok()) << segment.status();
  uint8_t* data = (*segment)->data();
  // Fresh: every byte zero, including across each thread's slice boundary.
  for (uint64_t off = 0; off < size; off += 4096) ASSERT_EQ(data[off], 0);
  EXPECT_EQ(data[size - 1], 0);
  for (uint64_t i = 0; i < size; ++i) data[i] = static_cast<uint8_t>(i * 7);
  auto mapping = OpenSharedSegment((*segment)->name(), size);
  ASSERT_TRUE(mapping.ok()) << mapping.status();
  for (uint64_t i = 0; i < size; i += 4093) {
    ASSERT_EQ((*mapping)->data()[i], static_cast<uint8_t>(i * 7)) << i;
  }
  EXPECT_EQ((*mapping)->data()[size - 1], static_cast<uint8_t>((size - 1) * 7));
}

TEST(SharedMemoryTest, PrefaultKeepsContentsAndIsIdempotent) {
  std::vector<uint8_t> bytes(5 << 20, 3);
  EXPECT_EQ(PrefaultForWrite(bytes.data(), bytes.size()), 0);
  EXPECT_EQ(PrefaultForWrite(bytes.data(), 0), 0);
  EXPECT_EQ(bytes.front(), 3);
  EXPECT_EQ(bytes.back(), 3);
}

TEST(HostMemoryTest, FreshHostMemoryIsZeroedAndWritable) {
  std::vector<HostMemoryOptions> choices(4);
  choices[1].prefault = !choices[1].prefault;
  choices[2].huge_pages = !choices[2].huge_pages;
  choices[3].prefault = !choices[3].prefault;
  choices[3].huge_pages = !choices[3].huge_pages;
  for (const HostMemoryOptions& options : choices)
    for (uint64_t size :
         {uint64_t{1}, uint64_t{4096}, (uint64_t{70} << 20) + 1}) {
      SCOPED_TRACE(absl::StrCat("huge_pages ", options.huge_pages, " prefault ",
                                options.prefault, " size ", size));
      auto buffer = AllocateHostMemory(size, options);
      ASSERT_TRUE(buffer.ok()) << buffer.status();
      EXPECT_EQ((*buffer)->size(), size);
      EXPECT_EQ(reinterpret_cast<uintptr_t>((*buffer)->data()) % 4096, 0u);
      for (uint64_t i = 0; i < size; i += 4096)
        ASSERT_EQ((*buffer)->data()[i], 0);
      std::memset((*buffer)->data(), 0x5a, size);
      EXPECT_EQ((*buffer)->data()[size - 1], 0x5a);
    }
  EXPECT_TRUE(absl::IsResourceExhausted(
      AllocateHostMemory(uint64_t{1} << 50).status()));
}

}  // namespace
}  // namespace weightd
