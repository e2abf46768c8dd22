#include "loader/io/mapping_fault_guard.h"

#include <errno.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <mutex>

#include "absl/strings/str_cat.h"

namespace weightd {

// The handler reaches the scopes' private fields through this.
struct MappingFaultHandlerAccess {
  static void Handle(int sig, siginfo_t* info, void* ucontext);
  static bool TryPatch(MappingFaultScope* scope, uintptr_t address);
};

namespace {

// The innermost scope of this thread. initial-exec TLS, so that reading it in
// the signal handler is a plain load (never a lazy __tls_get_addr allocation).
__attribute__((tls_model(
    "initial-exec"))) thread_local MappingFaultScope* innermost_scope = nullptr;

// The disposition ours replaced, published before ours is installed.
struct sigaction previous_action;
std::atomic<bool> previous_action_saved{false};
uintptr_t page_size = 4096;

// Hands the signal on as if our handler were not installed.
void ChainToPrevious(int sig, siginfo_t* info, void* ucontext) {
  if (previous_action_saved.load(std::memory_order_acquire)) {
    const struct sigaction& prev = previous_action;
    if (prev.sa_flags & SA_SIGINFO) {
      if (reinterpret_cast<void*>(prev.sa_sigaction) !=
              reinterpret_cast<void*>(SIG_DFL) &&
          reinterpret_cast<void*>(prev.sa_sigaction) !=
              reinterpret_cast<void*>(SIG_IGN)) {
        prev.sa_sigaction(sig, info, ucontext);
        return;
      }
    } else if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN) {
      prev.sa_handler(sig);
      return;
    }
  }
  // The default action (SIGBUS cannot usefully be ignored: the kernel forces a
  // fault's SIGBUS through anyway). Restore it; a fault then re-executes and
  // dies of SIGBUS with the usual core dump, and a signal sent with kill is
  // raised again, pending until this handler returns.
  struct sigaction dfl;
  std::memset(&dfl, 0, sizeof(dfl));
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(sig, &dfl, nullptr);
  if (info == nullptr || info->si_code <= 0) raise(sig);
}

absl::Status InstallOnce() {
  long page = ::sysconf(_SC_PAGESIZE);
  if (page > 0) page_size = static_cast<uintptr_t>(page);
  struct sigaction action;
  std::memset(&action, 0, sizeof(action));
  action.sa_sigaction = &MappingFaultHandlerAccess::Handle;
  // SA_ONSTACK: use an alternate stack where a sanitizer set one up.
  action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
  sigemptyset(&action.sa_mask);
  // Save the previous disposition before ours can run.
  if (sigaction(SIGBUS, nullptr, &previous_action) != 0) {
    return absl::InternalError(
        absl::StrCat("sigaction(SIGBUS) query: ", std::strerror(errno)));
  }
  previous_action_saved.store(true, std::memory_order_release);
  struct sigaction replaced;
  if (sigaction(SIGBUS, &action, &replaced) != 0) {
    return absl::InternalError(
        absl::StrCat("sigaction(SIGBUS) install: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace

void MappingDamage::Record(uint64_t offset) {
  uint64_t seen = first_offset_.load(std::memory_order_relaxed);
  while (offset < seen && !first_offset_.compare_exchange_weak(
                              seen, offset, std::memory_order_acq_rel)) {
  }
  damaged_.store(true, std::memory_order_seq_cst);
}

bool MappingFaultHandlerAccess::TryPatch(MappingFaultScope* scope,
                                         uintptr_t address) {
  uintptr_t page = address & ~(page_size - 1);
  // Faulting again on a page this scope already patched means the patch did
  // not take: give up rather than loop.
  if (scope->last_patched_page_ == page && page != 0) return false;
  uint64_t offset = address - scope->base_;
  // Damage is published before the zero page exists, so a reader on another
  // thread that sees the zero page without faulting also sees the damage when
  // its scope ends.
  scope->damage_->Record(offset);
  // The raw system call: no sanitizer interceptor runs in the handler.
  long mapped = syscall(SYS_mmap, page, page_size, PROT_READ,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  if (mapped == -1 || static_cast<uintptr_t>(mapped) != page) return false;
  scope->last_patched_page_ = page;
  if (scope->first_fault_offset_ == MappingDamage::kNoOffset) {
    scope->first_fault_offset_ = offset;
  }
  return true;
}

void MappingFaultHandlerAccess::Handle(int sig, siginfo_t* info,
                                       void* ucontext) {
  int saved_errno = errno;
  // si_code > 0: raised by the kernel for a fault, not sent by a process.
  if (info != nullptr && info->si_code > 0) {
    uintptr_t address = reinterpret_cast<uintptr_t>(info->si_addr);
    for (MappingFaultScope* scope = innermost_scope; scope != nullptr;
         scope = scope->outer_) {
      if (address >= scope->base_ && address - scope->base_ < scope->length_) {
        if (TryPatch(scope, address)) {
          errno = saved_errno;
          return;
        }
        break;
      }
    }
  }
  errno = saved_errno;
  ChainToPrevious(sig, info, ucontext);
}

absl::Status InstallMappingFaultHandler() {
  static std::once_flag once;
  static absl::Status* result = nullptr;
  std::call_once(once, [] { result = new absl::Status(InstallOnce()); });
  return *result;
}

MappingFaultScope::MappingFaultScope(const void* base, uint64_t length,
                                     MappingDamage* damage)
    : base_(reinterpret_cast<uintptr_t>(base)),
      length_(base == nullptr ? 0 : length),
      damage_(damage),
      installed_(InstallMappingFaultHandler().ok()),
      outer_(innermost_scope) {
  // The handler runs on this thread: a compiler fence orders the fields
  // before the scope becomes visible to it.
  std::atomic_signal_fence(std::memory_order_seq_cst);
  innermost_scope = this;
  std::atomic_signal_fence(std::memory_order_seq_cst);
}

MappingFaultScope::~MappingFaultScope() {
  std::atomic_signal_fence(std::memory_order_seq_cst);
  // Normally the innermost; unlink from wherever it is all the same.
  MappingFaultScope** link = &innermost_scope;
  while (*link != nullptr && *link != this) link = &(*link)->outer_;
  if (*link == this) *link = outer_;
  std::atomic_signal_fence(std::memory_order_seq_cst);
}

}  // namespace weightd
