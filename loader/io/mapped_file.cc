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

FileIdentity IdentityOf(const struct stat& st) {
  FileIdentity id;
  id.device = static_cast<uint64_t>(st.st_dev);
  id.inode = static_cast<uint64_t>(st.st_ino);
  id.size = static_cast<uint64_t>(st.st_size);
  id.mtime_ns =
      static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  id.ctime_ns =
      static_cast<int64_t>(st.st_ctim.tv_sec) * 1000000000 + st.st_ctim.tv_nsec;
  return id;
}

const char* FileTypeName(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISLNK(mode)) return "a symbolic link";
  return "not a regular file";
}

// INVALID_ARGUMENT for anything but a regular file: reading a FIFO or a device
// blocks or has side effects, and none of them is a checkpoint.
absl::Status RequireRegularFile(const std::string& path, mode_t mode) {
  if (S_ISREG(mode)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(path, ": is ", FileTypeName(mode),
                   ", not a regular file; refusing to open it"));
}

// open(2) that never blocks: O_NONBLOCK returns at once even for a FIFO with
// no writer, O_NOCTTY keeps a terminal from becoming ours. O_NONBLOCK is
// cleared again once the descriptor is known to be a regular file: io_uring
// would otherwise fail reads that miss the page cache with EAGAIN.
absl::StatusOr<ScopedFd> OpenRegularFile(const std::string& path, int flags,
                                         const char* what,
                                         struct stat* st_out) {
  // Refuse special files before opening them at all: opening some devices has
  // effects (a watchdog starts counting, a tape rewinds).
  struct stat before;
  if (::stat(path.c_str(), &before) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat(what, "(", path, ")"));
  }
  if (absl::Status s = RequireRegularFile(path, before.st_mode); !s.ok()) {
    return s;
  }
  int raw;
  do {
    raw = ::open(path.c_str(),
                 O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC | flags);
  } while (raw < 0 && errno == EINTR);
  if (raw < 0)
    return absl::ErrnoToStatus(errno, absl::StrCat(what, "(", path, ")"));
  ScopedFd fd(raw);
  if (::fstat(fd.get(), st_out) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("fstat(", path, ")"));
  }
  // The path may have been swapped between the stat and the open.
  if (absl::Status s = RequireRegularFile(path, st_out->st_mode); !s.ok()) {
    return s;
  }
  int status_flags = ::fcntl(fd.get(), F_GETFL);
  if (status_flags < 0 ||
      ::fcntl(fd.get(), F_SETFL, status_flags & ~O_NONBLOCK) != 0) {
    return absl::ErrnoToStatus(errno,
                               absl::StrCat("fcntl(", path, ", F_SETFL)"));
  }
  return fd;
}

}  // namespace

std::string FileIdentity::DebugString() const {
  return absl::StrFormat("dev=%u ino=%u size=%u mtime_ns=%d ctime_ns=%d",
                         device, inode, size, mtime_ns, ctime_ns);
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
    return absl::ErrnoToStatus(errno, absl::StrCat("stat(", path, ")"));
  }
  if (absl::Status s = RequireRegularFile(path, st.st_mode); !s.ok()) return s;
  return IdentityOf(st);
}

absl::StatusOr<std::unique_ptr<MappedFile>> MappedFile::Open(
    const std::string& path) {
  struct stat st;
  absl::StatusOr<ScopedFd> opened = OpenRegularFile(path, 0, "open", &st);
  if (!opened.ok()) return opened.status();
  ScopedFd fd = std::move(*opened);
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
      return absl::ErrnoToStatus(errno, absl::StrCat("mmap(", path, ")"));
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
  struct stat st;
  absl::StatusOr<ScopedFd> opened =
      OpenRegularFile(path_, O_DIRECT, "open O_DIRECT", &st);
  if (!opened.ok()) return opened.status();
  ScopedFd fd = std::move(*opened);
  if (IdentityOf(st) != identity_) {
    return absl::FailedPreconditionError(
        absl::StrCat(path_, ": changed on disk since it was opened"));
  }
  return fd;
}

void MappedFile::CheckNotShrunk() const {
  struct stat st;
  if (::fstat(fd_.get(), &st) != 0) return;  // only on a bad descriptor
  uint64_t now = st.st_size < 0 ? 0 : static_cast<uint64_t>(st.st_size);
  if (now < identity_.size) damage_.Record(now);
}

absl::Status MappedFile::DamageStatus() const {
  // A new end of file comes before any page past it that faulted: name it.
  CheckNotShrunk();
  return absl::DataLossError(
      absl::StrCat(path_, ": file truncated or unreadable at offset ",
                   damage_.first_offset(),
                   " while mapped (changed under the daemon?); it had ",
                   identity_.size, " bytes when opened"));
}

absl::Status MappedFile::GuardedRead(absl::FunctionRef<void()> read) const {
  if (damage_.damaged()) return DamageStatus();
  {
    MappingFaultScope scope(data_, identity_.size, &damage_);
    if (!scope.installed()) {
      absl::Status why = InstallMappingFaultHandler();
      return absl::InternalError(absl::StrCat(
          path_, ": cannot guard reads of the mapping: ", why.message()));
    }
    read();
  }
  // Bytes past a new end of file inside its last page read as zeros without
  // faulting: only the size says so.
  CheckNotShrunk();
  if (damage_.damaged()) return DamageStatus();
  return absl::OkStatus();
}

absl::Status MappedFile::CopyTo(uint64_t offset, uint64_t length,
                                uint8_t* out) const {
  if (offset > identity_.size || length > identity_.size - offset) {
    return absl::OutOfRangeError(
        absl::StrCat(path_, ": bytes [", offset, ", +", length,
                     ") are outside the file (", identity_.size, " bytes)"));
  }
  if (length == 0) return GuardedRead([] {});
  return GuardedRead(
      [&] { std::memcpy(out, data_ + offset, static_cast<size_t>(length)); });
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
