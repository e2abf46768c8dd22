#include "loader/device/shared_memory.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "loader/common/mutex.h"
#include "loader/io/mapped_file.h"

namespace weightd {
namespace {

constexpr size_t kMaxNameLength = 47;
constexpr size_t kInstanceIdLength = 12;
constexpr char kHostMagic[4] = {'W', 'D', 'S', 'H'};
constexpr char kFakeMagic[4] = {'W', 'D', 'F', 'G'};
constexpr uint8_t kVersion = 1;

// The file names of the naming scheme in shared_memory.h.
std::string LockFileName(absl::string_view id) {
  return absl::StrCat("weightd-", id, ".lock");
}

bool IsInstanceId(absl::string_view s) {
  if (s.size() != kInstanceIdLength) return false;
  for (char c : s) {
    if (!absl::ascii_isdigit(c) && !(c >= 'a' && c <= 'f')) return false;
  }
  return true;
}

bool IsDecimal(absl::string_view s) {
  return !s.empty() && s.size() <= 20 &&
         std::all_of(s.begin(), s.end(),
                     [](char c) { return absl::ascii_isdigit(c); });
}

// "weightd" or "weightd-" followed by [a-z0-9-], not ending in '-'.
bool IsSegmentPrefix(absl::string_view prefix) {
  if (prefix == "weightd") return true;
  if (!absl::ConsumePrefix(&prefix, "weightd-") || prefix.empty() ||
      prefix.back() == '-') {
    return false;
  }
  return std::all_of(prefix.begin(), prefix.end(), [](char c) {
    return absl::ascii_isdigit(c) || (c >= 'a' && c <= 'z') || c == '-';
  });
}

// A file of the naming scheme: `owner` is the instance id (segments, lock
// files) or the pid of an older weightd (legacy segments).
struct ShmFileName {
  enum Kind { kLock, kSegment, kLegacySegment } kind;
  std::string owner;
};

std::optional<ShmFileName> ParseShmFileName(absl::string_view name) {
  if (!absl::StartsWith(name, "weightd-")) return std::nullopt;
  absl::string_view lock = name;
  if (absl::ConsumePrefix(&lock, "weightd-") &&
      absl::ConsumeSuffix(&lock, ".lock")) {
    if (!IsInstanceId(lock)) return std::nullopt;
    return ShmFileName{ShmFileName::kLock, std::string(lock)};
  }
  // <prefix>-<owner>-<counter>, read from the right.
  size_t last = name.rfind('-');
  if (last == absl::string_view::npos || !IsDecimal(name.substr(last + 1))) {
    return std::nullopt;
  }
  size_t middle = name.rfind('-', last - 1);
  if (middle == absl::string_view::npos) return std::nullopt;
  absl::string_view owner = name.substr(middle + 1, last - middle - 1);
  absl::string_view prefix = name.substr(0, middle);
  if (IsInstanceId(owner) && IsSegmentPrefix(prefix)) {
    return ShmFileName{ShmFileName::kSegment, std::string(owner)};
  }
  // What weightd named segments before instance ids: "weightd-<pid>-<n>" and
  // "weightd-fake<N>-<pid>-<n>" (a pid has at most 7 digits, an id 12).
  absl::string_view fake = prefix;
  bool legacy_prefix =
      prefix == "weightd" ||
      (absl::ConsumePrefix(&fake, "weightd-fake") && IsDecimal(fake));
  if (legacy_prefix && IsDecimal(owner) && owner.size() <= 7 &&
      owner[0] != '0') {
    return ShmFileName{ShmFileName::kLegacySegment, std::string(owner)};
  }
  return std::nullopt;
}

absl::StatusOr<std::string> RandomInstanceId() {
  uint8_t bytes[kInstanceIdLength / 2];
  size_t got = 0;
  while (got < sizeof(bytes)) {
    ssize_t n = getrandom(bytes + got, sizeof(bytes) - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno,
                                 "getrandom for a shared-memory instance id");
    }
    got += static_cast<size_t>(n);
  }
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(bytes), sizeof(bytes)));
}

