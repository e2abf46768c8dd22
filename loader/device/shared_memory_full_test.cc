// A /dev/shm too small for what is asked (Docker's default is 64 MiB): every
// path that creates shared memory fails with RESOURCE_EXHAUSTED naming the
// size and the free space, leaves nothing behind, and never SIGBUSes. Runs in
// a private mount namespace of its own with an 8 MiB tmpfs over /dev/shm;
// skips where unshare(CLONE_NEWNS) or mount is not permitted.
#include <dirent.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "loader/common/test_dir.h"
#include "loader/device/arena_handle.h"
#include "loader/device/fault_injecting_fake_device.h"
#include "loader/device/shared_memory.h"

namespace weightd {
namespace {

constexpr uint64_t kShmBytes = 8 << 20;

// Empty when /dev/shm is now our own 8 MiB tmpfs, else why not.
std::string MountSmallDevShm() {
  if (unshare(CLONE_NEWNS) != 0) {
    return absl::StrCat("unshare(CLONE_NEWNS): ", std::strerror(errno),
                        " (needs root outside a locked-down container)");
  }
  // Private first, so the tmpfs below never shows in the host's namespace.
  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    return absl::StrCat("mount --make-rprivate /: ", std::strerror(errno));
  }
  if (mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV,
            "size=8m,mode=1777") != 0) {
    return absl::StrCat("mount -t tmpfs -o size=8m tmpfs /dev/shm: ",
                        std::strerror(errno));
  }
  return "";
}

std::set<std::string> DevShmFiles() {
  return testing::ListDirectory("/dev/shm");
}

uint64_t DevShmFreeBytes() {
  struct statvfs fs;
  if (statvfs("/dev/shm", &fs) != 0) return 0;
  return uint64_t{fs.f_bavail} * fs.f_frsize;
}

class SmallDevShmTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    skip_reason_ = new std::string(MountSmallDevShm());
  }
  void SetUp() override {
    if (!skip_reason_->empty()) GTEST_SKIP() << *skip_reason_;
    ASSERT_EQ(DevShmFiles(), std::set<std::string>{});
    ASSERT_EQ(DevShmFreeBytes(), kShmBytes);
  }
  void TearDown() override {
    if (!skip_reason_->empty()) return;
    // Nothing left behind: no segment, and (no segment holding it) no lock.
    EXPECT_EQ(DevShmFiles(), std::set<std::string>{});
    EXPECT_EQ(DevShmFreeBytes(), kShmBytes);
  }

  // The error names what was asked, what is free and where.
  static void ExpectNamesTheSizes(const absl::Status& status, uint64_t asked,
                                  uint64_t free) {
    EXPECT_TRUE(absl::IsResourceExhausted(status)) << status;
    EXPECT_TRUE(absl::StrContains(status.message(),
                                  absl::StrCat("reserve ", asked, " bytes")))
        << status;
    EXPECT_TRUE(absl::StrContains(
        status.message(), absl::StrCat("/dev/shm has ", free, " bytes (")))
        << status;
    EXPECT_TRUE(absl::StrContains(status.message(), "No space left on device"))
        << status;
  }

  static std::string* skip_reason_;
};

std::string* SmallDevShmTest::skip_reason_ = nullptr;

TEST_F(SmallDevShmTest, SegmentLargerThanTheFilesystem) {
  for (bool populate : {false, true}) {
    auto segment = SharedMemorySegment::Create(16 << 20, "weightd", populate);
    ExpectNamesTheSizes(segment.status(), 16 << 20, kShmBytes);
    EXPECT_EQ(DevShmFiles(), std::set<std::string>{});
  }
}

// ftruncate alone would hand out both (sparse) and the first write past the
// free space would SIGBUS the process.
TEST_F(SmallDevShmTest, SecondSegmentThatNoLongerFits) {
  auto first = SharedMemorySegment::Create(5 << 20);
  ASSERT_TRUE(first.ok()) << first.status();
  uint64_t free = DevShmFreeBytes();
  EXPECT_LE(free, kShmBytes - (5 << 20));
  auto second = SharedMemorySegment::Create(5 << 20);
  ExpectNamesTheSizes(second.status(), 5 << 20, free);
  if (second.ok()) std::memset((*second)->data(), 1, 5 << 20);
  // Only the first segment and its instance's lock file are there.
  EXPECT_EQ(DevShmFiles().size(), 2u);
  EXPECT_EQ(DevShmFreeBytes(), free);
  std::memset((*first)->data(), 7, 5 << 20);
  EXPECT_EQ((*first)->data()[(5 << 20) - 1], 7);
  // What is left still fits.
  auto third = SharedMemorySegment::Create(2 << 20, "weightd", true);
  ASSERT_TRUE(third.ok()) << third.status();
  std::memset((*third)->data(), 9, 2 << 20);
}

