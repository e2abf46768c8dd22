#include "loader/io/mapped_file.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace weightd {
namespace {

absl::Status ErrnoStatus(int err, const std::string& what) {
  std::string message = absl::StrCat(what, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    case EINVAL:
    case EISDIR:
      return absl::InvalidArgumentError(message);
    case ENOMEM:
    case EMFILE:
    case ENFILE:
      return absl::ResourceExhaustedError(message);
    default:
      return absl::InternalError(message);
  }
}

FileIdentity IdentityOf(const struct stat& st) {
  FileIdentity id;
  id.device = static_cast<uint64_t>(st.st_dev);
  id.inode = static_cast<uint64_t>(st.st_ino);
  id.size = static_cast<uint64_t>(st.st_size);
  id.mtime_ns =
      static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  return id;
}

}  // namespace

std::string FileIdentity::DebugString() const {
  return absl::StrFormat("dev=%u ino=%u size=%u mtime_ns=%d", device, inode,
                         size, mtime_ns);
}

void ScopedFd::Reset() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
}

absl::StatusOr<FileIdentity> StatFileIdentity(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return ErrnoStatus(errno, absl::StrCat("stat(", path, ")"));
  }
  return IdentityOf(st);
}

absl::StatusOr<std::unique_ptr<MappedFile>> MappedFile::Open(
    const std::string& path) {
  int raw;
  do {
    raw = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  } while (raw < 0 && errno == EINTR);
  if (raw < 0) return ErrnoStatus(errno, absl::StrCat("open(", path, ")"));
  ScopedFd fd(raw);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) {
    return ErrnoStatus(errno, absl::StrCat("fstat(", path, ")"));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a regular file"));
  }
  std::unique_ptr<MappedFile> file(new MappedFile());
  file->path_ = path;
  file->identity_ = IdentityOf(st);
  if (file->identity_.size > 0) {
    if (file->identity_.size > static_cast<uint64_t>(SIZE_MAX)) {
      return absl::ResourceExhaustedError(
          absl::StrCat(path, ": too large to map"));
    }
    void* p = ::mmap(nullptr, static_cast<size_t>(file->identity_.size),
                     PROT_READ, MAP_SHARED, fd.get(), 0);
    if (p == MAP_FAILED) {
      return ErrnoStatus(errno, absl::StrCat("mmap(", path, ")"));
    }
    file->data_ = static_cast<uint8_t*>(p);
  }
  file->fd_ = std::move(fd);
  return file;
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(data_, static_cast<size_t>(identity_.size));
}

absl::StatusOr<ScopedFd> MappedFile::OpenDirect() const {
  int raw;
  do {
    raw = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
  } while (raw < 0 && errno == EINTR);
  if (raw < 0) {
    return ErrnoStatus(errno, absl::StrCat("open(", path_, ", O_DIRECT)"));
  }
  ScopedFd fd(raw);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) {
    return ErrnoStatus(errno, absl::StrCat("fstat(", path_, ")"));
  }
  if (IdentityOf(st) != identity_) {
    return absl::FailedPreconditionError(
        absl::StrCat(path_, ": changed on disk since it was opened"));
  }
  return fd;
}

absl::StatusOr<bool> MappedFile::Unchanged() const {
  auto now = StatFileIdentity(path_);
  if (!now.ok()) {
    if (absl::IsNotFound(now.status())) return false;
    return now.status();
  }
  return *now == identity_;
}

void MappedFile::AdviseSequential() const {
  if (data_ == nullptr) return;
  ::madvise(data_, static_cast<size_t>(identity_.size), MADV_SEQUENTIAL);
  ::posix_fadvise(fd_.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
}

void MappedFile::AdviseWillNeed(uint64_t offset, uint64_t length) const {
  if (data_ == nullptr || offset >= identity_.size) return;
  if (length > identity_.size - offset) length = identity_.size - offset;
  uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  uint64_t start = offset / page * page;
  ::madvise(data_ + start, static_cast<size_t>(offset + length - start),
            MADV_WILLNEED);
}

}  // namespace weightd
