// weightd: loads PyTorch checkpoints once and hands their tensors to many
// processes.
#include <signal.h>
#include <sys/resource.h>

#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/parse.h"
#include "loader/common/logging.h"
#include "server/config.h"
#include "server/config_flags.h"
#include "server/daemon.h"

int main(int argc, char** argv) {
  using namespace weightd;
  SetUpServerFlagsUsage();
  // absl answers --help and --version, and refuses unknown flags and values
  // that do not parse (exit status 1, absl's); the config the flags make up is
  // checked here (exit status 2, as bad configurations always were).
  std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() > 1) {
    std::fprintf(stderr, "weightd: unexpected argument \"%s\" (see --help)\n",
                 positional[1]);
    return 2;
  }
  absl::StatusOr<ServerConfig> config = ServerConfigFromFlags();
  if (!config.ok()) {
    std::fprintf(stderr, "weightd: %s (see --help)\n",
                 std::string(config.status().message()).c_str());
    return 2;
  }
  const std::string& level = config->log_level;
  SetMinLogLevel(level == "debug"     ? LogLevel::kDebug
                 : level == "warning" ? LogLevel::kWarning
                 : level == "error"   ? LogLevel::kError
                                      : LogLevel::kInfo);

  // Mappings, sockets and watches each cost a descriptor: take the whole
  // hard limit the system grants (the soft default, often 1024, is for
  // interactive programs), so clients can still connect under load.
  rlimit files{};
  if (getrlimit(RLIMIT_NOFILE, &files) == 0 &&
      files.rlim_cur < files.rlim_max) {
    const rlim_t before = files.rlim_cur;
    files.rlim_cur = files.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &files) == 0) {
      LogInfo("file descriptor limit raised from %d to %d",
              static_cast<uint64_t>(before),
              static_cast<uint64_t>(files.rlim_max));
    }
  }

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
