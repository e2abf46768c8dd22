#include "server/config.h"

#include <cctype>
#include <functional>
#include <map>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "loader/common/status_macros.h"

namespace weightd {
namespace {

using Setter = std::function<absl::Status(ServerConfig&, const std::string&)>;

absl::Status ParseIntFlag(const std::string& flag, const std::string& value,
                          int min, int max, int* out) {
  int parsed = 0;
  if (!absl::SimpleAtoi(value, &parsed) || parsed < min || parsed > max) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, "=", value,
                                                   ": expected an integer in [",
                                                   min, ", ", max, "]"));
  }
  *out = parsed;
  return absl::OkStatus();
}

Setter ByteSizeSetter(const char* flag, uint64_t ServerConfig::*field) {
  return [flag, field](ServerConfig& config,
                       const std::string& value) -> absl::Status {
    auto bytes = ParseByteSize(value);
    if (!bytes.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, "=", value, ": ", bytes.status().message()));
    }
    config.*field = *bytes;
    return absl::OkStatus();
  };
}

const std::map<std::string, Setter>& Setters() {
  static const auto* setters = new std::map<std::string, Setter>{
      {"listen",
       [](ServerConfig& c, const std::string& v) {
         if (v.empty())
           return absl::InvalidArgumentError("--listen: empty address");
         c.listen.push_back(v);
         return absl::OkStatus();
       }},
      {"model_root",
       [](ServerConfig& c, const std::string& v) {
         if (v.empty())
           return absl::InvalidArgumentError("--model_root: empty path");
         c.model_roots.push_back(v);
         return absl::OkStatus();
       }},
      {"metrics_address",
       [](ServerConfig& c, const std::string& v) {
         c.metrics_address = v;
         return absl::OkStatus();
       }},
      {"host_budget",
       ByteSizeSetter("host_budget", &ServerConfig::host_budget_bytes)},
      {"gpu_budget",
       ByteSizeSetter("gpu_budget", &ServerConfig::gpu_budget_bytes)},
      {"staging_chunk",
       ByteSizeSetter("staging_chunk", &ServerConfig::staging_chunk_bytes)},
      {"max_concurrent_loads",
       [](ServerConfig& c, const std::string& v) {
         return ParseIntFlag("max_concurrent_loads", v, 1, 1024,
                             &c.max_concurrent_loads);
       }},
      {"fake_gpus",
       [](ServerConfig& c, const std::string& v) {
         return ParseIntFlag("fake_gpus", v, 0, 16, &c.fake_gpus);
       }},
      {"fake_gpu_copy_delay_us",
       [](ServerConfig& c, const std::string& v) {
         return ParseIntFlag("fake_gpu_copy_delay_us", v, 0, 1000000,
                             &c.fake_gpu_copy_delay_us);
       }},
      {"staging_buffers",
       [](ServerConfig& c, const std::string& v) {
         return ParseIntFlag("staging_buffers", v, 2, 64, &c.staging_buffers);
       }},
      {"io_backend",
       [](ServerConfig& c, const std::string& v) {
         if (v != "auto" && v != "io_uring" && v != "pread") {
           return absl::InvalidArgumentError(absl::StrCat(
               "--io_backend=", v, ": expected auto, io_uring or pread"));
         }
         c.io_backend = v;
         return absl::OkStatus();
       }},
      {"max_message_bytes",
       [](ServerConfig& c, const std::string& v) -> absl::Status {
         ASSIGN_OR_RETURN(uint64_t bytes, ParseByteSize(v));
         if (bytes < 4096 || bytes > (1u << 30)) {
           return absl::InvalidArgumentError(
               absl::StrCat("--max_message_bytes=", v, ": expected 4K..1G"));
         }
         c.max_message_bytes = static_cast<uint32_t>(bytes);
         return absl::OkStatus();
       }},
      {"unix_socket_mode",
       [](ServerConfig& c, const std::string& v) {
         char* end = nullptr;
         unsigned long mode = std::strtoul(v.c_str(), &end, 8);
         if (v.empty() || *end != '\0' || mode > 0777) {
           return absl::InvalidArgumentError(absl::StrCat(
               "--unix_socket_mode=", v, ": expected an octal mode like 0660"));
         }
         c.unix_socket_mode = static_cast<uint32_t>(mode);
         return absl::OkStatus();
       }},
      {"log_level",
       [](ServerConfig& c, const std::string& v) {
         if (v != "debug" && v != "info" && v != "warning" && v != "error") {
           return absl::InvalidArgumentError(absl::StrCat(
               "--log_level=", v, ": expected debug, info, warning or error"));
         }
         c.log_level = v;
         return absl::OkStatus();
       }},
  };
  return *setters;
}

}  // namespace

