#include "loader/io/direct_io.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <map>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "loader/common/logging.h"
#include "loader/common/mutex.h"

namespace weightd {
namespace {

constexpr uint32_t kDefaultAlignment = 4096;
// Alignment beyond this is not something a staging buffer can promise.
constexpr uint32_t kMaxAlignment = 1u << 16;

// File systems that refused O_DIRECT, by st_dev, with the reason.
struct Refusals {
  Mutex mu;
  std::map<uint64_t, std::string> by_device ABSL_GUARDED_BY(mu);
};
Refusals& GetRefusals() {
  static Refusals* r = new Refusals();
  return *r;
}

std::string DeviceName(uint64_t dev) {
  return absl::StrCat(major(static_cast<dev_t>(dev)), ":",
                      minor(static_cast<dev_t>(dev)));
}

// Records (and logs, the first time) that `dev` refuses O_DIRECT.
void Refuse(uint64_t dev, const std::string& why) {
  Refusals& r = GetRefusals();
  MutexLock lock(&r.mu);
  if (r.by_device.count(dev) != 0) return;
  r.by_device[dev] = why;
  LogWarning(
      "O_DIRECT refused on the file system of device %s (%s): its files are "
      "read buffered",
      DeviceName(dev), why);
}

// --direct_io=auto's measurements, by st_dev.
struct DeviceChoice {
  bool decided = false;
  bool direct = true;
  std::string figures;  // DirectIoProbe::Describe()
  DirectIoProbe::Clock::time_point decided_at;
  std::unique_ptr<DirectIoProbe> probe;  // a measurement not done, not out
  bool probing = false;                  // handed out to a Run
  uint64_t unmeasured_reads = 0;         // NoteUnmeasuredRead()
};
struct Choices {
  Mutex mu;
  std::map<uint64_t, DeviceChoice> by_device ABSL_GUARDED_BY(mu);
};
Choices& GetChoices() {
  static Choices* c = new Choices();
  return *c;
}

// "254:0 (vda)", or "M:N" where sysfs has no name.
std::string DeviceLabel(uint64_t dev) {
  std::string name = DeviceName(dev);
  BlockQueueInfo q = BlockQueueAt(absl::StrCat("/sys/dev/block/", name));
  if (q.device.empty()) return name;
  return absl::StrCat(name, " (", q.device, ")");
}

double GiBps(uint64_t bytes, double seconds) {
  return seconds > 0 ? static_cast<double>(bytes) / seconds / (1u << 30) : 0;
}

bool Refused(uint64_t dev, std::string* why) {
  Refusals& r = GetRefusals();
  MutexLock lock(&r.mu);
  auto it = r.by_device.find(dev);
  if (it == r.by_device.end()) return false;
  *why = it->second;
  return true;
}

bool PowerOfTwo(uint64_t x) { return x != 0 && (x & (x - 1)) == 0; }

bool ReadSysfsNumber(const std::string& path, uint64_t* out) {
  FILE* f = std::fopen(path.c_str(), "re");
  if (f == nullptr) return false;
  char buf[64] = {0};
  size_t n = std::fread(buf, 1, sizeof(buf) - 1, f);
  std::fclose(f);
  buf[n] = 0;
  return absl::SimpleAtoi(absl::StripAsciiWhitespace(buf), out);
}

// The alignment direct reads of `fd` need: statx where it says, else the
// block device's logical block size, else 4096; never below 512.
uint32_t DirectAlignmentOf(int fd) {
#ifdef STATX_DIOALIGN
  struct statx sx;
  std::memset(&sx, 0, sizeof(sx));
  if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 &&
      (sx.stx_mask & STATX_DIOALIGN) != 0 && sx.stx_dio_offset_align != 0) {
    uint32_t a = std::max(sx.stx_dio_offset_align, sx.stx_dio_mem_align);
    return std::max<uint32_t>(a, 512);
  }
#endif
  BlockQueueInfo q = BlockQueueOf(fd);
  if (q.logical_block_size >= 512 && PowerOfTwo(q.logical_block_size)) {
    return std::max<uint32_t>(q.logical_block_size, kDefaultAlignment);
  }
  return kDefaultAlignment;
}

}  // namespace