// The fake GPU's own budget (16 GiB) is far above what /dev/shm holds.
TEST_F(SmallDevShmTest, FakeGpuArena) {
  auto device = FaultInjectingFakeDevice::Create(FakeDevice::Options());
  ASSERT_TRUE(device.ok());
  FaultInjectingFakeDevice& gpu = **device;
  auto arena = gpu.Allocate(16 << 20);
  ExpectNamesTheSizes(arena.status(), 16 << 20, kShmBytes);
  EXPECT_TRUE(absl::StartsWith(arena.status().message(), "fake GPU 0: "))
      << arena.status();
  EXPECT_TRUE(absl::StrContains(arena.status().message(), "/weightd-fake0-"))
      << arena.status();
  EXPECT_EQ(gpu.allocated_bytes(), 0u);
  EXPECT_EQ(gpu.live_arenas(), 0);
  EXPECT_EQ(DevShmFiles(), std::set<std::string>{});

  arena = gpu.Allocate(6 << 20);
  ASSERT_TRUE(arena.ok()) << arena.status();
  std::vector<uint8_t> bytes(6 << 20, 5);
  ASSERT_TRUE(
      gpu.CopyToDeviceAsync(arena->get(), 0, bytes.data(), bytes.size(), 0)
          .ok());
  ASSERT_TRUE(gpu.Synchronize().ok());
  auto handle = gpu.ExportHandle(**arena);
  ASSERT_TRUE(handle.ok()) << handle.status();
  auto opened = OpenArenaHandle(*handle, 6 << 20, gpu.uuid());
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_EQ((*opened)->host_data()[(6 << 20) - 1], 5);
  auto more = gpu.Allocate(6 << 20);
  EXPECT_TRUE(absl::IsResourceExhausted(more.status())) << more.status();
  EXPECT_EQ(gpu.allocated_bytes(), 6u << 20);
  EXPECT_EQ(gpu.live_arenas(), 1);
}

// ---- huge pages: tmpfs mounts of our own with each huge= choice ----

// Huge (PMD) pages mapped in the mapping that starts at `address`, in KiB,
// from /proc/self/smaps; -1 when the mapping is not found.
long HugeKiBMapped(const void* address) {
  FILE* f = std::fopen("/proc/self/smaps", "r");
  if (f == nullptr) return -1;
  char line[512];
  bool in_mapping = false;
  long kib = -1;
  const unsigned long want = reinterpret_cast<unsigned long>(address);
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    unsigned long start = 0, end = 0;
    if (std::sscanf(line, "%lx-%lx ", &start, &end) == 2 &&
        std::strchr(line, ':') != nullptr && line[0] != ' ') {
      if (in_mapping) break;
      in_mapping = start == want;
      if (in_mapping) kib = 0;
      continue;
    }
    long value = 0;
    if (in_mapping &&
        (std::sscanf(line, "ShmemPmdMapped: %ld kB", &value) == 1 ||
         std::sscanf(line, "FilePmdMapped: %ld kB", &value) == 1)) {
      kib += value;
    }
  }
  std::fclose(f);
  return kib;
}

bool KernelHasTransparentHugePages() {
  return access("/sys/kernel/mm/transparent_hugepage/enabled", R_OK) == 0;
}

std::string ListOf(const std::string& dir) {
  std::string names;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return "?";
  while (struct dirent* entry = readdir(d)) {
    std::string name = entry->d_name;
    if (name != "." && name != "..") absl::StrAppend(&names, name, " ");
  }
  closedir(d);
  return names;
}

uint64_t FreeBytes(const std::string& dir) {
  struct statvfs fs;
  if (statvfs(dir.c_str(), &fs) != 0) return 0;
  return uint64_t{fs.f_bavail} * fs.f_frsize;
}

class HugeTmpfsTest : public ::testing::Test {
 protected:
  // A fresh tmpfs of `size` at a new directory, huge=`huge`; empty on
  // failure with `skip` set.
  std::string Mount(const std::string& options) {
    if (unshare(CLONE_NEWNS) != 0 ||
        mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
      skip_ = absl::StrCat("private mount namespace: ", std::strerror(errno));
      return "";
    }
    char dir[] = "/tmp/weightd-huge-XXXXXX";
    if (mkdtemp(dir) == nullptr) {
      skip_ = absl::StrCat("mkdtemp: ", std::strerror(errno));
      return "";
    }
    if (mount("tmpfs", dir, "tmpfs", MS_NOSUID | MS_NODEV, options.c_str()) !=
        0) {
      skip_ = absl::StrCat("mount -o ", options, ": ", std::strerror(errno));
      rmdir(dir);
      return "";
    }
    mounted_.push_back(dir);
    return dir;
  }
  std::shared_ptr<SharedMemoryInstance> Instance(const std::string& dir) {
    SharedMemoryInstance::Options options;
    options.directory = dir;
    auto instance = SharedMemoryInstance::Create(options);
    EXPECT_TRUE(instance.ok()) << instance.status();
    return instance.ok() ? *instance : nullptr;
  }
  void TearDown() override {
    for (const std::string& dir : mounted_) {
      umount2(dir.c_str(), MNT_DETACH);
      rmdir(dir.c_str());
    }
  }
  std::string skip_;
  std::vector<std::string> mounted_;
};