// Allocates [0, size) of the file, growing it to `size`. In steps, because a
// signal aborts a tmpfs fallocate (EINTR) and a retry of one huge call could
// starve under a steady signal rate. Where the filesystem has no fallocate
// (EOPNOTSUPP), glibc's posix_fallocate writes a byte into every block, which
// reserves the same space. Returns 0 or an errno value.
int ReserveSpace(int fd, uint64_t size) {
  constexpr uint64_t kStep = 64ull << 20;
  bool emulate = false;
  uint64_t done = 0;
  while (done < size) {
    uint64_t length = std::min(kStep, size - done);
    int err = 0;
    if (!emulate) {
      err = fallocate(fd, 0, static_cast<off_t>(done),
                      static_cast<off_t>(length)) == 0
                ? 0
                : errno;
      if (err == EOPNOTSUPP || err == ENOSYS) {
        emulate = true;
        continue;
      }
    } else {
      err = posix_fallocate(fd, static_cast<off_t>(done),
                            static_cast<off_t>(length));
    }
    if (err == EINTR) continue;
    if (err != 0) return err;
    done += length;
  }
  return 0;
}

std::string Bytes(uint64_t n) {
  return absl::StrFormat("%d bytes (%.1f MiB)", n, n / 1048576.0);
}

// The error for a segment that could not get its space. `fd` is the
// segment's, already unlinked and truncated to 0 (so the figure is what is
// free without it).
absl::Status ReserveError(int err, int fd, const std::string& path,
                          const std::string& directory, uint64_t size) {
  std::string message = absl::StrCat("cannot reserve ", Bytes(size),
                                     " for shared-memory segment ", path, ": ",
                                     std::strerror(err));
  struct statvfs fs;
  if (fstatvfs(fd, &fs) == 0) {
    uint64_t unit = fs.f_frsize != 0 ? fs.f_frsize : fs.f_bsize;
    absl::StrAppend(&message, "; ", directory, " has ",
                    Bytes(uint64_t{fs.f_bavail} * unit), " free of ",
                    Bytes(uint64_t{fs.f_blocks} * unit));
  }
  if (err == ENOSPC || err == ENOMEM || err == EFBIG) {
    absl::StrAppend(&message, " (give ", directory,
                    " more room, e.g. docker run --shm-size, or lower the "
                    "memory budget)");
    return absl::ResourceExhaustedError(message);
  }
  return absl::Status(absl::ErrnoToStatusCode(err), message);
}

