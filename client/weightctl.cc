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
  out << "usage: weightctl [--address=unix:PATH|HOST:PORT] [TCP options] "
         "COMMAND [args]\n"
         "TCP options (the daemon's TCP listeners need TLS plus a token or a "
         "client certificate):\n"
         "  --tls_ca_file=PEM    CA that signed the daemon's certificate "
         "($WEIGHTD_TLS_CA_FILE)\n"
         "  --tls_cert_file=PEM  client certificate for mTLS "
         "($WEIGHTD_TLS_CERT_FILE)\n"
         "  --tls_key_file=PEM   its key ($WEIGHTD_TLS_KEY_FILE)\n"
         "  --token_file=FILE    bearer token ($WEIGHTD_TOKEN_FILE)\n"
         "commands:\n"
         "  health                       gRPC health of the daemon (SERVING "
         "exits 0)\n"
         "  info                         version, GPUs, io backend, budgets\n"
         "  inspect [--json] [--hash] FILE\n"
         "                               read a checkpoint offline (no "
         "daemon)\n"
         "  load FILE [--device DEV] [--json] [--hash] [--cast DTYPE] [--map "
         "FROM->TO]\n"
         "       [--tensor NAME] [--copy]  load through the daemon (DEV: cpu, "
         "cuda:N, meta;\n"
         "                               --copy: host tensors in daemon-owned "
         "shared memory)\n"
         "       [--tp RANK/WORLD [--tp_rules FILE.json|--tp_rule_set NAME]]\n"
         "                               this rank's tensor-parallel slices "
         "(rules:\n"
         "                               [[\"glob\", dim], ...]; default set "
         "llama)\n"
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
  // Connection flags override the environment the commands connect with.
  static const std::map<std::string, const char*> kConnectionFlags = {
      {"--tls_ca_file", "WEIGHTD_TLS_CA_FILE"},
      {"--tls_cert_file", "WEIGHTD_TLS_CERT_FILE"},
      {"--tls_key_file", "WEIGHTD_TLS_KEY_FILE"},
      {"--token_file", "WEIGHTD_TOKEN_FILE"},
  };
  size_t i = 0;
  for (; i < args.size() && absl::StartsWith(args[i], "--"); ++i) {
    const std::string flag = args[i].substr(0, args[i].find('='));
    auto connection_flag = kConnectionFlags.find(flag);
    if (absl::StartsWith(args[i], "--address=")) {
      address = args[i].substr(strlen("--address="));
    } else if (args[i] == "--address" && i + 1 < args.size()) {
      address = args[++i];
    } else if (connection_flag != kConnectionFlags.end()) {
      std::string value;
      if (flag.size() < args[i].size()) {
        value = args[i].substr(flag.size() + 1);
      } else if (i + 1 < args.size()) {
        value = args[++i];
      } else {
        std::cerr << "weightctl: " << flag << " needs a value\n";
        return 2;
      }
      setenv(connection_flag->second, value.c_str(), 1);
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
