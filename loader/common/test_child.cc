#include "loader/common/test_child.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>

namespace weightd {
namespace testing {
namespace {

int ExitStatus(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

int Reap(pid_t pid) {
  int status = 0;
  pid_t done;
  do {
    done = waitpid(pid, &status, 0);
  } while (done < 0 && errno == EINTR);
  return done == pid ? ExitStatus(status) : -1;
}

}  // namespace

int RunInChild(absl::FunctionRef<int()> body) {
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) _exit(body());
  return Reap(pid);
}

LingeringChild::LingeringChild(absl::FunctionRef<void(ReportAndWait)> setup) {
  int fds[2];
  if (pipe(fds) != 0) return;
  pid_ = fork();
  if (pid_ < 0) {
    close(fds[0]);
    close(fds[1]);
    return;
  }
  if (pid_ == 0) {
    close(fds[0]);
    const int out = fds[1];
    setup([out](absl::string_view report) {
      std::string line(report);
      line += '\n';
      if (write(out, line.data(), line.size()) !=
          static_cast<ssize_t>(line.size())) {
        _exit(2);
      }
      for (;;) pause();
    });
    _exit(1);
  }
  close(fds[1]);
  std::string received;
  char buffer[512];
  ssize_t n;
  while (received.find('\n') == std::string::npos &&
         ((n = read(fds[0], buffer, sizeof(buffer))) > 0 ||
          (n < 0 && errno == EINTR))) {
    if (n > 0) received.append(buffer, static_cast<size_t>(n));
  }
  close(fds[0]);
  size_t end = received.find('\n');
  if (end != std::string::npos) report_ = received.substr(0, end);
}

void LingeringChild::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  Reap(pid_);
  pid_ = -1;
}

}  // namespace testing
}  // namespace weightd