bool SameFile(const struct stat& a, const struct stat& b) {
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

constexpr char kThpDirectory[] = "/sys/kernel/mm/transparent_hugepage";
constexpr uint64_t kHugePageBytes = 2ull << 20;
// Below this a prefault stays on the caller's thread: a thread costs more.
constexpr uint64_t kMinBytesPerPrefaultThread = 32ull << 20;
constexpr int kMaxPrefaultThreads = 8;

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14
#endif

std::string ReadSmallFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return "";
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

HugePageMode ModeOf(absl::string_view choice) {
  if (choice == "always" || choice == "within_size" || choice == "force") {
    return HugePageMode::kAlways;
  }
  if (choice == "advise" || choice == "madvise") return HugePageMode::kAdvise;
  return HugePageMode::kNever;
}

const char* ModeDescription(HugePageMode mode) {
  switch (mode) {
    case HugePageMode::kAlways:
      return "huge pages";
    case HugePageMode::kAdvise:
      return "huge pages (MADV_HUGEPAGE)";
    default:
      return "4 KiB pages";
  }
}

// Touches one byte per page; for kernels without MADV_POPULATE_WRITE, and
// only over space already reserved (a hole would SIGBUS).
void TouchPages(uint8_t* data, uint64_t size) {
  const long page = sysconf(_SC_PAGESIZE);
  const uint64_t step = page > 0 ? static_cast<uint64_t>(page) : 4096;
  for (uint64_t off = 0; off < size; off += step) {
    // Fresh memory is zero: writing a zero keeps it so.
    reinterpret_cast<volatile uint8_t*>(data)[off] = 0;
  }
}

// Runs `fault(begin, length)` over [data, data + size) on several threads,
// slices split at 2 MiB-aligned addresses; returns the first errno any slice
// reported, or 0.
template <typename Fault>
int SplitOverThreads(uint8_t* data, uint64_t size, Fault fault) {
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  const uint64_t by_size =
      std::max<uint64_t>(1, size / kMinBytesPerPrefaultThread);
  const int threads = static_cast<int>(std::min<uint64_t>(
      {by_size, cores, static_cast<uint64_t>(kMaxPrefaultThreads)}));
  const uintptr_t start = reinterpret_cast<uintptr_t>(data);
  const uintptr_t end = start + size;
  uintptr_t slice = (size + threads - 1) / threads;
  slice = (slice + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
  std::vector<uintptr_t> cuts = {start};
  for (uintptr_t cut = (start / kHugePageBytes) * kHugePageBytes + slice;
       cut < end; cut += slice) {
    if (cut > start) cuts.push_back(cut);
  }
  cuts.push_back(end);
  std::vector<int> errors(cuts.size() - 1, 0);
  std::vector<std::thread> helpers;
  for (size_t i = 1; i + 1 < cuts.size(); ++i) {
    helpers.emplace_back([&, i] {
      errors[i] =
          fault(reinterpret_cast<uint8_t*>(cuts[i]), cuts[i + 1] - cuts[i]);
    });
  }
  errors[0] = fault(data, cuts[1] - cuts[0]);
  for (std::thread& t : helpers) t.join();
  for (int err : errors) {
    if (err != 0) return err;
  }
  return 0;
}

struct DefaultInstance {
  Mutex mu;
  std::weak_ptr<SharedMemoryInstance> instance ABSL_GUARDED_BY(mu);
};

}  // namespace

std::string HugePagePolicy::Describe() const {
  return absl::StrCat("shared memory: ", ModeDescription(segments), " (",
                      segments_reason,
                      "); anonymous: ", ModeDescription(anonymous), " (",
                      anonymous_reason, ")");
}

std::string SelectedSysfsChoice(absl::string_view text) {
  const size_t open = text.find('[');
  const size_t close = text.find(']', open);
  if (open == absl::string_view::npos || close == absl::string_view::npos) {
    return "";
  }
  return std::string(text.substr(open + 1, close - open - 1));
}

std::string MountHugeOption(absl::string_view mountinfo, dev_t dev) {
  const std::string device = absl::StrCat(major(dev), ":", minor(dev));
  for (absl::string_view line : absl::StrSplit(mountinfo, '\n')) {
    // id parent major:minor root mount-point options ... - type source super
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (fields.size() < 3 || fields[2] != device) continue;
    const size_t dash = line.find(" - ");
    if (dash == absl::string_view::npos) continue;
    std::vector<absl::string_view> tail =
        absl::StrSplit(line.substr(dash + 3), ' ', absl::SkipEmpty());
    if (tail.size() < 3) continue;
    for (absl::string_view option : absl::StrSplit(tail[2], ',')) {
      if (absl::ConsumePrefix(&option, "huge=")) return std::string(option);
    }
    return "never";
  }
  return "";
}

HugePagePolicy ReadHugePagePolicy(int directory_fd,
                                  const std::string& directory) {
  HugePagePolicy policy;
  const std::string thp = kThpDirectory;
  const std::string anon = SelectedSysfsChoice(ReadSmallFile(thp + "/enabled"));
  const std::string shmem =
      SelectedSysfsChoice(ReadSmallFile(thp + "/shmem_enabled"));
  if (anon.empty()) {
    policy.anonymous_reason = absl::StrCat("no ", thp, "/enabled");
  } else {
    policy.anonymous = ModeOf(anon);
    policy.anonymous_reason =
        absl::StrCat("transparent_hugepage/enabled ", anon);
  }
  struct stat st;
  std::string mount;
  if (fstat(directory_fd, &st) == 0) {
    mount = MountHugeOption(ReadSmallFile("/proc/self/mountinfo"), st.st_dev);
  }
  const std::string mounted =
      mount.empty() ? absl::StrCat(directory, " not found in the mount table")
                    : absl::StrCat(directory, " mounted huge=", mount);
  if (shmem.empty()) {
    policy.segments_reason =
        absl::StrCat(mounted, "; no ", thp, "/shmem_enabled");
    return policy;
  }
  // force and deny apply to every tmpfs; the other choices only to the
  // kernel's internal one (memfd, SysV), so the mount decides.
  policy.segments = shmem == "force"  ? HugePageMode::kAlways
                    : shmem == "deny" ? HugePageMode::kNever
                                      : ModeOf(mount);
  policy.segments_reason = absl::StrCat(mounted, ", shmem_enabled ", shmem);
  return policy;
}

std::string DescribeDefaultHugePages() {
  absl::StatusOr<std::shared_ptr<SharedMemoryInstance>> instance =
      SharedMemoryInstance::Default();
  if (!instance.ok()) {
    return absl::StrCat("shared memory unavailable: ",
                        instance.status().message());
  }
  return (*instance)->huge_pages().Describe();
}

int PrefaultForWrite(uint8_t* data, uint64_t size) {
  if (size == 0) return 0;
  return SplitOverThreads(data, size, [](uint8_t* begin, uint64_t length) {
    // madvise wants whole pages: the ones the slice touches.
    const uintptr_t page = 4096;
    const uintptr_t first = reinterpret_cast<uintptr_t>(begin) & ~(page - 1);
    const uintptr_t last =
        (reinterpret_cast<uintptr_t>(begin) + length + page - 1) & ~(page - 1);
    for (;;) {
      if (madvise(reinterpret_cast<void*>(first), last - first,
                  MADV_POPULATE_WRITE) == 0) {
        return 0;
      }
      // EINTR: a signal arrived; the pages done stay done.
      if (errno != EINTR) return errno;
    }
  });
}

namespace {

class AnonymousHostBuffer : public PinnedBuffer {
 public:
  AnonymousHostBuffer(uint8_t* data, uint64_t size, uint64_t mapped)
      : data_(data), size_(size), mapped_(mapped) {}
  ~AnonymousHostBuffer() override { munmap(data_, mapped_); }
  uint8_t* data() const override { return data_; }
  uint64_t size() const override { return size_; }

 private:
  uint8_t* const data_;
  const uint64_t size_;
  const uint64_t mapped_;
};

HugePageMode AnonymousHugePages() {
  static const HugePageMode mode = ModeOf(SelectedSysfsChoice(
      ReadSmallFile(absl::StrCat(kThpDirectory, "/enabled"))));
  return mode;
}

}  // namespace

absl::StatusOr<std::unique_ptr<PinnedBuffer>> AllocateHostMemory(
    uint64_t bytes, const HostMemoryOptions& options) {
  const uint64_t page = 4096;
  if (bytes > (uint64_t{1} << 47)) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate ", bytes, " bytes of host memory"));
  }
  const uint64_t mapped = std::max(page, (bytes + page - 1) / page * page);
  void* p = mmap(nullptr, static_cast<size_t>(mapped), PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    int err = errno;
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate ", bytes,
                     " bytes of host memory: ", std::strerror(err)));
  }
  uint8_t* data = static_cast<uint8_t*>(p);
  if (options.huge_pages && AnonymousHugePages() == HugePageMode::kAdvise) {
    (void)madvise(data, static_cast<size_t>(mapped), MADV_HUGEPAGE);
  }
  if (!options.prefault) {
    return std::unique_ptr<PinnedBuffer>(
        new AnonymousHostBuffer(data, bytes, mapped));
  }
  // Anonymous memory has no space to run out of but RAM (ENOMEM: the
  // mapping above already counted against overcommit).
  int err = PrefaultForWrite(data, mapped);
  if (err == EINVAL) {
    SplitOverThreads(data, mapped, [](uint8_t* begin, uint64_t length) {
      TouchPages(begin, length);
      return 0;
    });
    err = 0;
  }
  if (err != 0) {
    munmap(data, static_cast<size_t>(mapped));
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot fault in ", bytes,
                     " bytes of host memory: ", std::strerror(err)));
  }
  return std::unique_ptr<PinnedBuffer>(
      new AnonymousHostBuffer(data, bytes, mapped));
}

