#include "loader/io/mapped_file.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include "absl/hash/hash.h"
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
  EXPECT_EQ(id.ctime_ns, st.st_ctim.tv_sec * 1000000000ll + st.st_ctim.tv_nsec);
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
  std::string missing_path = TempPath("does-not-exist");
  auto missing = MappedFile::Open(missing_path);
  EXPECT_TRUE(absl::IsNotFound(missing.status())) << missing.status();
  EXPECT_NE(missing.status().message().find("open(" + missing_path + ")"),
            std::string::npos)
      << missing.status();
}

// Special files are refused at once, by Open and StatFileIdentity alike, with
// the path and what the file is. A FIFO with no writer would block open(2)
// forever without O_NONBLOCK.
void ExpectRefusedAsSpecial(const std::string& path, const std::string& what) {
  auto opened = MappedFile::Open(path);
  EXPECT_TRUE(absl::IsInvalidArgument(opened.status())) << opened.status();
  EXPECT_NE(opened.status().message().find(path + ": is " + what),
            std::string::npos)
      << opened.status();
  auto identity = StatFileIdentity(path);
  EXPECT_TRUE(absl::IsInvalidArgument(identity.status())) << identity.status();
  EXPECT_NE(identity.status().message().find(what), std::string::npos)
      << identity.status();
}

TEST(MappedFileTest, RefusesAFifo) {
  std::string path = TempPath("fifo");
  ASSERT_EQ(mkfifo(path.c_str(), 0600), 0) << std::strerror(errno);
  ExpectRefusedAsSpecial(path, "a FIFO");
  unlink(path.c_str());
}

TEST(MappedFileTest, RefusesASocket) {
  // sun_path is short: bind under /tmp, not the (long) test directory.
  std::string path = "/tmp/weightd-sock-" + std::to_string(getpid());
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  ASSERT_LT(path.size(), sizeof(address.sun_path));
  std::strcpy(address.sun_path, path.c_str());
  unlink(path.c_str());
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0)
      << std::strerror(errno);
  ExpectRefusedAsSpecial(path, "a socket");
  close(fd);
  unlink(path.c_str());
}

TEST(MappedFileTest, RefusesACharacterDevice) {
  ExpectRefusedAsSpecial("/dev/null", "a character device");
}

TEST(MappedFileTest, RefusesADirectory) {
  ExpectRefusedAsSpecial("/", "a directory");
  std::string dir = TempPath("dir");
  ASSERT_EQ(mkdir(dir.c_str(), 0700), 0);
  ExpectRefusedAsSpecial(dir, "a directory");
  rmdir(dir.c_str());
}

// A symlink to a regular file is followed; one to a FIFO is refused.
TEST(MappedFileTest, FollowsSymlinksToWhatTheyNameOnly) {
  std::string target = WritePatternFile("target", 5000, 4);
  std::string link = TempPath("link");
  ASSERT_EQ(symlink(target.c_str(), link.c_str()), 0);
  auto file = MappedFile::Open(link);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(FirstPatternMismatch((*file)->data(), 5000, 0, 4), -1);
  unlink(link.c_str());
  std::string fifo = TempPath("fifo-target");
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  ASSERT_EQ(symlink(fifo.c_str(), link.c_str()), 0);
  ExpectRefusedAsSpecial(link, "a FIFO");
  unlink(link.c_str());
  unlink(fifo.c_str());
  unlink(target.c_str());
}

// The descriptor is left blocking: io_uring fails reads of an O_NONBLOCK file
// that miss the page cache with EAGAIN instead of waiting for them.
TEST(MappedFileTest, DescriptorIsBlockingAndCloseOnExec) {
  std::string path = WritePatternFile("flags", 100, 1);
  auto file = MappedFile::Open(path);
  ASSERT_TRUE(file.ok());
  int flags = fcntl((*file)->fd(), F_GETFL);
  ASSERT_GE(flags, 0);
  EXPECT_EQ(flags & O_NONBLOCK, 0);
  EXPECT_EQ(flags & O_ACCMODE, O_RDONLY);
  EXPECT_NE(fcntl((*file)->fd(), F_GETFD) & FD_CLOEXEC, 0);
  unlink(path.c_str());
}

// cp -p, rsync --inplace -t and tar rewrite a file in place and restore its
// mtime; the size stays. ctime, which no user call can set, tells them apart.
TEST(MappedFileTest, InPlaceRewriteWithRestoredMtimeChangesIdentity) {
  std::string path = WritePatternFile("inplace", 8192, 1);
  auto before = StatFileIdentity(path);
  ASSERT_TRUE(before.ok());
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  // ctime has a clock tick's granularity: wait until it would move.
  while (true) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME_COARSE, &now);
    if (now.tv_sec != st.st_ctim.tv_sec || now.tv_nsec != st.st_ctim.tv_nsec) {
      break;
    }
    usleep(1000);
  }
  {
    std::string other = WritePatternFile("inplace-src", 8192, 2);
    FILE* src = std::fopen(other.c_str(), "rb");
    FILE* dst = std::fopen(path.c_str(), "r+b");  // same inode, same size
    ASSERT_NE(src, nullptr);
    ASSERT_NE(dst, nullptr);
    char buffer[8192];
    ASSERT_EQ(std::fread(buffer, 1, sizeof(buffer), src), sizeof(buffer));
    ASSERT_EQ(std::fwrite(buffer, 1, sizeof(buffer), dst), sizeof(buffer));
    std::fclose(src);
    std::fclose(dst);
    unlink(other.c_str());
  }
  struct timespec times[2] = {st.st_atim, st.st_mtim};
  ASSERT_EQ(utimensat(AT_FDCWD, path.c_str(), times, 0), 0);
  auto after = StatFileIdentity(path);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->device, before->device);
  EXPECT_EQ(after->inode, before->inode);
  EXPECT_EQ(after->size, before->size);
  EXPECT_EQ(after->mtime_ns, before->mtime_ns);
  EXPECT_NE(after->ctime_ns, before->ctime_ns);
  EXPECT_NE(*after, *before);
  EXPECT_NE(absl::HashOf(*after), absl::HashOf(*before));
  EXPECT_NE(after->DebugString(), before->DebugString());
  unlink(path.c_str());
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