absl::StatusOr<DirectIoMode> ParseDirectIoMode(absl::string_view name) {
  std::string lower = absl::AsciiStrToLower(name);
  if (lower.empty() || lower == "auto") return DirectIoMode::kAuto;
  if (lower == "on") return DirectIoMode::kOn;
  if (lower == "off") return DirectIoMode::kOff;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown direct I/O mode '", name, "' (want auto, on or off)"));
}

const char* DirectIoModeName(DirectIoMode mode) {
  switch (mode) {
    case DirectIoMode::kAuto:
      return "auto";
    case DirectIoMode::kOn:
      return "on";
    case DirectIoMode::kOff:
      return "off";
  }
  return "?";
}

DirectFd OpenDirectIo(int fd, const std::string& name) {
  DirectFd out;
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    out.why_not = absl::StrCat("fstat: ", std::strerror(errno));
    return out;
  }
  if (!S_ISREG(st.st_mode)) {
    out.why_not = "not a regular file";
    return out;
  }
  const uint64_t dev = static_cast<uint64_t>(st.st_dev);
  if (Refused(dev, &out.why_not)) return out;
  uint32_t alignment = DirectAlignmentOf(fd);
  if (alignment > kMaxAlignment) {
    out.why_not = absl::StrCat("direct I/O alignment ", alignment,
                               " is larger than staging buffers promise");
    Refuse(dev, out.why_not);
    return out;
  }
  // The same open file, not whatever the path names now.
  std::string self = absl::StrCat("/proc/self/fd/", fd);
  int raw;
  do {
    raw = ::open(self.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC | O_NOCTTY);
  } while (raw < 0 && errno == EINTR);
  if (raw < 0) {
    int err = errno;
    out.why_not = absl::StrCat("open(O_DIRECT) of ", name, ": ",
                               std::strerror(err), " (errno ", err, ")");
    // EINVAL: the file system has no direct I/O. Anything else (no /proc,
    // EMFILE) is about this open only.
    if (err == EINVAL) Refuse(dev, out.why_not);
    return out;
  }
  ScopedFd direct(raw);
  struct stat again;
  if (::fstat(direct.get(), &again) != 0 || again.st_dev != st.st_dev ||
      again.st_ino != st.st_ino) {
    out.why_not = "reopened descriptor is a different file";
    return out;
  }
  out.fd = std::move(direct);
  out.alignment = alignment;
  return out;
}

void NoteDirectIoRefused(int direct_fd, absl::string_view why) {
  struct stat st;
  if (::fstat(direct_fd, &st) != 0) return;
  Refuse(static_cast<uint64_t>(st.st_dev), absl::StrCat("direct read: ", why));
}

std::string DirectIoSummary(DirectIoMode mode) {
  if (mode == DirectIoMode::kOff) return "off: --direct_io=off";
  std::string out = DirectIoModeName(mode);
  if (mode == DirectIoMode::kAuto) {
    Choices& c = GetChoices();
    MutexLock lock(&c.mu);
    bool any = false;
    for (const auto& [dev, choice] : c.by_device) {
      if (!choice.decided) continue;
      any = true;
      absl::StrAppend(&out, "; ", choice.direct ? "direct" : "buffered",
                      " on device ", DeviceLabel(dev), ": ", choice.figures);
    }
    if (!any) absl::StrAppend(&out, "; no device measured yet");
  }
  Refusals& r = GetRefusals();
  MutexLock lock(&r.mu);
  for (const auto& [dev, why] : r.by_device) {
    absl::StrAppend(&out, "; off on device ", DeviceName(dev), ": ", why);
  }
  return out;
}

DirectIoProbe::DirectIoProbe(uint64_t window_bytes, uint64_t dev)
    : window_bytes_(std::max<uint64_t>(window_bytes, 1)), dev_(dev) {}