std::string ServerUsage() {
  return R"(usage: weightd [flags]
  --listen=unix:PATH | HOST:PORT  where to serve gRPC (repeatable; TCP only when listed)
  --model_root=DIR                directory whose checkpoints may be loaded (repeatable)
  --metrics_address=HOST:PORT     Prometheus /metrics, /healthz, /readyz ("" disables)
                                  (default 127.0.0.1:9464)
  --host_budget=BYTES             host memory budget for copies (e.g. 8G; 0 = unlimited)
  --gpu_budget=BYTES              per-GPU budget (0 = 90% of the GPU's memory)
  --max_concurrent_loads=N        loads reading files at once (default 4)
  --io_backend=auto|io_uring|pread  (default auto: io_uring where the kernel allows it)
  --staging_chunk=BYTES           pinned staging buffer size (default 8M)
  --staging_buffers=N             pinned staging buffers per load (default 4)
  --fake_gpus=N                   add N fake GPUs (host memory; for tests)
  --fake_gpu_copy_delay_us=N      slow each chunk copied to a fake GPU (tests, demos)
  --max_message_bytes=BYTES       gRPC message size limit (default 64M)
  --unix_socket_mode=MODE         octal mode of Unix sockets (default 0660)
  --log_level=debug|info|warning|error
)";
}

absl::StatusOr<uint64_t> ParseByteSize(const std::string& text) {
  if (text.empty()) return absl::InvalidArgumentError("empty size");
  size_t digits = 0;
  while (digits < text.size() &&
         std::isdigit(static_cast<unsigned char>(text[digits]))) {
    ++digits;
  }
  uint64_t value = 0;
  if (digits == 0 || !absl::SimpleAtoi(text.substr(0, digits), &value)) {
    return absl::InvalidArgumentError(absl::StrCat("bad size \"", text, "\""));
  }
  std::string suffix = text.substr(digits);
  int shift = 0;
  if (suffix.empty() || suffix == "B") {
    shift = 0;
  } else if (suffix == "K" || suffix == "KiB" || suffix == "k") {
    shift = 10;
  } else if (suffix == "M" || suffix == "MiB") {
    shift = 20;
  } else if (suffix == "G" || suffix == "GiB") {
    shift = 30;
  } else if (suffix == "T" || suffix == "TiB") {
    shift = 40;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("bad size suffix in \"", text, "\""));
  }
  if (shift > 0 && value > (~uint64_t{0} >> shift)) {
    return absl::InvalidArgumentError(
        absl::StrCat("size \"", text, "\" overflows"));
  }
  return value << shift;
}

absl::StatusOr<ServerConfig> ParseServerConfig(
    const std::vector<std::string>& args) {
  ServerConfig config;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--help" || arg == "-h")
      return absl::NotFoundError(ServerUsage());
    if (!absl::StartsWith(arg, "--")) {
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected argument \"", arg, "\""));
    }
    std::string name = arg.substr(2);
    std::string value;
    size_t eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else if (i + 1 < args.size()) {
      value = args[++i];
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("--", name, " needs a value"));
    }
    auto it = Setters().find(name);
    if (it == Setters().end()) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    }
    RETURN_IF_ERROR(it->second(config, value));
  }
  if (config.listen.empty()) {
    return absl::InvalidArgumentError(
        "at least one --listen address is needed");
  }
  if (config.model_roots.empty()) {
    return absl::InvalidArgumentError(
        "at least one --model_root directory is needed");
  }
  return config;
}

}  // namespace weightd
