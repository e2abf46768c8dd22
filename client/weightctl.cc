// weightctl: the command-line client. `inspect` works offline; every other
// command talks to the daemon at --address (default $WEIGHTD_ADDRESS, else
// unix:run/weightd.sock, the socket scripts/serve uses when run from the
// repository root).
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "client/commands.h"

namespace {

void PrintUsage(std::ostream& out) {
  out << "usage: weightctl [--address=unix:PATH|HOST:PORT] COMMAND [args]\n"
         "commands:\n"
         "  health                       gRPC health of the daemon (SERVING "
         "exits 0)\n"
         "  info                         version, GPUs, io backend, budgets\n"
         "  inspect [--json] [--hash] FILE\n"
         "                               read a checkpoint offline (no "
         "daemon)\n"
         "  load FILE [--device DEV] [--json] [--hash] [--cast DTYPE] [--map "
         "FROM->TO]\n"
         "                               load through the daemon (DEV: cpu, "
         "cuda:N, meta)\n"
         "  ls                           cached models\n"
         "  describe MODEL_ID            one cached model's tensors\n"
         "  unload MODEL_ID [--force]    drop a model (refused while leased "
         "unless forced)\n"
         "  stats                        cache counters and tier usage\n"
         "  fetch MODEL_ID|FILE OUT.safetensors [--device DEV]\n"
         "                               copy tensors over the wire into a "
         "safetensors file\n";
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  const char* env_address = std::getenv("WEIGHTD_ADDRESS");
  std::string address =
      env_address != nullptr ? env_address : "unix:run/weightd.sock";
  size_t i = 0;
  for (; i < args.size() && absl::StartsWith(args[i], "--"); ++i) {
    if (absl::StartsWith(args[i], "--address=")) {
      address = args[i].substr(strlen("--address="));
    } else if (args[i] == "--address" && i + 1 < args.size()) {
      address = args[++i];
    } else if (args[i] == "--help") {
      PrintUsage(std::cout);
      return 0;
    } else {
      std::cerr << "weightctl: unknown flag " << args[i] << "\n";
      PrintUsage(std::cerr);
      return 2;
    }
  }
  if (i >= args.size()) {
    PrintUsage(std::cerr);
    return 2;
  }
  std::string command = args[i];
  std::vector<std::string> rest(args.begin() + i + 1, args.end());
  const auto& commands = weightd::WeightctlCommands();
  auto it = commands.find(command);
  if (it == commands.end()) {
    std::cerr << "weightctl: unknown command \"" << command << "\"\n";
    PrintUsage(std::cerr);
    return 2;
  }
  return it->second(address, rest, std::cout, std::cerr);
}
