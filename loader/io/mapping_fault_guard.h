// Survives SIGBUS on reads of a file mapping whose file shrank (or whose pages
// cannot be read back: an I/O error) while it was mapped.
//
// A read of a MAP_SHARED page past the end of the file raises SIGBUS, which
// would kill the daemon. Code that reads a mapping opens a MappingFaultScope on
// its own thread for that mapping. The process-wide handler (installed once,
// lazily, by the first scope) looks at the faulting address: when it lies in
// the innermost scope of the faulting thread that covers it, the handler
// records the fault in the mapping's MappingDamage, replaces the faulting page
// with an anonymous zero page (mmap MAP_FIXED) and returns, so the faulting
// instruction re-executes and reads zeros. The reader notices when its scope
// ends (faulted() / damage->damaged()) and must then discard what it read.
// Nothing unwinds through C++ frames (no longjmp), so destructors still run.
//
// A SIGBUS anywhere else (another mapping, a thread with no scope, a signal
// sent by kill) is passed on as if this handler were not there: to the handler
// that was installed before ours (ASan and TSan install their own), else the
// default action runs, so a real bug still crashes.
//
// Callers normally use MappedFile::GuardedRead / CopyTo (mapped_file.h), which
// wrap this with the error message and a size check.
#ifndef WEIGHTD_LOADER_IO_MAPPING_FAULT_GUARD_H_
#define WEIGHTD_LOADER_IO_MAPPING_FAULT_GUARD_H_

#include <atomic>
#include <cstdint>

#include "absl/status/status.h"

namespace weightd {

// What the handler found wrong with one mapping, shared by every thread that
// reads it. Lock-free atomics only: the signal handler writes it.
class MappingDamage {
 public:
  static constexpr uint64_t kNoOffset = ~uint64_t{0};

  // Whether any read of the mapping faulted (or the file was seen to shrink).
  // Once true it stays true: patched pages read as zeros, so no later read of
  // the mapping can be trusted.
  bool damaged() const { return damaged_.load(std::memory_order_acquire); }
  // The lowest damaged file offset recorded so far (kNoOffset when none).
  uint64_t first_offset() const {
    return first_offset_.load(std::memory_order_acquire);
  }
  // Marks the mapping damaged at `offset`. Async-signal-safe.
  void Record(uint64_t offset);

 private:
  std::atomic<bool> damaged_{false};
  std::atomic<uint64_t> first_offset_{kNoOffset};
};

// Installs the process-wide SIGBUS handler, once; later calls return the first
// call's result. Thread-safe. MappingFaultScope calls it, so callers need not.
absl::Status InstallMappingFaultHandler();

// "This thread is now reading [base, base + length), a mapping of file offset
// 0 onwards". Lives on the reading thread's stack, created and destroyed on
// that thread; scopes nest (the innermost covering the address takes the
// fault). A read of the mapping on another thread needs a scope there too.
class MappingFaultScope {
 public:
  // `damage` must outlive the scope. If the handler could not be installed
  // (sigaction failed: never expected), installed() is false and faults crash
  // as before; the status is in InstallMappingFaultHandler().
  MappingFaultScope(const void* base, uint64_t length, MappingDamage* damage);
  ~MappingFaultScope();

  MappingFaultScope(const MappingFaultScope&) = delete;
  MappingFaultScope& operator=(const MappingFaultScope&) = delete;

  bool installed() const { return installed_; }
  // Whether a read in this scope faulted, and the file offset of its first
  // fault (MappingDamage::kNoOffset when none).
  bool faulted() const {
    return first_fault_offset_ != MappingDamage::kNoOffset;
  }
  uint64_t first_fault_offset() const { return first_fault_offset_; }

 private:
  friend struct MappingFaultHandlerAccess;

  uintptr_t base_;
  uint64_t length_;
  MappingDamage* damage_;
  bool installed_;
  MappingFaultScope* outer_;  // the next enclosing scope of this thread
  // Written by the signal handler on this same thread.
  volatile uint64_t first_fault_offset_ = MappingDamage::kNoOffset;
  volatile uintptr_t last_patched_page_ = 0;
};

}  // namespace weightd

#endif  // WEIGHTD_LOADER_IO_MAPPING_FAULT_GUARD_H_