// Fills a populated segment and reads it back; returns the huge KiB mapped.
long FillAndCheck(SharedMemorySegment& segment) {
  uint8_t* data = segment.data();
  for (uint64_t i = 0; i < segment.size(); i += 4096) {
    EXPECT_EQ(data[i], 0) << i;
    if (data[i] != 0) break;
  }
  for (uint64_t i = 0; i < segment.size(); ++i) {
    data[i] = static_cast<uint8_t>(i * 13 + 1);
  }
  auto mapping = OpenSharedSegment(segment.name(), segment.size());
  // The instance is not in /dev/shm: read through our own mapping instead.
  if (!mapping.ok()) {
    for (uint64_t i = 0; i < segment.size(); i += 4099) {
      EXPECT_EQ(data[i], static_cast<uint8_t>(i * 13 + 1));
    }
  }
  return HugeKiBMapped(data);
}

TEST_F(HugeTmpfsTest, AdviseMountGetsHugePagesByFaultingAnAdvisedMapping) {
  const std::string dir = Mount("size=64m,huge=advise,mode=1777");
  if (dir.empty()) GTEST_SKIP() << skip_;
  auto instance = Instance(dir);
  ASSERT_NE(instance, nullptr);
  EXPECT_EQ(instance->huge_pages().segments, HugePageMode::kAdvise)
      << instance->huge_pages().Describe();
  EXPECT_TRUE(absl::StrContains(instance->huge_pages().Describe(),
                                absl::StrCat(dir, " mounted huge=advise")))
      << instance->huge_pages().Describe();
  auto segment = instance->CreateSegment((16 << 20) + 4096, "weightd", true);
  ASSERT_TRUE(segment.ok()) << segment.status();
  const long huge = FillAndCheck(**segment);
  if (KernelHasTransparentHugePages()) {
    EXPECT_GE(huge, 2048) << "no huge page in the advised segment";
  }
  // All of it is allocated, as fallocate would have.
  EXPECT_LE(FreeBytes(dir), (64u << 20) - (16u << 20));
}

TEST_F(HugeTmpfsTest, AdviseMountTooSmallIsStillResourceExhausted) {
  const std::string dir = Mount("size=8m,huge=advise,mode=1777");
  if (dir.empty()) GTEST_SKIP() << skip_;
  auto instance = Instance(dir);
  ASSERT_NE(instance, nullptr);
  const std::string lock = absl::StrCat("weightd-", instance->id(), ".lock ");
  auto too_big = instance->CreateSegment(16 << 20, "weightd", true);
  EXPECT_TRUE(absl::IsResourceExhausted(too_big.status())) << too_big.status();
  EXPECT_TRUE(absl::StrContains(too_big.status().message(),
                                absl::StrCat("reserve ", 16 << 20, " bytes")))
      << too_big.status();
  EXPECT_TRUE(
      absl::StrContains(too_big.status().message(),
                        absl::StrCat(dir, " has ", 8 << 20, " bytes (")))
      << too_big.status();
  EXPECT_TRUE(
      absl::StrContains(too_big.status().message(), "No space left on device"))
      << too_big.status();
  EXPECT_EQ(ListOf(dir), lock);
  EXPECT_EQ(FreeBytes(dir), 8u << 20);

  auto first = instance->CreateSegment(6 << 20, "weightd", true);
  ASSERT_TRUE(first.ok()) << first.status();
  FillAndCheck(**first);
  auto second = instance->CreateSegment(4 << 20, "weightd", true);
  EXPECT_TRUE(absl::IsResourceExhausted(second.status())) << second.status();
  EXPECT_EQ(FreeBytes(dir), 2u << 20);
}

TEST_F(HugeTmpfsTest, AlwaysMountGetsHugePagesThroughFallocate) {
  const std::string dir = Mount("size=64m,huge=always,mode=1777");
  if (dir.empty()) GTEST_SKIP() << skip_;
  auto instance = Instance(dir);
  ASSERT_NE(instance, nullptr);
  EXPECT_EQ(instance->huge_pages().segments, HugePageMode::kAlways);
  auto segment = instance->CreateSegment(8 << 20, "weightd", true);
  ASSERT_TRUE(segment.ok()) << segment.status();
  const long huge = FillAndCheck(**segment);
  if (KernelHasTransparentHugePages()) EXPECT_GE(huge, 2048);
  auto too_big = instance->CreateSegment(64 << 20, "weightd", true);
  EXPECT_TRUE(absl::IsResourceExhausted(too_big.status())) << too_big.status();
}

TEST_F(HugeTmpfsTest, NeverMountSaysSo) {
  const std::string dir = Mount("size=16m,mode=1777");
  if (dir.empty()) GTEST_SKIP() << skip_;
  auto instance = Instance(dir);
  ASSERT_NE(instance, nullptr);
  EXPECT_EQ(instance->huge_pages().segments, HugePageMode::kNever);
  EXPECT_TRUE(absl::StrContains(instance->huge_pages().Describe(),
                                "shared memory: 4 KiB pages ("))
      << instance->huge_pages().Describe();
  auto segment = instance->CreateSegment(4 << 20, "weightd", true);
  ASSERT_TRUE(segment.ok()) << segment.status();
  EXPECT_EQ(FillAndCheck(**segment), 0);
}

}  // namespace
}  // namespace weightd
