// A checkpoint file opened and mapped read-only, with the identity the cache
// keys it by (device, inode, size, mtime). The file descriptor stays open so
// positioned reads (io_uring, pread) see the same file as the mapping.
#ifndef WEIGHTD_LOADER_IO_MAPPED_FILE_H_
#define WEIGHTD_LOADER_IO_MAPPED_FILE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace weightd {

struct FileIdentity {
  uint64_t device = 0;
  uint64_t inode = 0;
  uint64_t size = 0;
  int64_t mtime_ns = 0;

  bool operator==(const FileIdentity& o) const {
    return device == o.device && inode == o.inode && size == o.size &&
           mtime_ns == o.mtime_ns;
  }
  bool operator!=(const FileIdentity& o) const { return !(*this == o); }
  template <typename H>
  friend H AbslHashValue(H h, const FileIdentity& id) {
    return H::combine(std::move(h), id.device, id.inode, id.size, id.mtime_ns);
  }
  std::string DebugString() const;
};

// The identity of the file at `path` (stat, following symlinks).
absl::StatusOr<FileIdentity> StatFileIdentity(const std::string& path);

// An owned file descriptor, closed on destruction.
class ScopedFd {
 public:
  ScopedFd() = default;
  explicit ScopedFd(int fd) : fd_(fd) {}
  ~ScopedFd() { Reset(); }
  ScopedFd(ScopedFd&& o) noexcept : fd_(o.Release()) {}
  ScopedFd& operator=(ScopedFd&& o) noexcept {
    if (this != &o) {
      Reset();
      fd_ = o.Release();
    }
    return *this;
  }
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int Release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void Reset();

 private:
  int fd_ = -1;
};

class MappedFile {
 public:
  // Opens `path` read-only and maps it whole (PROT_READ, MAP_SHARED). An empty
  // file has no mapping: data() is null and size() is 0. Errors name the path
  // and the failing call (NOT_FOUND, PERMISSION_DENIED, INVALID_ARGUMENT for a
  // directory, ...).
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(
      const std::string& path);
  ~MappedFile();

  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::string& path() const { return path_; }
  const uint8_t* data() const { return data_; }
  uint64_t size() const { return identity_.size; }
  const FileIdentity& identity() const { return identity_; }
  // The read-only descriptor the mapping was made from, for positioned reads.
  int fd() const { return fd_.get(); }

  // Opens the same file again with O_DIRECT, for aligned reads that bypass the
  // page cache. UNIMPLEMENTED/INVALID_ARGUMENT where the filesystem refuses
  // O_DIRECT (tmpfs): callers fall back to fd().
  absl::StatusOr<ScopedFd> OpenDirect() const;

  // Whether the file at path() still has the identity it was opened with.
  absl::StatusOr<bool> Unchanged() const;

  // Advises the kernel about access (madvise): sequential read-ahead, or
  // WILLNEED for a byte range. Failures are ignored (advice only).
  void AdviseSequential() const;
  void AdviseWillNeed(uint64_t offset, uint64_t length) const;

 private:
  MappedFile() = default;

  std::string path_;
  ScopedFd fd_;
  FileIdentity identity_;
  uint8_t* data_ = nullptr;
};

}  // namespace weightd

#endif  // WEIGHTD_LOADER_IO_MAPPED_FILE_H_
