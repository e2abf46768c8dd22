#include "server/config.h"

#include <cctype>
#include <functional>
#include <map>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
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

Setter PathSetter(const char* flag, std::string ServerConfig::*field) {
  return [flag, field](ServerConfig& config,
                       const std::string& value) -> absl::Status {
    if (value.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, ": empty path"));
    }
    config.*field = value;
    return absl::OkStatus();
  };
}

// Repeatable numeric uid/gid.
Setter IdSetter(const char* flag, std::vector<uint32_t> ServerConfig::*field) {
  return [flag, field](ServerConfig& config,
                       const std::string& value) -> absl::Status {
    uint32_t id = 0;
    if (!absl::SimpleAtoi(value, &id)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, "=", value, ": expected a numeric id"));
    }
    (config.*field).push_back(id);
    return absl::OkStatus();
  };
}

// "30s", "500ms", "2m" within [min, max].
Setter DurationSetter(const char* flag, int64_t ServerConfig::*field_ms,
                      absl::Duration min, absl::Duration max) {
  return [=](ServerConfig& config, const std::string& value) -> absl::Status {
    absl::Duration duration;
    if (!absl::ParseDuration(value, &duration) || duration < min ||
        duration > max) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--", flag, "=", value,
          ": expected a duration like 10s or 500ms in [",
          absl::FormatDuration(min), ", ", absl::FormatDuration(max), "]"));
    }
    config.*field_ms = absl::ToInt64Milliseconds(duration);
    return absl::OkStatus();
  };
}

// Flags that take no value (`--flag`, or `--flag=true|false`).
bool IsBoolFlag(const std::string& name) { return name == "insecure_tcp"; }

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
      {"max_queued_loads",
       [](ServerConfig& c, const std::string& v) {
         return ParseIntFlag("max_queued_loads", v, 0, 1 << 20,
                             &c.max_queued_loads);
       }},
      {"max_models",
       [](ServerConfig& c, const std::string& v) {
         return ParseIntFlag("max_models", v, 1, 1 << 20, &c.max_models);
       }},
      {"worker_threads",
       [](ServerConfig& c, const std::string& v) {
         return ParseIntFlag("worker_threads", v, 0, 256, &c.worker_threads);
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
      {"tls_cert_file",
       PathSetter("tls_cert_file", &ServerConfig::tls_cert_file)},
      {"tls_key_file", PathSetter("tls_key_file", &ServerConfig::tls_key_file)},
      {"tls_client_ca_file",
       PathSetter("tls_client_ca_file", &ServerConfig::tls_client_ca_file)},
      {"auth_token_file",
       PathSetter("auth_token_file", &ServerConfig::auth_token_file)},
      {"insecure_tcp",
       [](ServerConfig& c, const std::string& v) {
         if (v != "true" && v != "false") {
           return absl::InvalidArgumentError(
               absl::StrCat("--insecure_tcp=", v, ": expected true or false"));
         }
         c.insecure_tcp = v == "true";
         return absl::OkStatus();
       }},
      {"allow_uid", IdSetter("allow_uid", &ServerConfig::allow_uids)},
      {"allow_gid", IdSetter("allow_gid", &ServerConfig::allow_gids)},
      {"admin_uid", IdSetter("admin_uid", &ServerConfig::admin_uids)},
      {"keepalive_time",
       DurationSetter("keepalive_time", &ServerConfig::keepalive_time_ms,
                      absl::Milliseconds(100), absl::Hours(2))},
      {"keepalive_timeout",
       DurationSetter("keepalive_timeout", &ServerConfig::keepalive_timeout_ms,
                      absl::Milliseconds(100), absl::Minutes(10))},
      {"shutdown_grace",
       DurationSetter("shutdown_grace", &ServerConfig::shutdown_grace_ms,
                      absl::ZeroDuration(), absl::Minutes(10))},
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
  --max_queued_loads=N            loads that may wait for one; more are
                                  RESOURCE_EXHAUSTED (default 256)
  --max_models=N                  models the cache holds (default 1024)
  --worker_threads=N              threads for casts and ReadTensors
                                  (default: cores, at most 8)
  --io_backend=auto|io_uring|pread  (default auto: io_uring where the kernel allows it)
  --staging_chunk=BYTES           pinned staging buffer size (default 8M)
  --staging_buffers=N             pinned staging buffers per load (default 4)
  --fake_gpus=N                   add N fake GPUs (host memory; for tests)
  --fake_gpu_copy_delay_us=N      slow each chunk copied to a fake GPU (tests, demos)
  --max_message_bytes=BYTES       gRPC message size limit (default 64M)
  --unix_socket_mode=MODE         octal mode of Unix sockets (default 0660)
  --log_level=debug|info|warning|error
 TCP (every HOST:PORT listener) needs TLS plus a token or client certificates:
  --tls_cert_file=PEM --tls_key_file=PEM  the server's certificate chain and key
  --auth_token_file=FILE          clients send "authorization: Bearer <contents>"
  --tls_client_ca_file=PEM        require client certificates signed by this CA (mTLS)
  --insecure_tcp                  serve TCP in plaintext, unauthenticated (trusted networks
                                  only; TCP clients then get no admin calls)
 Unix-socket peers (identified by SO_PEERCRED):
  --allow_uid=UID --allow_gid=GID only these uids / primary gids (repeatable; default: anyone
                                  who can open the socket, see --unix_socket_mode)
  --admin_uid=UID                 uids allowed `unload --force` (repeatable; default: the
                                  daemon's own uid and root)
 Connections:
  --keepalive_time=DUR            ping a silent connection after DUR (default 20s)
  --keepalive_timeout=DUR         drop it, releasing its leases, when the ping is not answered
                                  within DUR (default 10s)
  --shutdown_grace=DUR            SIGTERM waits this long for running RPCs (default 5s)
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
    } else if (IsBoolFlag(name)) {
      value = "true";
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
  RETURN_IF_ERROR(ValidateServerConfig(config));
  return config;
}

bool IsTcpListenAddress(const std::string& address) {
  return !absl::StartsWith(address, "unix:");
}

absl::Status ValidateServerConfig(const ServerConfig& config) {
  const bool tls =
      !config.tls_cert_file.empty() || !config.tls_key_file.empty();
  if (tls && (config.tls_cert_file.empty() || config.tls_key_file.empty())) {
    return absl::InvalidArgumentError(
        "--tls_cert_file and --tls_key_file go together");
  }
  if (!tls &&
      (!config.tls_client_ca_file.empty() || !config.auth_token_file.empty())) {
    return absl::InvalidArgumentError(
        "--tls_client_ca_file and --auth_token_file need TLS: give "
        "--tls_cert_file and --tls_key_file (a token in plaintext protects "
        "nothing)");
  }
  if (tls && config.insecure_tcp) {
    return absl::InvalidArgumentError(
        "--insecure_tcp contradicts --tls_cert_file: choose one");
  }
  if (tls && config.tls_client_ca_file.empty() &&
      config.auth_token_file.empty()) {
    return absl::InvalidArgumentError(
        "TLS alone authenticates no client: add --auth_token_file and/or "
        "--tls_client_ca_file");
  }
  for (const std::string& address : config.listen) {
    if (IsTcpListenAddress(address) && !tls && !config.insecure_tcp) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--listen=", address,
          " is TCP, which needs TLS and client authentication "
          "(--tls_cert_file, --tls_key_file and --auth_token_file or "
          "--tls_client_ca_file); pass --insecure_tcp to serve it in "
          "plaintext without authentication anyway"));
    }
  }
  return absl::OkStatus();
}

}  // namespace weightd
