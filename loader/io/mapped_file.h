// A checkpoint file opened and mapped read-only, with the identity the cache
// keys it by (device, inode, size, mtime, ctime). The file descriptor stays
// open so positioned reads (io_uring, pread) see the same file as the mapping.
//
// The file can shrink under the mapping (a trainer re-saving latest.pt with
// torch.save truncates it first); a plain read of a page past the new end then
// raises SIGBUS and kills the process. Daemon code reads the mapping only
// through GuardedRead / CopyTo, which turn that into DATA_LOSS
// (mapping_fault_guard.h).
#ifndef WEIGHTD_LOADER_IO_MAPPED_FILE_H_
#define WEIGHTD_LOADER_IO_MAPPED_FILE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "loader/io/mapping_fault_guard.h"

namespace weightd {

// Which file, and which version of it. mtime alone misses an in-place rewrite
// that restores it (cp -p, rsync --inplace -t, tar); ctime is set by the kernel
// on every write or metadata change and no user call can set it back.
struct FileIdentity {
  uint64_t device = 0;
  uint64_t inode = 0;
  uint64_t size = 0;
  int64_t mtime_ns = 0;
  int64_t ctime_ns = 0;

  bool operator==(const FileIdentity& o) const {
    return device == o.device && inode == o.inode && size == o.size &&
           mtime_ns == o.mtime_ns && ctime_ns == o.ctime_ns;
  }
  bool operator!=(const FileIdentity& o) const { return !(*this == o); }
  template <typename H>
  friend H AbslHashValue(H h, const FileIdentity& id) {
    return H::combine(std::move(h), id.device, id.inode, id.size, id.mtime_ns,
                      id.ctime_ns);
  }
  std::string DebugString() const;
};

// The identity of the regular file at `path` (stat, following symlinks).
// INVALID_ARGUMENT naming the path and its type for anything else (FIFO,
// socket, device, directory): such files are never opened.
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
  // file has no mapping: data() is null and size() is 0. Never blocks in
  // open(): anything but a regular file (FIFO, socket, device, directory) is
  // refused with INVALID_ARGUMENT naming the path and what it is, before it is
  // opened, and the open itself is O_NONBLOCK | O_NOCTTY in case the path was
  // swapped for one in between. Other errors name the path and the failing
  // call (NOT_FOUND, PERMISSION_DENIED, ...).
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(
      const std::string& path);
  ~MappedFile();

  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::string& path() const { return path_; }
  // The mapping. Reading it directly can die of SIGBUS if the file shrinks:
  // in the daemon, read it only inside GuardedRead (or through CopyTo).
  const uint8_t* data() const { return data_; }
  uint64_t size() const { return identity_.size; }
  const FileIdentity& identity() const { return identity_; }
  // The read-only descriptor the mapping was made from, for positioned reads.
  int fd() const { return fd_.get(); }

  // Runs `read`, which reads [data(), data() + size()) on the calling thread,
  // guarded against the file shrinking or failing under the mapping. Returns
  // DATA_LOSS "PATH: file truncated or unreadable at offset N while mapped
  // (changed under the daemon?)" when a read faulted (the faulting page then
  // reads as zeros and `read` ran on to the end: discard whatever it produced),
  // when the file is now shorter than the mapping (bytes past its end read as
  // zeros without faulting), or when the mapping was damaged before, by any
  // thread: then `read` is not run at all. OK otherwise.
  //
  // Thread-safe; each thread that reads the mapping calls this for its own
  // reads (threads that `read` itself starts are not guarded). Nestable, also
  // across different files. `read` must not unwind (no exceptions, no
  // longjmp). Costs one fstat after `read`. Reads through fd() (pread,
  // io_uring) need no guard: past the end of file they come back short.
  absl::Status GuardedRead(absl::FunctionRef<void()> read) const;

  // Copies file bytes [offset, offset + length) to `out` under GuardedRead.
  // OUT_OF_RANGE naming the path when the range is not inside the mapping
  // (offset and length are hostile: checked without overflow); DATA_LOSS as
  // GuardedRead, and then `out` holds garbage.
  absl::Status CopyTo(uint64_t offset, uint64_t length, uint8_t* out) const;

  // Whether a guarded read found the mapping damaged. Once true it stays true:
  // every later GuardedRead / CopyTo fails. A fresh Open of the file (once it
  // has been rewritten) maps it anew.
  bool damaged() const { return damage_.damaged(); }

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
  // Records damage if the file is now shorter than the mapping.
  void CheckNotShrunk() const;
  absl::Status DamageStatus() const;

  std::string path_;
  ScopedFd fd_;
  FileIdentity identity_;
  uint8_t* data_ = nullptr;
  mutable MappingDamage damage_;
};

}  // namespace weightd

#endif  // WEIGHTD_LOADER_IO_MAPPED_FILE_H_