absl::StatusOr<std::unique_ptr<SharedMemorySegment>>
SharedMemorySegment::Create(uint64_t size, absl::string_view prefix,
                            bool populate) {
  absl::StatusOr<std::shared_ptr<SharedMemoryInstance>> instance =
      SharedMemoryInstance::Default();
  if (!instance.ok()) return instance.status();
  return (*instance)->CreateSegment(size, prefix, populate);
}

SharedMemorySegment::~SharedMemorySegment() {
  if (data_ != nullptr) munmap(data_, static_cast<size_t>(size_));
  if (!name_.empty()) unlinkat(instance_->directory_fd_, name_.c_str() + 1, 0);
}

SharedMemoryInstance::SharedMemoryInstance(std::string directory,
                                           int directory_fd, int lock_fd,
                                           std::string id,
                                           HugePagePolicy huge_pages)
    : directory_(std::move(directory)),
      directory_fd_(directory_fd),
      lock_fd_(lock_fd),
      id_(std::move(id)),
      huge_pages_(std::move(huge_pages)) {}

SharedMemoryInstance::~SharedMemoryInstance() {
  // Unlinked while still locked: a reclaimer never sees our lock file free.
  unlinkat(directory_fd_, LockFileName(id_).c_str(), 0);
  close(lock_fd_);
  close(directory_fd_);
}

