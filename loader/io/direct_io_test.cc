// O_DIRECT reopening, refusals remembered per file system, sysfs queue shape,
// page-cache residency.
#include "loader/io/direct_io.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "loader/common/test_child.h"
#include "loader/io/test_util.h"

namespace weightd {
namespace {

using testing::TempPath;
using testing::WritePatternFile;

void WriteText(const std::string& path, const std::string& text) {
  FILE* f = std::fopen(path.c_str(), "w");
  ASSERT_NE(f, nullptr) << path;
  std::fputs(text.c_str(), f);
  std::fclose(f);
}

TEST(DirectIoTest, ParsesModes) {
  EXPECT_EQ(*ParseDirectIoMode("auto"), DirectIoMode::kAuto);
  EXPECT_EQ(*ParseDirectIoMode(""), DirectIoMode::kAuto);
  EXPECT_EQ(*ParseDirectIoMode("OFF"), DirectIoMode::kOff);
  EXPECT_FALSE(ParseDirectIoMode("on").ok());
  EXPECT_EQ(DirectIoSummary(DirectIoMode::kOff), "off: --direct_io=off");
}

TEST(DirectIoTest, ReopensTheSameFileDirect) {
  std::string path = WritePatternFile("direct", 1 << 20, 3);
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  // The path now names another file: the reopen still finds ours.
  std::string moved = path + ".moved";
  ASSERT_EQ(rename(path.c_str(), moved.c_str()), 0);
  WriteText(path, "another file");
  DirectFd direct = OpenDirectIo(fd, path);
  if (!direct.fd.valid()) {
    close(fd);
    unlink(path.c_str());
    unlink(moved.c_str());
    GTEST_SKIP() << "O_DIRECT refused here: " << direct.why_not;
  }
  EXPECT_GE(direct.alignment, 512u);
  EXPECT_EQ(direct.alignment & (direct.alignment - 1), 0u);
  struct stat a, b;
  ASSERT_EQ(fstat(fd, &a), 0);
  ASSERT_EQ(fstat(direct.fd.get(), &b), 0);
  EXPECT_EQ(a.st_ino, b.st_ino);
  EXPECT_NE(fcntl(direct.fd.get(), F_GETFL) & O_DIRECT, 0);
  close(fd);
  unlink(path.c_str());
  unlink(moved.c_str());
}

// In a mount namespace of its own, on a ramfs (which has no direct I/O): the
// refusal comes back as a reason, is remembered for the file system (a second
// file is not tried) and shows in the summary.
TEST(DirectIoTest, FileSystemThatRefusesIsRememberedOnce) {
  std::string dir = TempPath("ramfs");
  ASSERT_EQ(mkdir(dir.c_str(), 0700), 0);
  int rc = testing::RunInChild([&] {
    if (unshare(CLONE_NEWNS) != 0) return 77;
    if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
      return 77;
    }
    if (mount("ramfs", dir.c_str(), "ramfs", 0, nullptr) != 0) return 77;
    std::string a = dir + "/a", b = dir + "/b";
    for (const std::string& p : {a, b}) {
      int w = open(p.c_str(), O_WRONLY | O_CREAT, 0600);
      if (w < 0 || write(w, "0123456789", 10) != 10) return 2;
      close(w);
    }
    int fa = open(a.c_str(), O_RDONLY), fb = open(b.c_str(), O_RDONLY);
    if (fa < 0 || fb < 0) return 3;
    DirectFd da = OpenDirectIo(fa, a);
    if (da.fd.valid()) return 4;
    if (da.why_not.find("Invalid argument") == std::string::npos) return 5;
    DirectFd db = OpenDirectIo(fb, b);
    if (db.fd.valid() || db.why_not != da.why_not) return 6;  // remembered
    std::string summary = DirectIoSummary(DirectIoMode::kAuto);
    if (summary.rfind("on; off on device ", 0) != 0) return 7;
    if (summary.find(da.why_not) == std::string::npos) return 8;
    return 0;
  });
  rmdir(dir.c_str());
  if (rc == 77) GTEST_SKIP() << "cannot mount a ramfs here (unshare/mount)";
  EXPECT_EQ(rc, 0);
}

TEST(DirectIoTest, BlockQueueOfAPartitionIsItsDisk) {
  std::string root = TempPath("sysfs");
  ASSERT_EQ(mkdir(root.c_str(), 0700), 0);
  std::string disk = root + "/vdq";
  ASSERT_EQ(mkdir(disk.c_str(), 0700), 0);
  ASSERT_EQ(mkdir((disk + "/queue").c_str(), 0700), 0);
  WriteText(disk + "/queue/nr_requests", "1023\n");
  WriteText(disk + "/queue/max_sectors_kb", "1280\n");
  WriteText(disk + "/queue/logical_block_size", "4096\n");
  std::string part = disk + "/vdq1";
  ASSERT_EQ(mkdir(part.c_str(), 0700), 0);
  WriteText(part + "/partition", "1\n");
  for (const std::string& at : {disk, part}) {
    BlockQueueInfo q = BlockQueueAt(at);
    EXPECT_EQ(q.nr_requests, 1023u) << at;
    EXPECT_EQ(q.max_sectors_bytes, 1280u << 10) << at;
    EXPECT_EQ(q.logical_block_size, 4096u) << at;
  }
  // Garbage and absent files are unknown, not errors.
  WriteText(disk + "/queue/nr_requests", "lots\n");
  unlink((disk + "/queue/max_sectors_kb").c_str());
  BlockQueueInfo q = BlockQueueAt(disk);
  EXPECT_EQ(q.nr_requests, 0u);
  EXPECT_EQ(q.max_sectors_bytes, 0u);
  EXPECT_EQ(BlockQueueAt(root + "/absent").nr_requests, 0u);
  std::string cmd = absl::StrCat("rm -rf '", root, "'");
  EXPECT_EQ(system(cmd.c_str()), 0);
}

TEST(DirectIoTest, CachedFractionSeesEviction) {
  std::string path = WritePatternFile("cached", 4 << 20, 5);
  int fd = open(path.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  std::vector<char> buf(4 << 20);
  ASSERT_EQ(pread(fd, buf.data(), buf.size(), 0),
            static_cast<ssize_t>(buf.size()));
  EXPECT_GT(CachedFraction(fd, 0, 4 << 20), 0.9);
  ASSERT_EQ(fdatasync(fd), 0);
  ASSERT_EQ(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
  double after = CachedFraction(fd, 100, (4 << 20) - 200);
  EXPECT_GE(after, 0.0);
  EXPECT_LT(after, 0.5);
  EXPECT_EQ(CachedFraction(fd, 0, 0), 1.0);
  close(fd);
  unlink(path.c_str());
}

}  // namespace
}  // namespace weightd
