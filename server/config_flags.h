// weightd's command-line flags (absl flags, defined in config_flags.cc) and
// the one place that reads them. main parses the command line once with
// absl::ParseCommandLine and turns the flags into a ServerConfig here; library
// code gets the ServerConfig, never the flags.
//
// Values are checked as they are parsed (ranges, sizes, durations, choices),
// so a bad one is an error naming the flag and the value, and, when it comes
// from a config file, the file and the line. Repeatable flags (--listen,
// --model_root, --allow_uid, --allow_gid, --admin_uid) collect every value
// given; an empty value drops the values before it, so a command line can
// replace a config file's list.
//
// --config_file=PATH applies the file's lines where it stands on the command
// line (flags after it override them, as with absl's --flagfile): one
// `--flag=value` (or a bare `--bool_flag`) per line; blank lines and lines
// starting with `#` are skipped.
#ifndef WEIGHTD_SERVER_CONFIG_FLAGS_H_
#define WEIGHTD_SERVER_CONFIG_FLAGS_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/config.h"

namespace weightd {

// Sets the --help text (this file's flags, with the usage summary) and the
// --version line; call before absl::ParseCommandLine.
void SetUpServerFlagsUsage();

// The ServerConfig the flags describe: an error from any config file applied
// so far, or ValidateServerConfig's.
absl::StatusOr<ServerConfig> ServerConfigFromFlags();

// Applies the config file at `path` to the flags, line by line. Errors name
// the file and, for a line, its number: unknown flags, values that do not
// parse, a nested --config_file, a file that is not a regular file of at most
// kMaxConfigFileBytes.
absl::Status ApplyConfigFile(const std::string& path);
inline constexpr size_t kMaxConfigFileBytes = 1 << 20;

}  // namespace weightd

#endif  // WEIGHTD_SERVER_CONFIG_FLAGS_H_
