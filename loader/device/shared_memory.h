// POSIX shared-memory segments: host copies of checkpoints (casts, byte
// swaps) and the fake GPU's memory, the 64-byte handles of shared-memory
// arenas (opened with OpenArenaHandle(), arena_handle.h), the client-side
// read-only mapping, and the bookkeeping that lets a restarted daemon reclaim
// what a killed one left.
//
// Handle layout (little-endian): bytes 0-3 magic ("WDSH" host, "WDFG" fake
// GPU), 4 version (1), 5 device index, 6-7 zero, 8-15 size, 16-63 the segment
// name (starts with '/', NUL-padded, at most 47 characters).
//
// Naming: every process that creates segments is a SharedMemoryInstance with
// a random 12-hex-digit id. It holds the lock file "weightd-<id>.lock" in the
// shm directory flock'ed (LOCK_EX) from before its first segment until after
// its last one is unlinked, and names its segments "<prefix>-<id>-<counter>"
// (prefix "weightd" for host segments, "weightd-fake<N>" for fake GPU N). A
// lock file nobody holds, or a segment whose lock file is gone, belongs to a
// weightd that is no longer running; ReclaimDeadInstances() removes those.
//
// Fresh memory: a populated segment is faulted in by several threads at once
// (MADV_POPULATE_WRITE), and backed by transparent huge pages where the
// directory's tmpfs allows them (HugePagePolicy below). Fresh anonymous host
// memory (AllocateHostMemory) gets the same.
#ifndef WEIGHTD_LOADER_DEVICE_SHARED_MEMORY_H_
#define WEIGHTD_LOADER_DEVICE_SHARED_MEMORY_H_

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "loader/device/device.h"

namespace weightd {

// A segment this process created, mapped read-write. Destruction unmaps it
// and unlinks its name; mappings other processes hold stay valid until they
// unmap.
class SharedMemoryInstance;

// Whether the kernel backs a kind of memory with transparent huge pages.
enum class HugePageMode {
  kNever,
  kAdvise,  // only mappings marked MADV_HUGEPAGE
  kAlways,  // always, within_size or force
};

// What is in effect for this instance's segments and for fresh anonymous
// memory, read once from sysfs and the mount table.
struct HugePagePolicy {
  // The tmpfs holding the segments: its huge= mount option, overridden by
  // /sys/kernel/mm/transparent_hugepage/shmem_enabled "force" or "deny".
  HugePageMode segments = HugePageMode::kNever;
  std::string segments_reason;  // e.g. "/dev/shm mounted huge=never, ..."
  // /sys/kernel/mm/transparent_hugepage/enabled.
  HugePageMode anonymous = HugePageMode::kNever;
  std::string anonymous_reason;
  // One line for `weightctl info`.
  std::string Describe() const;
};

// The bracketed choice of a sysfs setting ("always [madvise] never" ->
// "madvise"); empty when there is none.
std::string SelectedSysfsChoice(absl::string_view text);
// The huge= option of the filesystem with device `dev` in /proc/self/mountinfo
// text `mountinfo` ("never" when the option is absent, empty when no line
// names the device).
std::string MountHugeOption(absl::string_view mountinfo, dev_t dev);
// The policy for segments in `directory` (open as `directory_fd`).
HugePagePolicy ReadHugePagePolicy(int directory_fd,
                                  const std::string& directory);
// The policy of this process's default instance (/dev/shm), or why it has
// none.
std::string DescribeDefaultHugePages();

// Faults the pages [data, data + size) touches in for writing (contents
// kept), split over up to 8 threads at 2 MiB-aligned addresses (no huge page
// is shared between threads).
// Returns 0 or an errno value: EINVAL where the kernel has no
// MADV_POPULATE_WRITE (before 5.14), EFAULT or ENOMEM where the backing store
// cannot supply a page.
int PrefaultForWrite(uint8_t* data, uint64_t size);

// How AllocateHostMemory gets its pages (read_bench measures each choice).
struct HostMemoryOptions {
  // MADV_HUGEPAGE where anonymous huge pages are on madvise.
  bool huge_pages = true;
  // Every page faulted in before returning (PrefaultForWrite, in parallel);
  // false: on first touch. With huge pages, first touch wins (read_bench:
  // each 2 MiB is zeroed by the fault and written while still in the CPU's
  // caches; a prefault zeroes the whole buffer first, the writer then
  // misses), so the default.
  bool prefault = false;
};

// Fresh anonymous host memory (the fake GPU's staging buffers): page-aligned,
// by default MADV_HUGEPAGE where anonymous huge pages are on madvise, faulted
// on first touch (read_bench's fastest of the four choices, about 3x plain
// 4 KiB first touch on the VM it ran on).
// RESOURCE_EXHAUSTED naming the size when it cannot be had.
absl::StatusOr<std::unique_ptr<PinnedBuffer>> AllocateHostMemory(
    uint64_t bytes, const HostMemoryOptions& options = HostMemoryOptions());

class SharedMemorySegment {
 public:
  // SharedMemoryInstance::CreateSegment() in this process's default instance.
  static absl::StatusOr<std::unique_ptr<SharedMemorySegment>> Create(
      uint64_t size, absl::string_view prefix = "weightd",
      bool populate = false);
  ~SharedMemorySegment();
  SharedMemorySegment(const SharedMemorySegment&) = delete;
  SharedMemorySegment& operator=(const SharedMemorySegment&) = delete;