bool DirectIoProbe::direct_wins() const {
  const double direct = GiBps(bytes_[1], seconds_[1]);
  const double buffered = GiBps(bytes_[0], seconds_[0]);
  return !(buffered > kBufferedMargin * direct);
}

std::optional<bool> DirectIoProbe::NextRead() const {
  if (done()) return direct_wins();
  if (issued_ >= window_bytes_ && outstanding_ > 0) return std::nullopt;
  return WindowDirect(window_);
}

void DirectIoProbe::Issued(uint64_t bytes, Clock::time_point now,
                           uint64_t unmeasured_reads) {
  if (done()) return;
  if (issued_ == 0) {
    start_ = now;
    unmeasured_at_start_ = unmeasured_reads;
  }
  issued_ += bytes;
  ++outstanding_;
}

void DirectIoProbe::Landed(bool ok, Clock::time_point now,
                           uint64_t unmeasured_reads) {
  if (done() || outstanding_ == 0) return;
  --outstanding_;
  if (!ok) spoiled_ = true;
  if (unmeasured_reads != unmeasured_at_start_) shared_ = true;
  if (outstanding_ > 0 || issued_ < window_bytes_) return;
  if (!spoiled_ && shared_) {
    if (shared_skips_ < kMaxSharedSkips) {
      ++shared_skips_;
      spoiled_ = true;  // measured again
    } else {
      ++shared_windows_;
    }
  }
  if (!spoiled_) {
    const int kind = WindowDirect(window_) ? 1 : 0;
    bytes_[kind] += issued_;
    seconds_[kind] += std::chrono::duration<double>(now - start_).count();
    ++window_;
    const double direct = GiBps(bytes_[1], seconds_[1]);
    const double buffered = GiBps(bytes_[0], seconds_[0]);
    done_ = window_ >= kWindows ||
            (window_ == 2 && (direct >= kClearRatio * buffered ||
                              buffered >= kClearRatio * direct));
  }
  issued_ = 0;
  spoiled_ = false;
  shared_ = false;
}

void DirectIoProbe::Interrupt() {
  issued_ = 0;
  outstanding_ = 0;
  spoiled_ = false;
  shared_ = false;
}

std::string DirectIoProbe::Describe() const {
  std::string out = absl::StrFormat("direct %.2f GiB/s, buffered %.2f GiB/s",
                                    GiBps(bytes_[1], seconds_[1]),
                                    GiBps(bytes_[0], seconds_[0]));
  if (shared_windows_ > 0) {
    absl::StrAppendFormat(&out, ", %d of %d windows shared with other loads",
                          shared_windows_, window_);
  }
  return out;
}

DirectIoPlan PlanDirectIo(uint64_t dev, uint64_t window_bytes,
                          DirectIoProbe::Clock::time_point now) {
  Choices& c = GetChoices();
  MutexLock lock(&c.mu);
  DeviceChoice& choice = c.by_device[dev];
  DirectIoPlan plan;
  plan.direct = choice.direct;
  if (choice.probing) return plan;
  if (choice.decided && now - choice.decided_at < kDirectIoRemeasureAfter) {
    return plan;
  }
  plan.probe = choice.probe != nullptr
                   ? std::move(choice.probe)
                   : std::make_unique<DirectIoProbe>(window_bytes, dev);
  choice.probing = true;
  return plan;
}

void ReturnDirectIoProbe(uint64_t dev, std::unique_ptr<DirectIoProbe> probe,
                         DirectIoProbe::Clock::time_point now) {
  if (probe == nullptr) return;
  probe->Interrupt();
  Choices& c = GetChoices();
  MutexLock lock(&c.mu);
  DeviceChoice& choice = c.by_device[dev];
  choice.probing = false;
  if (!probe->done()) {
    choice.probe = std::move(probe);
    return;
  }
  const bool first = !choice.decided;
  const bool was_direct = choice.direct;
  choice.decided = true;
  choice.decided_at = now;
  choice.direct = probe->direct_wins();
  choice.figures = probe->Describe();
  if (first || choice.direct != was_direct) {
    LogInfo(
        "direct I/O (--direct_io=auto): uncached reads on device %s are %s "
        "from now on (measured %s%s)",
        DeviceLabel(dev), choice.direct ? "direct" : "buffered", choice.figures,
        first ? "" : "; measured again, the choice changed");
  }
}

