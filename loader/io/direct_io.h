// O_DIRECT support per file system, and the I/O shape of the block device a
// file lives on.
//
// OpenDirectIo() reopens an open file with O_DIRECT (through /proc/self/fd,
// so it is the same inode whatever happened to the path) and learns the
// alignment direct reads need there (statx STATX_DIOALIGN where the kernel has
// it, Linux 6.1, else the device's logical block size, else 4096). A file
// system that refuses O_DIRECT (ramfs, some FUSE and network file systems) is
// remembered by device number: the refusal is logged once per file system,
// later files there are not even tried, and DirectIoSummary() names it (for
// `weightctl info`). Readers that get EINVAL from a direct read report it
// through NoteDirectIoRefused() and redo the read buffered.
#ifndef WEIGHTD_LOADER_IO_DIRECT_IO_H_
#define WEIGHTD_LOADER_IO_DIRECT_IO_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "loader/io/mapped_file.h"

namespace weightd {

enum class DirectIoMode { kAuto, kOff };

// "auto" or "off".
absl::StatusOr<DirectIoMode> ParseDirectIoMode(absl::string_view name);
const char* DirectIoModeName(DirectIoMode mode);

struct DirectFd {
  ScopedFd fd;             // invalid: read this file buffered
  uint32_t alignment = 0;  // offsets, lengths and buffers, when fd is valid
  std::string why_not;     // when fd is invalid
};

// Opens the file behind `fd` again with O_DIRECT. Never fails: a refusal
// comes back as an invalid fd and the reason (logged once per file system).
DirectFd OpenDirectIo(int fd, const std::string& name);

// A direct read on `direct_fd` failed with EINVAL: its file system is marked
// as refusing O_DIRECT (logged once per file system).
void NoteDirectIoRefused(int direct_fd, absl::string_view why);

// "on" when no file system refused, else "on; off on dev M:N (reason)..." or
// for the process-wide mode off: "off: --direct_io=off".
std::string DirectIoSummary(DirectIoMode mode);

// The queue shape of the block device holding the file behind `fd`, from
// /sys/dev/block/MAJ:MIN/queue (a partition resolved to its disk). Zero
// fields where unknown (tmpfs, network file systems, no sysfs).
struct BlockQueueInfo {
  uint32_t nr_requests = 0;
  uint64_t max_sectors_bytes = 0;
  uint32_t logical_block_size = 0;
  std::string device;  // "vda" etc., empty when unknown
};
BlockQueueInfo BlockQueueOf(int fd);
// The same for a sysfs directory, for tests: `sys_block_dir` is a
// /sys/dev/block/MAJ:MIN directory (or a fake of one).
BlockQueueInfo BlockQueueAt(const std::string& sys_block_dir);

// Fraction of the pages of [offset, offset + length) of the file behind `fd`
// that are in the page cache, without reading them (cachestat, Linux 6.5;
// else mincore over a temporary mapping); negative when unknown.
double CachedFraction(int fd, uint64_t offset, uint64_t length);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_IO_DIRECT_IO_H_