  const std::string& name() const { return name_; }
  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  friend class SharedMemoryInstance;
  SharedMemorySegment() = default;
  // Keeps the instance's lock file held while this name exists.
  std::shared_ptr<const SharedMemoryInstance> instance_;
  std::string name_;  // "/" + the file's name in the instance's directory
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

class SharedMemoryInstance
    : public std::enable_shared_from_this<SharedMemoryInstance> {
 public:
  struct Options {
    // Where segments live. Clients shm_open() names, so a daemon's segments
    // must be in /dev/shm; another directory is for tests of creation and
    // reclaim.
    std::string directory = "/dev/shm";
  };
  // Picks a fresh id and takes its lock file. Each segment holds a reference;
  // the lock file is unlinked when the last reference goes.
  static absl::StatusOr<std::shared_ptr<SharedMemoryInstance>> Create(
      const Options& options);
  // The instance in /dev/shm this process uses now, made when none is alive
  // (a daemon keeps one reference from startup, so it has a single id).
  static absl::StatusOr<std::shared_ptr<SharedMemoryInstance>> Default();
  ~SharedMemoryInstance();
  SharedMemoryInstance(const SharedMemoryInstance&) = delete;
  SharedMemoryInstance& operator=(const SharedMemoryInstance&) = delete;

  const std::string& id() const { return id_; }
  const std::string& directory() const { return directory_; }
  const HugePagePolicy& huge_pages() const { return huge_pages_; }

  // Creates "/<prefix>-<id>-<counter>" of `size` bytes with all its space
  // reserved (tmpfs reserves nothing at ftruncate: a full /dev/shm would
  // otherwise surface as SIGBUS on the first write). RESOURCE_EXHAUSTED
  // naming the size and the filesystem's free space when it does not fit,
  // with nothing left behind. `prefix` is "weightd" or "weightd-" and
  // [a-z0-9-]. Size 0: no mapping, data() null. `populate` faults every page
  // in up front, in parallel. Where the directory's huge pages are on advise,
  // a populated segment's space is reserved by that fault of a MADV_HUGEPAGE
  // mapping instead of fallocate (fallocate has no mapping to advise), with
  // the same RESOURCE_EXHAUSTED when it does not fit.
  absl::StatusOr<std::unique_ptr<SharedMemorySegment>> CreateSegment(
      uint64_t size, absl::string_view prefix = "weightd",
      bool populate = false);

  struct ReclaimStats {
    int instances = 0;   // dead owners whose files were removed
    int segments = 0;    // segments unlinked
    uint64_t bytes = 0;  // memory those segments held (allocated blocks)
  };
  // Removes, from this instance's directory, the segments and lock files of
  // weightd instances that are gone: a lock file nobody holds, segments whose
  // lock file is missing, and the older "weightd[-fake<N>]-<pid>-<counter>"
  // names (no lock file) whose pid is not alive in this PID namespace. Leaves
  // alone this instance, every live one (any process, any PID namespace
  // sharing the directory), and every file not owned by our effective uid.
  absl::StatusOr<ReclaimStats> ReclaimDeadInstances() const;

 private:
  friend class SharedMemorySegment;  // unlinks its name in directory_fd_
  SharedMemoryInstance(std::string directory, int directory_fd, int lock_fd,
                       std::string id, HugePagePolicy huge_pages);
  const std::string directory_;
  const int directory_fd_;
  const int lock_fd_;  // holds flock(LOCK_EX) for the instance's life
  const std::string id_;
  const HugePagePolicy huge_pages_;
  std::atomic<uint64_t> next_segment_{0};
};

// Another process's segment, mapped read-only.
class SharedMapping {
 public:
  ~SharedMapping();
  SharedMapping(const SharedMapping&) = delete;
  SharedMapping& operator=(const SharedMapping&) = delete;

  const std::string& name() const { return name_; }
  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  friend absl::StatusOr<std::unique_ptr<SharedMapping>> OpenSharedSegment(
      const std::string& name, uint64_t size);
  SharedMapping() = default;
  std::string name_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

// Maps the first `size` bytes of segment `name` read-only. NOT_FOUND when the
// segment is gone, OUT_OF_RANGE when it is smaller than `size`.
absl::StatusOr<std::unique_ptr<SharedMapping>> OpenSharedSegment(
    const std::string& name, uint64_t size);

enum class SharedHandleKind { kHost, kFakeGpu };

struct SharedHandleInfo {
  SharedHandleKind kind = SharedHandleKind::kHost;
  int device_index = 0;
  uint64_t size = 0;
  std::string name;
};

absl::StatusOr<IpcHandle> EncodeSharedHandle(const SharedHandleInfo& info);
// INVALID_ARGUMENT for anything that is not a host or fake-GPU handle (a
// CUDA handle, garbage).
absl::StatusOr<SharedHandleInfo> DecodeSharedHandle(const IpcHandle& handle);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_DEVICE_SHARED_MEMORY_H_