void NoteUnmeasuredRead(uint64_t dev) {
  Choices& c = GetChoices();
  MutexLock lock(&c.mu);
  ++c.by_device[dev].unmeasured_reads;
}

uint64_t UnmeasuredReads(uint64_t dev) {
  Choices& c = GetChoices();
  MutexLock lock(&c.mu);
  auto it = c.by_device.find(dev);
  return it == c.by_device.end() ? 0 : it->second.unmeasured_reads;
}

uint64_t AutoRequestBytes(const BlockQueueInfo& queue) {
  if (queue.max_sectors_bytes == 0) return kMinAutoRequestBytes;
  return std::clamp(queue.max_sectors_bytes, kMinAutoRequestBytes,
                    kMaxAutoRequestBytes);
}

BlockQueueInfo BlockQueueAt(const std::string& sys_block_dir) {
  BlockQueueInfo info;
  // A partition has a "partition" file and its queue lives in the parent.
  std::string dir = sys_block_dir;
  uint64_t unused = 0;
  if (ReadSysfsNumber(dir + "/partition", &unused)) dir += "/..";
  uint64_t v = 0;
  if (ReadSysfsNumber(dir + "/queue/nr_requests", &v) && v <= (1u << 20)) {
    info.nr_requests = static_cast<uint32_t>(v);
  }
  if (ReadSysfsNumber(dir + "/queue/max_sectors_kb", &v) && v <= (1ull << 30)) {
    info.max_sectors_bytes = v << 10;
  }
  if (ReadSysfsNumber(dir + "/queue/logical_block_size", &v) &&
      v <= (1u << 20)) {
    info.logical_block_size = static_cast<uint32_t>(v);
  }
  char resolved[4096];
  ssize_t n = ::readlink(sys_block_dir.c_str(), resolved, sizeof(resolved) - 1);
  if (n > 0) {
    resolved[n] = 0;
    std::string target(resolved);
    size_t slash = target.rfind('/');
    info.device =
        slash == std::string::npos ? target : target.substr(slash + 1);
  }
  return info;
}

BlockQueueInfo BlockQueueOf(int fd) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return {};
  return BlockQueueAt(
      absl::StrCat("/sys/dev/block/", major(st.st_dev), ":", minor(st.st_dev)));
}

double CachedFraction(int fd, uint64_t offset, uint64_t length) {
  if (length == 0) return 1.0;
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const uint64_t start = offset / page * page;
  const uint64_t end = (offset + length + page - 1) / page * page;
  const uint64_t pages = (end - start) / page;
#ifndef __NR_cachestat
#define __NR_cachestat 451  // the same number on every architecture
#endif
  struct {
    uint64_t off, len;
  } range = {start, end - start};
  struct {
    uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted;
  } cs;
  static std::atomic<bool> no_cachestat{false};
  if (!no_cachestat.load(std::memory_order_relaxed)) {
    if (::syscall(__NR_cachestat, fd, &range, &cs, 0) == 0) {
      return static_cast<double>(std::min(cs.nr_cache, pages)) /
             static_cast<double>(pages);
    }
    if (errno == ENOSYS || errno == EPERM) no_cachestat.store(true);
  }
  void* p = ::mmap(nullptr, static_cast<size_t>(end - start), PROT_READ,
                   MAP_SHARED, fd, static_cast<off_t>(start));
  if (p == MAP_FAILED) return -1;
  std::vector<unsigned char> vec(static_cast<size_t>(pages));
  double fraction = -1;
  if (::mincore(p, static_cast<size_t>(end - start), vec.data()) == 0) {
    uint64_t cached = 0;
    for (unsigned char c : vec) cached += c & 1;
    fraction = static_cast<double>(cached) / static_cast<double>(pages);
  }
  ::munmap(p, static_cast<size_t>(end - start));
  return fraction;
}

}  // namespace weightd
