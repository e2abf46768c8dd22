// weightd: loads PyTorch checkpoints once and hands their tensors to many
// processes.
#include <signal.h>

#include <cstdio>
#include <string>
#include <vector>

#include "loader/common/logging.h"
#include "server/config.h"
#include "server/daemon.h"

int main(int argc, char** argv) {
  using namespace weightd;
  std::vector<std::string> args(argv + 1, argv + argc);
  auto config = ParseServerConfig(args);
  if (!config.ok()) {
    if (config.status().code() == absl::StatusCode::kNotFound) {
      std::fputs(std::string(config.status().message()).c_str(), stdout);
      return 0;
    }
    std::fprintf(stderr, "weightd: %s\n%s",
                 std::string(config.status().message()).c_str(),
                 ServerUsage().c_str());
    return 2;
  }
  const std::string& level = config->log_level;
  SetMinLogLevel(level == "debug"     ? LogLevel::kDebug
                 : level == "warning" ? LogLevel::kWarning
                 : level == "error"   ? LogLevel::kError
                                      : LogLevel::kInfo);

  // Block the stop signals in every thread; this one waits for them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto daemon = Daemon::Create(*config);
  if (!daemon.ok()) {
    LogError("weightd: cannot start: %s",
             std::string(daemon.status().message()));
    return 1;
  }
  LogInfo("%s", (*daemon)->ReadyLine());

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  LogInfo("weightd: %s received, shutting down",
          signal_number == SIGTERM ? "SIGTERM" : "SIGINT");
  (*daemon)->Shutdown();
  LogInfo("weightd: stopped");
  return 0;
}
