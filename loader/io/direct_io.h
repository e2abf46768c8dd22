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
//
// Where O_DIRECT works it is not always faster: on a VM whose disk sits in
// the host's page cache, buffered reads (the guest's readahead) can win. So
// --direct_io=auto measures each block device once (DirectIoProbe: the first
// uncached chunks of the first loads read in alternating direct and buffered
// windows) and reads that device's uncached chunks the faster way from then
// on; --direct_io=on reads them direct without measuring, off never.
#ifndef WEIGHTD_LOADER_IO_DIRECT_IO_H_
#define WEIGHTD_LOADER_IO_DIRECT_IO_H_

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "loader/io/mapped_file.h"

namespace weightd {

enum class DirectIoMode { kAuto, kOn, kOff };

// "auto", "on" or "off" ("" is auto).
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

// What is in effect, for `weightctl info`: "off: --direct_io=off"; "on"; or
// "auto" followed by each measured device's choice and figures ("; direct on
// device 254:0 (vda): direct 2.10 GiB/s, buffered 0.95 GiB/s"), or "; no
// device measured yet". Then, for on and auto, "; off on device M:N: reason"
// for each file system that refused O_DIRECT.
std::string DirectIoSummary(DirectIoMode mode);

// --direct_io=auto's measurement of one block device: windows of
// window_bytes read direct, buffered, buffered, direct (so a device getting
// steadily faster or slower favours neither). A window starts at a chunk
// not in the page cache and takes every chunk that could read direct after
// it, cached or not (a buffered window's readahead is part of what it
// measures, and must not make the next direct window look faster); it is
// timed from its first read's submission to its last read's completion, and
// no read of the next window starts before then. Windows are timed within
// one Run: one cut short by the Run's end (or by a failed read) is dropped
// and measured again by a later Run. When the first two windows differ by
// kClearRatio or more the last two are skipped (a slow kind is not read
// longer than it takes to see it is slow). Buffered wins only when it is
// more than kBufferedMargin times faster: direct reads leave the page cache
// to others. Driven by one Run at a time (PlanDirectIo hands it out).
//
// Other Runs may read the device meanwhile (several GPUs loading at once):
// their uncached reads (NoteUnmeasuredRead) would slow whichever kind the
// window reads. A window they overlapped is measured again, up to
// kMaxSharedSkips times; after that the device is in shared use and its
// windows count as they come (Describe says how many were shared).
class DirectIoProbe {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr int kWindows = 4;
  static constexpr double kClearRatio = 2.0;
  static constexpr double kBufferedMargin = 1.1;
  static constexpr int kMaxSharedSkips = 4;

  // `dev`: the device measured (st_dev), for UnmeasuredReads().
  explicit DirectIoProbe(uint64_t window_bytes, uint64_t dev = 0);

  uint64_t device() const { return dev_; }
  // Every window measured, or the first two told clearly enough.
  bool done() const { return done_; }
  // A window has started and not ended: the chunks that could read direct
  // belong to it, cached or not.
  bool window_open() const { return issued_ > 0; }
  // After done(): whether uncached reads of the device should be direct.
  bool direct_wins() const;
  // How the next uncached chunk reads: true direct, false buffered. nullopt:
  // not now, the window has all its bytes and reads still out (wait for
  // them); never while nothing of the window is in flight. After done():
  // direct_wins().
  std::optional<bool> NextRead() const;
  // A read of `bytes` of the current window was submitted at `now`;
  // `unmeasured_reads`: UnmeasuredReads(device()) then.
  void Issued(uint64_t bytes, Clock::time_point now,
              uint64_t unmeasured_reads = 0);
  // One of the window's reads finished at `now` (`ok`: all its bytes came);
  // `unmeasured_reads` as for Issued: other than at the window's first read,
  // the window was shared.
  void Landed(bool ok, Clock::time_point now, uint64_t unmeasured_reads = 0);
  // The Run ends with reads taken back or abandoned: the window under way is
  // dropped.
  void Interrupt();
  // "direct 2.10 GiB/s, buffered 0.95 GiB/s" (the windows measured so far),
  // then ", 2 of 4 windows shared with other loads" where some were.
  std::string Describe() const;

 private:
  static bool WindowDirect(int window) { return window == 0 || window == 3; }

  const uint64_t window_bytes_;
  const uint64_t dev_;
  int window_ = 0;          // windows measured
  int shared_skips_ = 0;    // windows dropped for being shared
  int shared_windows_ = 0;  // windows measured shared (after the skips)
  bool done_ = false;
  // The window under way.
  uint64_t issued_ = 0;
  int outstanding_ = 0;
  bool spoiled_ = false;
  bool shared_ = false;  // other Runs read the device during the window
  uint64_t unmeasured_at_start_ = 0;
  Clock::time_point start_;
  // By kind, [0] buffered, [1] direct: bytes and time of measured windows.
  uint64_t bytes_[2] = {0, 0};
  double seconds_[2] = {0, 0};
};

// How --direct_io=auto reads the uncached chunks of files on the file
// system of device `dev` (st_dev): direct once the device is measured
// faster direct, buffered once measured faster buffered, direct until then.
// `probe` is set when the device is not measured yet, or its choice is
// kDirectIoRemeasureAfter old, and no other Run is measuring it: the caller
// times its reads with it and gives it back with ReturnDirectIoProbe().
// Until that measurement ends the device keeps its last choice.
struct DirectIoPlan {
  bool direct = true;
  std::unique_ptr<DirectIoProbe> probe;
};
// A device's choice is measured again this long after it was made: a disk
// behind a host's cache or shared with other tenants changes, and one noisy
// measurement must not decide for the daemon's lifetime. The windows are
// reads the loads make anyway (half of them the slower kind).
inline constexpr std::chrono::minutes kDirectIoRemeasureAfter{30};
DirectIoPlan PlanDirectIo(
    uint64_t dev, uint64_t window_bytes,
    DirectIoProbe::Clock::time_point now = DirectIoProbe::Clock::now());
// Keeps a probe's measurements; when done(), its result is the device's
// choice from `now` (logged the first time, and when it changes).
void ReturnDirectIoProbe(
    uint64_t dev, std::unique_ptr<DirectIoProbe> probe,
    DirectIoProbe::Clock::time_point now = DirectIoProbe::Clock::now());

// An uncached read of device `dev` by a Run that is not measuring it
// (--direct_io=auto): a probe window it overlaps is shared.
void NoteUnmeasuredRead(uint64_t dev);
// How many such reads the device has had.
uint64_t UnmeasuredReads(uint64_t dev);

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

// Bytes each read system call asks for when --io_request_kib is 0: the
// device's max_sectors_kb, but at least 4 MiB and at most 16 MiB; 4 MiB
// where unknown. The kernel splits a larger read into max_sectors pieces
// and queues them together: the device sees the same requests for fewer
// system calls (a cold read of a virtio disk measured the same at 2 to 16
// MiB per call for the same bytes in flight; what it needs is bytes in
// flight, 16 MiB and more, which the staging ring provides).
inline constexpr uint64_t kMinAutoRequestBytes = 4ull << 20;
inline constexpr uint64_t kMaxAutoRequestBytes = 16ull << 20;
uint64_t AutoRequestBytes(const BlockQueueInfo& queue);

// Fraction of the pages of [offset, offset + length) of the file behind `fd`
// that are in the page cache, without reading them (cachestat, Linux 6.5;
// else mincore over a temporary mapping); negative when unknown.
double CachedFraction(int fd, uint64_t offset, uint64_t length);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_IO_DIRECT_IO_H_