absl::StatusOr<std::shared_ptr<SharedMemoryInstance>>
SharedMemoryInstance::Create(const Options& options) {
  ScopedFd directory(
      open(options.directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!directory.valid()) {
    int err = errno;
    return absl::ErrnoToStatus(
        err,
        absl::StrCat("opening shared-memory directory ", options.directory));
  }
  constexpr int kAttempts = 8;
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    absl::StatusOr<std::string> id = RandomInstanceId();
    if (!id.ok()) return id.status();
    const std::string lock_name = LockFileName(*id);
    const std::string lock_path =
        absl::StrCat(options.directory, "/", lock_name);
    ScopedFd lock(openat(directory.get(), lock_name.c_str(),
                         O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                         0600));
    if (!lock.valid()) {
      int err = errno;
      if (err == EEXIST) continue;
      return absl::ErrnoToStatus(
          err, absl::StrCat("creating lock file ", lock_path));
    }
    if (flock(lock.get(), LOCK_EX | LOCK_NB) != 0) {
      // A reclaimer starting now took the fresh file for a dead instance's;
      // it unlinks it. Pick another id.
      if (errno == EWOULDBLOCK || errno == EINTR) continue;
      int err = errno;
      unlinkat(directory.get(), lock_name.c_str(), 0);
      return absl::ErrnoToStatus(err, absl::StrCat("flock(", lock_path, ")"));
    }
    // Such a reclaimer may also have unlinked it before our flock: then we
    // hold a lock nobody can find. Keep it only if the name is still ours.
    struct stat held, named;
    if (fstat(lock.get(), &held) != 0) {
      int err = errno;
      return absl::ErrnoToStatus(err, absl::StrCat("fstat(", lock_path, ")"));
    }
    if (fstatat(directory.get(), lock_name.c_str(), &named,
                AT_SYMLINK_NOFOLLOW) != 0 ||
        !SameFile(held, named)) {
      continue;
    }
    (void)fchmod(lock.get(), 0600);  // exact mode whatever the umask
    HugePagePolicy huge_pages =
        ReadHugePagePolicy(directory.get(), options.directory);
    return std::shared_ptr<SharedMemoryInstance>(
        new SharedMemoryInstance(options.directory, directory.Release(),
                                 lock.Release(), *id, std::move(huge_pages)));
  }
  return absl::UnavailableError(
      absl::StrCat("could not take a weightd lock file in ", options.directory,
                   " in ", kAttempts, " attempts"));
}

