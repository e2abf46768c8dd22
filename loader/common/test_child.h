// Tests only: running checks in a forked child process, for tests that need a
// second process (opening what this one exported, a process that dies holding
// resources) or a process they may change (namespaces, limits). The child
// runs only async-signal-safe-enough test code and leaves with _exit, so no
// gtest state or atexit handler runs twice.
#ifndef WEIGHTD_LOADER_COMMON_TEST_CHILD_H_
#define WEIGHTD_LOADER_COMMON_TEST_CHILD_H_

#include <sys/types.h>

#include <string>

#include "absl/functional/function_ref.h"
#include "absl/strings/string_view.h"

namespace weightd {
namespace testing {

// Runs `body` in a forked child and returns the child's exit status: what
// `body` returned (0-255), 128 + the signal that ended it, or -1 when fork
// failed.
int RunInChild(absl::FunctionRef<int()> body);

// Sends `report` (one line, no '\n') to the parent, then waits to be killed;
// never returns.
using ReportAndWait = absl::FunctionRef<void(absl::string_view report)>;

// A forked child that runs `setup`, which makes whatever it should hold and
// then calls its ReportAndWait with a line for the parent: the child then
// stays alive, holding it all, until Kill() (SIGKILL) or destruction. A child
// whose `setup` returns without reporting exits with status 1.
class LingeringChild {
 public:
  explicit LingeringChild(absl::FunctionRef<void(ReportAndWait)> setup);
  ~LingeringChild() { Kill(); }
  LingeringChild(const LingeringChild&) = delete;
  LingeringChild& operator=(const LingeringChild&) = delete;

  // The line the child reported; empty when it failed before reporting.
  const std::string& report() const { return report_; }
  // SIGKILL and reap (once; later calls do nothing).
  void Kill();

 private:
  pid_t pid_ = -1;
  std::string report_;
};

}  // namespace testing
}  // namespace weightd

#endif  // WEIGHTD_LOADER_COMMON_TEST_CHILD_H_
