#include "loader/device/shared_memory.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace weightd {
namespace {

constexpr size_t kMaxNameLength = 47;
constexpr char kHostMagic[4] = {'W', 'D', 'S', 'H'};
constexpr char kFakeMagic[4] = {'W', 'D', 'F', 'G'};
constexpr uint8_t kVersion = 1;

absl::Status ErrnoError(int err, const std::string& what) {
  std::string message = absl::StrCat(what, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    case ENOMEM:
    case ENOSPC:
    case EMFILE:
    case ENFILE:
    case EFBIG:
      return absl::ResourceExhaustedError(message);
    case EINVAL:
    case ENAMETOOLONG:
      return absl::InvalidArgumentError(message);
    default:
      return absl::InternalError(message);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<SharedMemorySegment>>
SharedMemorySegment::Create(uint64_t size, absl::string_view prefix,
                            bool populate) {
  static std::atomic<uint64_t> counter{0};
  if (size > static_cast<uint64_t>(INT64_MAX)) {
    return absl::InvalidArgumentError(
        absl::StrCat("shared-memory segment too large: ", size));
  }
  std::string name;
  int fd = -1;
  for (int attempt = 0; attempt < 16; ++attempt) {
    name = absl::StrCat("/", prefix, "-", getpid(), "-", counter.fetch_add(1));
    if (name.size() > kMaxNameLength) {
      return absl::InvalidArgumentError(
          absl::StrCat("shared-memory name too long: ", name));
    }
    // Owner and group, like the daemon's Unix socket (0660): clients in the
    // daemon's group map the segment read-only; nobody else can read the
    // weights.
    fd = shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
    if (fd >= 0 || errno != EEXIST) break;
  }
  if (fd < 0) return ErrnoError(errno, absl::StrCat("shm_open(", name, ")"));
  std::unique_ptr<SharedMemorySegment> segment(new SharedMemorySegment());
  segment->name_ = name;   // unlinked by the destructor from here on
  (void)fchmod(fd, 0640);  // exact mode whatever the umask
  if (ftruncate(fd, static_cast<off_t>(size)) != 0) {
    int err = errno;
    close(fd);
    return ErrnoError(err, absl::StrCat("ftruncate(", name, ", ", size, ")"));
  }
  if (size > 0) {
    int flags = MAP_SHARED | (populate ? MAP_POPULATE : 0);
    void* p = mmap(nullptr, static_cast<size_t>(size), PROT_READ | PROT_WRITE,
                   flags, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      close(fd);
      return ErrnoError(err, absl::StrCat("mmap(", name, ", ", size, ")"));
    }
    segment->data_ = static_cast<uint8_t*>(p);
    segment->size_ = size;
  }
  close(fd);
  return segment;
}

SharedMemorySegment::~SharedMemorySegment() {
  if (data_ != nullptr) munmap(data_, static_cast<size_t>(size_));
  if (!name_.empty()) shm_unlink(name_.c_str());
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
  if (fd < 0) return ErrnoError(errno, absl::StrCat("shm_open(", name, ")"));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int err = errno;
    close(fd);
    return ErrnoError(err, absl::StrCat("fstat(", name, ")"));
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
      return ErrnoError(err, absl::StrCat("mmap(", name, ")"));
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

absl::StatusOr<std::unique_ptr<SharedMapping>> OpenSharedHandle(
    const IpcHandle& handle) {
  absl::StatusOr<SharedHandleInfo> info = DecodeSharedHandle(handle);
  if (!info.ok()) return info.status();
  return OpenSharedSegment(info->name, info->size);
}

}  // namespace weightd