absl::StatusOr<std::shared_ptr<SharedMemoryInstance>>
SharedMemoryInstance::Default() {
  static DefaultInstance* const current = new DefaultInstance();
  MutexLock lock(&current->mu);
  std::shared_ptr<SharedMemoryInstance> live = current->instance.lock();
  if (live != nullptr) return live;
  absl::StatusOr<std::shared_ptr<SharedMemoryInstance>> fresh =
      Create(Options());
  if (fresh.ok()) current->instance = *fresh;
  return fresh;
}

absl::StatusOr<std::unique_ptr<SharedMemorySegment>>
SharedMemoryInstance::CreateSegment(uint64_t size, absl::string_view prefix,
                                    bool populate) {
  if (!IsSegmentPrefix(prefix)) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad shared-memory segment prefix '", prefix, "'"));
  }
  if (size > static_cast<uint64_t>(INT64_MAX)) {
    return absl::InvalidArgumentError(
        absl::StrCat("shared-memory segment too large: ", size));
  }
  std::string file_name;
  int open_error = 0;
  ScopedFd fd;
  for (int attempt = 0; attempt < 16 && !fd.valid(); ++attempt) {
    file_name = absl::StrCat(prefix, "-", id_, "-", next_segment_.fetch_add(1));
    if (file_name.size() + 1 > kMaxNameLength) {
      return absl::InvalidArgumentError(
          absl::StrCat("shared-memory name too long: /", file_name));
    }
    // Owner and group, like the daemon's Unix socket (0660): clients in the
    // daemon's group map the segment read-only; nobody else can read the
    // weights.
    fd = ScopedFd(openat(directory_fd_, file_name.c_str(),
                         O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                         0640));
    open_error = fd.valid() ? 0 : errno;
    if (open_error != EEXIST) break;
  }
  const std::string path = absl::StrCat(directory_, "/", file_name);
  if (!fd.valid()) {
    return absl::ErrnoToStatus(
        open_error, absl::StrCat("creating shared-memory segment ", path));
  }
  // From here on the segment owns the name: any failure unlinks it.
  std::unique_ptr<SharedMemorySegment> segment(new SharedMemorySegment());
  segment->instance_ = shared_from_this();
  segment->name_ = absl::StrCat("/", file_name);
  (void)fchmod(fd.get(), 0640);  // exact mode whatever the umask
  // Where huge pages need MADV_HUGEPAGE, the pages must be allocated by
  // faults of the advised mapping: fallocate would allocate small ones.
  const bool reserve_by_fault =
      populate && size > 0 && huge_pages_.segments == HugePageMode::kAdvise;
  auto fail = [&](int err) {
    segment.reset();  // unmaps, unlinks the name
    (void)ftruncate(fd.get(), 0);
    return ReserveError(err, fd.get(), path, directory_, size);
  };
  if (!reserve_by_fault) {
    if (int err = ReserveSpace(fd.get(), size); err != 0) return fail(err);
  } else if (ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
    return fail(errno);
  }
  if (size == 0) return segment;
  void* p = mmap(nullptr, static_cast<size_t>(size), PROT_READ | PROT_WRITE,
                 MAP_SHARED, fd.get(), 0);
  if (p == MAP_FAILED) {
    int err = errno;
    segment.reset();
    return absl::ErrnoToStatus(err,
                               absl::StrCat("mmap(", path, ", ", size, ")"));
  }
  segment->data_ = static_cast<uint8_t*>(p);
  segment->size_ = size;
  if (huge_pages_.segments == HugePageMode::kAdvise) {
    (void)madvise(p, static_cast<size_t>(size), MADV_HUGEPAGE);
  }
  if (!populate) return segment;
  int err = PrefaultForWrite(segment->data_, size);
  if (err == EINVAL) {
    // No MADV_POPULATE_WRITE: reserve what faults did not, then touch.
    err = reserve_by_fault ? ReserveSpace(fd.get(), size) : 0;
    if (err == 0) {
      SplitOverThreads(segment->data_, size, [](uint8_t* begin, uint64_t n) {
        TouchPages(begin, n);
        return 0;
      });
    }
  }
  // A fault past the filesystem's space is EFAULT (the SIGBUS it would be).
  if (err == EFAULT) err = ENOSPC;
  if (err != 0) return fail(err);
  return segment;
}

