#include "loader/io/mapped_file.h"

#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstdio>

#include "gtest/gtest.h"
#include "loader/io/test_util.h"

namespace weightd {
namespace {

using testing::FirstPatternMismatch;
using testing::TempPath;
using testing::WritePatternFile;

TEST(MappedFileTest, MapsContentsAndIdentity) {
  std::string path = WritePatternFile("mapped", 100000, 7);
  auto file = MappedFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->size(), 100000u);
  EXPECT_EQ(FirstPatternMismatch((*file)->data(), 100000, 0, 7), -1);
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  const FileIdentity& id = (*file)->identity();
  EXPECT_EQ(id.device, static_cast<uint64_t>(st.st_dev));
  EXPECT_EQ(id.inode, static_cast<uint64_t>(st.st_ino));
  EXPECT_EQ(id.size, 100000u);
  EXPECT_EQ(id.mtime_ns, st.st_mtim.tv_sec * 1000000000ll + st.st_mtim.tv_nsec);
  EXPECT_GE((*file)->fd(), 0);
  auto again = StatFileIdentity(path);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, id);
  auto unchanged = (*file)->Unchanged();
  ASSERT_TRUE(unchanged.ok());
  EXPECT_TRUE(*unchanged);
  unlink(path.c_str());
}

TEST(MappedFileTest, EmptyFile) {
  std::string path = WritePatternFile("empty", 0, 1);
  auto file = MappedFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->size(), 0u);
  EXPECT_EQ((*file)->data(), nullptr);
  (*file)->AdviseSequential();
  (*file)->AdviseWillNeed(0, 10);
  unlink(path.c_str());
}

TEST(MappedFileTest, Errors) {
  auto missing = MappedFile::Open(TempPath("does-not-exist"));
  EXPECT_TRUE(absl::IsNotFound(missing.status())) << missing.status();
  EXPECT_NE(missing.status().message().find("open("), std::string::npos);
  auto dir = MappedFile::Open("/");
  EXPECT_TRUE(absl::IsInvalidArgument(dir.status())) << dir.status();
}

TEST(MappedFileTest, ChangedFileIsDetected) {
  std::string path = WritePatternFile("changed", 4096, 3);
  auto file = MappedFile::Open(path);
  ASSERT_TRUE(file.ok());
  // A different mtime makes a different identity.
  struct timeval times[2] = {{1000, 0}, {1000, 0}};
  ASSERT_EQ(utimes(path.c_str(), times), 0);
  auto unchanged = (*file)->Unchanged();
  ASSERT_TRUE(unchanged.ok());
  EXPECT_FALSE(*unchanged);
  unlink(path.c_str());
  unchanged = (*file)->Unchanged();
  ASSERT_TRUE(unchanged.ok());
  EXPECT_FALSE(*unchanged);
  // The mapping stays readable after the unlink.
  EXPECT_EQ(FirstPatternMismatch((*file)->data(), 4096, 0, 3), -1);
}

TEST(MappedFileTest, OpenDirectWhereSupported) {
  std::string path = WritePatternFile("direct", 8192, 5);
  auto file = MappedFile::Open(path);
  ASSERT_TRUE(file.ok());
  auto direct = (*file)->OpenDirect();
  if (!direct.ok()) {
    GTEST_SKIP() << "O_DIRECT refused here: " << direct.status();
  }
  EXPECT_TRUE(direct->valid());
  unlink(path.c_str());
}

TEST(ScopedFdTest, MoveAndRelease) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  ScopedFd a(fds[0]);
  ScopedFd b(std::move(a));
  EXPECT_FALSE(a.valid());
  EXPECT_EQ(b.get(), fds[0]);
  int raw = b.Release();
  EXPECT_FALSE(b.valid());
  close(raw);
  close(fds[1]);
}

}  // namespace
}  // namespace weightd
