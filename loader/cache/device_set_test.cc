#include "loader/cache/device_set.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "loader/common/test_child.h"
#include "loader/device/shared_memory.h"

namespace weightd {
namespace {

bool InDevShm(const std::string& file) {
  struct stat st;
  return lstat(absl::StrCat("/dev/shm/", file).c_str(), &st) == 0;
}

// A child makes host segments in /dev/shm and is SIGKILLed: its files stay.
// Returns them (lock file first).
std::vector<std::string> FilesOfAKilledProcess() {
  testing::LingeringChild child([](testing::ReportAndWait report) {
    auto a = SharedMemorySegment::Create(4096);
    auto b = SharedMemorySegment::Create(1 << 16, "weightd-fake0");
    auto instance = SharedMemoryInstance::Default();
    if (!a.ok() || !b.ok() || !instance.ok()) return;
    report(absl::StrCat("weightd-", (*instance)->id(), ".lock ",
                        (*a)->name().substr(1), " ", (*b)->name().substr(1)));
  });
  child.Kill();
  if (child.report().empty()) return {};
  return absl::StrSplit(child.report(), ' ');
}

TEST(DeviceSetTest, StartReclaimsWhatAKilledDaemonLeftInDevShm) {
  std::vector<std::string> leftovers = FilesOfAKilledProcess();
  ASSERT_EQ(leftovers.size(), 3u);
  for (const std::string& file : leftovers) ASSERT_TRUE(InDevShm(file)) << file;

  auto devices = DeviceSet::Create(DeviceSet::Options());
  ASSERT_TRUE(devices.ok()) << devices.status();
  for (const std::string& file : leftovers)
    EXPECT_FALSE(InDevShm(file)) << file;

  // The set keeps one instance (one id, one held lock file) for its life.
  auto instance = SharedMemoryInstance::Default();
  ASSERT_TRUE(instance.ok()) << instance.status();
  std::string prefix = absl::StrCat("/weightd-", (*instance)->id(), "-");
  instance->reset();
  for (int i = 0; i < 2; ++i) {
    auto segment = (*devices)->CreateHostSegment(8192);
    ASSERT_TRUE(segment.ok()) << segment.status();
    EXPECT_EQ(segment->name.rfind(prefix, 0), 0u) << segment->name;
    std::memset(segment->data, 1, 8192);
  }
}

long MinorFaults() {
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_minflt;
}

// The staging ring is the daemon's, not the load's: a GPU's pipeline (and its
// pinned buffers) is made by the first load and reused by every later one.
// Seen in page faults: fresh buffers fault in every page, reused ones none.
TEST(DeviceSetTest, LoadsOntoOneGpuReuseItsStagingBuffers) {
  DeviceSet::Options options;
  options.fake_gpus = 1;
  options.io_backend = "pread";
  options.staging_chunk_bytes = 1 << 20;
  options.staging_buffers = 4;
  // A fake GPU without a copy delay is host-addressed (Device::HostAddress):
  // loads go straight into the arena, with no ring to reuse.
  options.fake_gpu_copy_delay = absl::Microseconds(1);
  auto devices = DeviceSet::Create(options);
  ASSERT_TRUE(devices.ok()) << devices.status();
  char path[] = "/tmp/weightd-device-set-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  unlink(path);
  std::vector<uint8_t> bytes(64 << 10, 7);
  ASSERT_EQ(write(fd, bytes.data(), bytes.size()),
            static_cast<ssize_t>(bytes.size()));
  const std::vector<CopyRange> ranges = {
      CopyRange::FromFile(0, bytes.size(), 0)};
  std::vector<long> faults;
  std::vector<FilledArena> arenas;
  for (int load = 0; load < 3; ++load) {
    const long before = MinorFaults();
    const ArenaFile file{fd, path};
    auto arena = (*devices)->FillGpuArena(0, {&file, 1}, bytes.size(), ranges,
                                          nullptr, nullptr);
    ASSERT_TRUE(arena.ok()) << arena.status();
    faults.push_back(MinorFaults() - before);
    arenas.push_back(std::move(*arena));
  }
  close(fd);
  // 4 MiB of staging is 1,024 pages: the first load faults them in, the
  // others (same arena size, same everything else) do not.
  const long staging_pages = (4 << 20) / 4096;
  EXPECT_GE(faults[0] - faults[1], staging_pages * 3 / 4)
      << faults[0] << " " << faults[1];
  EXPECT_GE(faults[0] - faults[2], staging_pages * 3 / 4)
      << faults[0] << " " << faults[2];
}

}  // namespace
}  // namespace weightd