absl::StatusOr<SharedMemoryInstance::ReclaimStats>
SharedMemoryInstance::ReclaimDeadInstances() const {
  // Listed first, decided after: a live instance's lock file exists from
  // before its first segment, so a segment seen in the listing whose lock
  // file is missing afterwards is a dead instance's.
  std::map<std::string, std::vector<std::string>> segments_by_instance;
  std::map<pid_t, std::vector<std::string>> legacy_by_pid;
  {
    int listing_fd =
        openat(directory_fd_, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR* dir = listing_fd >= 0 ? fdopendir(listing_fd) : nullptr;
    if (dir == nullptr) {
      int err = errno;
      if (listing_fd >= 0) close(listing_fd);
      return absl::ErrnoToStatus(err, absl::StrCat("listing ", directory_));
    }
    while (struct dirent* entry = readdir(dir)) {
      std::optional<ShmFileName> parsed = ParseShmFileName(entry->d_name);
      if (!parsed.has_value()) continue;
      switch (parsed->kind) {
        case ShmFileName::kLock:
          segments_by_instance[parsed->owner];  // a dead one may have none
          break;
        case ShmFileName::kSegment:
          segments_by_instance[parsed->owner].push_back(entry->d_name);
          break;
        case ShmFileName::kLegacySegment: {
          int pid = 0;
          if (absl::SimpleAtoi(parsed->owner, &pid) && pid > 0) {
            legacy_by_pid[pid].push_back(entry->d_name);
          }
          break;
        }
      }
    }
    closedir(dir);
  }

  const uid_t euid = geteuid();
  ReclaimStats stats;
  // Unlinks the regular files among `names` that we own.
  auto remove_segments = [&](const std::vector<std::string>& names) {
    for (const std::string& name : names) {
      struct stat st;
      if (fstatat(directory_fd_, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 ||
          !S_ISREG(st.st_mode) || st.st_uid != euid) {
        continue;
      }
      if (unlinkat(directory_fd_, name.c_str(), 0) == 0) {
        ++stats.segments;
        stats.bytes += static_cast<uint64_t>(st.st_blocks) * 512;
      }
    }
  };

  for (const auto& [id, segments] : segments_by_instance) {
    if (id == id_) continue;
    const std::string lock_name = LockFileName(id);
    ScopedFd lock(openat(directory_fd_, lock_name.c_str(),
                         O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
    if (!lock.valid()) {
      if (errno != ENOENT) continue;  // not ours to judge (EACCES, ELOOP)
      int before = stats.segments;
      remove_segments(segments);
      if (stats.segments > before) ++stats.instances;
      continue;
    }
    struct stat held;
    if (fstat(lock.get(), &held) != 0 || !S_ISREG(held.st_mode) ||
        held.st_uid != euid) {
      continue;
    }
    // Taken: nobody holds it, its owner is gone. Held (EWOULDBLOCK): alive,
    // or another reclaimer is at it.
    if (flock(lock.get(), LOCK_EX | LOCK_NB) != 0) continue;
    remove_segments(segments);
    struct stat named;
    if (fstatat(directory_fd_, lock_name.c_str(), &named,
                AT_SYMLINK_NOFOLLOW) == 0 &&
        SameFile(held, named)) {
      unlinkat(directory_fd_, lock_name.c_str(), 0);
    }
    ++stats.instances;
  }

  for (const auto& [pid, segments] : legacy_by_pid) {
    if (pid == getpid()) continue;
    // EPERM: alive, another user's.
    if (kill(pid, 0) == 0 || errno != ESRCH) continue;
    int before = stats.segments;
    remove_segments(segments);
    if (stats.segments > before) ++stats.instances;
  }
  return stats;
}

SharedMapping::~SharedMapping() {
  if (data_ != nullptr) {
    munmap(const_cast<uint8_t*>(data_), static_cast<size_t>(size_));
  }
}

absl::StatusOr<std::unique_ptr<SharedMapping>> OpenSharedSegment(
    const std::string& name, uint64_t size) {
  if (name.empty() || name[0] != '/' || name.size() > kMaxNameLength ||
      name.find('/', 1) != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad shared-memory name '", name, "'"));
  }
  int fd = shm_open(name.c_str(), O_RDONLY | O_CLOEXEC, 0);
  if (fd < 0) {
    int err = errno;
    return absl::ErrnoToStatus(err, absl::StrCat("shm_open(", name, ")"));
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int err = errno;
    close(fd);
    return absl::ErrnoToStatus(err, absl::StrCat("fstat(", name, ")"));
  }
  if (static_cast<uint64_t>(st.st_size) < size) {
    close(fd);
    return absl::OutOfRangeError(absl::StrCat("shared-memory segment ", name,
                                              " has ", st.st_size,
                                              " bytes, wanted ", size));
  }
  std::unique_ptr<SharedMapping> mapping(new SharedMapping());
  mapping->name_ = name;
  if (size > 0) {
    void* p =
        mmap(nullptr, static_cast<size_t>(size), PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      close(fd);
      return absl::ErrnoToStatus(err, absl::StrCat("mmap(", name, ")"));
    }
    mapping->data_ = static_cast<const uint8_t*>(p);
    mapping->size_ = size;
  }
  close(fd);
  return mapping;
}

absl::StatusOr<IpcHandle> EncodeSharedHandle(const SharedHandleInfo& info) {
  if (info.name.empty() || info.name.size() > kMaxNameLength) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shared-memory name does not fit a handle: '", info.name, "'"));
  }
  if (info.device_index < 0 || info.device_index > 255) {
    return absl::InvalidArgumentError(
        absl::StrCat("device index out of range: ", info.device_index));
  }
  IpcHandle h;
  std::memcpy(h.bytes.data(),
              info.kind == SharedHandleKind::kHost ? kHostMagic : kFakeMagic,
              4);
  h.bytes[4] = kVersion;
  h.bytes[5] = static_cast<uint8_t>(info.device_index);
  for (int i = 0; i < 8; ++i) {
    h.bytes[8 + i] = static_cast<uint8_t>(info.size >> (8 * i));
  }
  std::memcpy(h.bytes.data() + 16, info.name.data(), info.name.size());
  return h;
}

absl::StatusOr<SharedHandleInfo> DecodeSharedHandle(const IpcHandle& handle) {
  SharedHandleInfo info;
  const uint8_t* b = handle.bytes.data();
  if (std::memcmp(b, kHostMagic, 4) == 0) {
    info.kind = SharedHandleKind::kHost;
  } else if (std::memcmp(b, kFakeMagic, 4) == 0) {
    info.kind = SharedHandleKind::kFakeGpu;
  } else {
    return absl::InvalidArgumentError(
        "not a host or fake-GPU shared-memory handle");
  }
  if (b[4] != kVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported handle version ", b[4]));
  }
  info.device_index = b[5];
  for (int i = 0; i < 8; ++i) info.size |= uint64_t{b[8 + i]} << (8 * i);
  const char* name = reinterpret_cast<const char*>(b + 16);
  info.name.assign(name, strnlen(name, kIpcHandleBytes - 16));
  if (info.name.empty() || info.name[0] != '/' ||
      info.name.size() > kMaxNameLength) {
    return absl::InvalidArgumentError("handle carries a bad segment name");
  }
  return info;
}

}  // namespace weightd
