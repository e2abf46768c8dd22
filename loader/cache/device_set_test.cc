#include "loader/cache/device_set.h"

#include <signal.h>
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

}  // namespace
}  // namespace weightd
