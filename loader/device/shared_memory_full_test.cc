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
#include <cstring>
#include <set>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
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
  std::set<std::string> names;
  DIR* dir = opendir("/dev/shm");
  if (dir == nullptr) return names;
  while (struct dirent* entry = readdir(dir)) {
    std::string name = entry->d_name;
    if (name != "." && name != "..") names.insert(name);
  }
  closedir(dir);
  return names;
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

}  // namespace
}  // namespace weightd
