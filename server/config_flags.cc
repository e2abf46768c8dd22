#include "server/config_flags.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/marshalling.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "loader/common/mutex.h"
#include "loader/common/status_macros.h"
#include "server/version.h"

namespace weightd {
namespace {

// Flag value types that check what they parse, so a bad value is refused by
// absl's parser (naming the flag) or by ApplyConfigFile (naming the line).

template <int kMin, int kMax>
struct IntInRange {
  int value = 0;
};
template <int kMin, int kMax>
bool AbslParseFlag(absl::string_view text, IntInRange<kMin, kMax>* flag,
                   std::string* error) {
  int value = 0;
  if (!absl::SimpleAtoi(text, &value) || value < kMin || value > kMax) {
    *error = absl::StrCat("expected an integer in [", kMin, ", ", kMax, "]");
    return false;
  }
  flag->value = value;
  return true;
}
template <int kMin, int kMax>
std::string AbslUnparseFlag(IntInRange<kMin, kMax> flag) {
  return absl::StrCat(flag.value);
}

// "512M", "4G", "1073741824".
template <uint64_t kMin, uint64_t kMax>
struct BytesInRange {
  uint64_t bytes = 0;
};
template <uint64_t kMin, uint64_t kMax>
bool AbslParseFlag(absl::string_view text, BytesInRange<kMin, kMax>* flag,
                   std::string* error) {
  absl::StatusOr<uint64_t> bytes = ParseByteSize(std::string(text));
  if (!bytes.ok()) {
    *error = std::string(bytes.status().message());
    return false;
  }
  if (*bytes < kMin || *bytes > kMax) {
    *error = absl::StrCat("expected ", FormatByteSize(kMin), "..",
                          FormatByteSize(kMax));
    return false;
  }
  flag->bytes = *bytes;
  return true;
}
template <uint64_t kMin, uint64_t kMax>
std::string AbslUnparseFlag(BytesInRange<kMin, kMax> flag) {
  return FormatByteSize(flag.bytes);
}

// "30s", "500ms", "2m".
template <int64_t kMinMs, int64_t kMaxMs>
struct DurationInRange {
  absl::Duration value;
};
template <int64_t kMinMs, int64_t kMaxMs>
bool AbslParseFlag(absl::string_view text,
                   DurationInRange<kMinMs, kMaxMs>* flag, std::string* error) {
  const absl::Duration min = absl::Milliseconds(kMinMs);
  const absl::Duration max = absl::Milliseconds(kMaxMs);
  absl::Duration value;
  if (!absl::ParseDuration(text, &value) || value < min || value > max) {
    *error = absl::StrCat("expected a duration like 10s or 500ms in [",
                          absl::FormatDuration(min), ", ",
                          absl::FormatDuration(max), "]");
    return false;
  }
  flag->value = value;
  return true;
}
template <int64_t kMinMs, int64_t kMaxMs>
std::string AbslUnparseFlag(DurationInRange<kMinMs, kMaxMs> flag) {
  return absl::FormatDuration(flag.value);
}

// An octal permission mode like 0660.
struct FileMode {
  uint32_t mode = 0;
};
bool AbslParseFlag(absl::string_view text, FileMode* flag, std::string* error) {
  uint32_t mode = 0;
  bool octal = !text.empty() && text.size() <= 4;
  for (char c : text) {
    octal &= c >= '0' && c <= '7';
    mode = mode * 8 + static_cast<uint32_t>(c - '0');
  }
  if (!octal || mode > 0777) {
    *error = "expected an octal mode like 0660";
    return false;
  }
  flag->mode = mode;
  return true;
}
std::string AbslUnparseFlag(FileMode flag) {
  return absl::StrFormat("%04o", flag.mode);
}

// A numeric uid or gid; empty (no id) drops the values given before it.
struct NumericId {
  std::optional<uint32_t> id;
};
bool AbslParseFlag(absl::string_view text, NumericId* flag,
                   std::string* error) {
  if (text.empty()) {
    flag->id.reset();
    return true;
  }
  uint32_t id = 0;
  if (!absl::SimpleAtoi(text, &id)) {
    *error = "expected a numeric id";
    return false;
  }
  flag->id = id;
  return true;
}
std::string AbslUnparseFlag(NumericId flag) {
  return flag.id.has_value() ? absl::StrCat(*flag.id) : "";
}

// One of a few words.
bool ParseChoice(absl::string_view text,
                 const std::vector<absl::string_view>& choices,
                 std::string* out, std::string* error) {
  for (absl::string_view choice : choices) {
    if (text == choice) {
      *out = std::string(text);
      return true;
    }
  }
  *error = "expected ";
  for (size_t i = 0; i < choices.size(); ++i) {
    absl::StrAppend(error,
                    i == 0                    ? ""
                    : i + 1 == choices.size() ? " or "
                                              : ", ",
                    choices[i]);
  }
  return false;
}
struct IoBackend {
  std::string name;
};
bool AbslParseFlag(absl::string_view text, IoBackend* flag,
                   std::string* error) {
  return ParseChoice(text, {"auto", "io_uring", "pread"}, &flag->name, error);
}
std::string AbslUnparseFlag(const IoBackend& flag) { return flag.name; }
struct DirectIo {
  std::string name;
};
bool AbslParseFlag(absl::string_view text, DirectIo* flag, std::string* error) {
  return ParseChoice(text, {"auto", "on", "off"}, &flag->name, error);
}
std::string AbslUnparseFlag(const DirectIo& flag) { return flag.name; }
struct LogLevel {
  std::string name;
};
bool AbslParseFlag(absl::string_view text, LogLevel* flag, std::string* error) {
  return ParseChoice(text, {"debug", "info", "warning", "error"}, &flag->name,
                     error);
}
std::string AbslUnparseFlag(const LogLevel& flag) { return flag.name; }

using LoadThreads = IntInRange<1, 1024>;
using QueuedLoads = IntInRange<0, (1 << 20)>;
using CachedModels = IntInRange<1, (1 << 20)>;
using WorkerThreads = IntInRange<0, 256>;
using FakeGpus = IntInRange<0, 16>;
using CopyDelayUs = IntInRange<0, 1000000>;
using StagingBuffers = IntInRange<2, 64>;
using IoQueueDepth = IntInRange<0, 4096>;
using IoRequestKib = IntInRange<0, (1 << 20)>;
using ByteSize = BytesInRange<0, std::numeric_limits<uint64_t>::max()>;
using MessageSize = BytesInRange<(4u << 10), (1u << 30)>;
using KeepaliveTime = DurationInRange<100, 2 * 3600 * 1000>;
using KeepaliveTimeout = DurationInRange<100, 10 * 60 * 1000>;
using ShutdownGrace = DurationInRange<0, 10 * 60 * 1000>;

// Every default comes from here: ServerConfig's own and the loader's option
// structs it holds.
const ServerConfig& Defaults() {
  static const auto* defaults = new ServerConfig();
  return *defaults;
}

// absl keeps only a flag's last value; the repeatable flags record each one
// here as it is parsed (their OnUpdate callbacks). An empty value clears.
class RepeatedValues {
 public:
  void Record(const std::string& flag, const std::string& value) {
    MutexLock lock(&mu_);
    std::vector<std::string>& values = values_[flag];
    if (value.empty()) {
      values.clear();
    } else {
      values.push_back(value);
    }
  }
  std::vector<std::string> Get(const std::string& flag) {
    MutexLock lock(&mu_);
    return values_[flag];
  }

 private:
  Mutex mu_;
  std::map<std::string, std::vector<std::string>> values_ ABSL_GUARDED_BY(mu_);
};
RepeatedValues& Repeated() {
  static auto* values = new RepeatedValues();
  return *values;
}

// The first error of the config files applied since --config_file was last
// empty; ServerConfigFromFlags reports it.
class ConfigFileErrors {
 public:
  void Apply(const std::string& path) {
    if (path.empty()) {
      MutexLock lock(&mu_);
      first_error_ = absl::OkStatus();
      return;
    }
    absl::Status status = ApplyConfigFile(path);
    MutexLock lock(&mu_);
    if (first_error_.ok()) first_error_ = status;
  }
  absl::Status first_error() {
    MutexLock lock(&mu_);
    return first_error_;
  }

 private:
  Mutex mu_;
  absl::Status first_error_ ABSL_GUARDED_BY(mu_);
};
ConfigFileErrors& ConfigErrors() {
  static auto* errors = new ConfigFileErrors();
  return *errors;
}

}  // namespace
}  // namespace weightd

// The flags, each default taken from the config structs (written once there).
// clang-format off
ABSL_FLAG(std::string, listen, "",
          "where to serve gRPC: unix:PATH or HOST:PORT (repeatable; TCP only "
          "when listed, and it needs TLS and client authentication or "
          "--insecure_tcp)")
    .OnUpdate([] {
      weightd::Repeated().Record("listen", absl::GetFlag(FLAGS_listen));
    });
ABSL_FLAG(std::string, model_root, "",
          "a directory whose checkpoints may be loaded (repeatable)")
    .OnUpdate([] {
      weightd::Repeated().Record("model_root", absl::GetFlag(FLAGS_model_root));
    });
ABSL_FLAG(std::string, metrics_address,
          weightd::Defaults().metrics_address,
          "HOST:PORT of Prometheus /metrics, /healthz and /readyz (\"\" "
          "disables)");
ABSL_FLAG(weightd::ByteSize, host_budget,
          {weightd::Defaults().manager.host_budget_bytes},
          "host memory budget for copies, e.g. 8G (0: unlimited)");
ABSL_FLAG(weightd::ByteSize, gpu_budget,
          {weightd::Defaults().manager.gpu_budget_bytes},
          "per-GPU budget (0: 90% of the GPU's memory)");
ABSL_FLAG(weightd::LoadThreads, max_concurrent_loads,
          {weightd::Defaults().manager.max_concurrent_loads},
          "loads reading files at once");
ABSL_FLAG(weightd::QueuedLoads, max_queued_loads,
          {static_cast<int>(weightd::Defaults().manager.max_queued_loads)},
          "loads that may wait for a load thread; more are "
          "RESOURCE_EXHAUSTED (0: no bound)");
ABSL_FLAG(weightd::CachedModels, max_models,
          {static_cast<int>(weightd::Defaults().manager.max_models)},
          "models the cache holds");
ABSL_FLAG(weightd::WorkerThreads, worker_threads,
          {weightd::Defaults().manager.worker_threads},
          "threads for casts and ReadTensors (0: the cores, at most 8)");
ABSL_FLAG(weightd::IoBackend, io_backend,
          {weightd::Defaults().devices.io_backend},
          "auto, io_uring or pread (auto: io_uring where the kernel allows "
          "it)");
ABSL_FLAG(weightd::ByteSize, staging_chunk,
          {weightd::Defaults().devices.staging_chunk_bytes},
          "pinned staging buffer size");
ABSL_FLAG(weightd::StagingBuffers, staging_buffers,
          {weightd::Defaults().devices.staging_buffers},
          "pinned staging buffers per load");
ABSL_FLAG(weightd::DirectIo, direct_io,
          {weightd::Defaults().devices.direct_io},
          "auto, on or off: how large uncached file ranges are read where "
          "the file system allows O_DIRECT (on: direct; auto: each block "
          "device measured once, direct against buffered, then the faster)");
ABSL_FLAG(weightd::IoQueueDepth, io_queue_depth,
          {weightd::Defaults().devices.io_queue_depth},
          "reads in flight per staging pipeline (0: 64)");
ABSL_FLAG(weightd::IoRequestKib, io_request_kib,
          {static_cast<int>(weightd::Defaults().devices.io_request_bytes >>
                            10)},
          "KiB per read request (0: the block device's max_sectors_kb, "
          "4096 to 16384)");
ABSL_FLAG(weightd::FakeGpus, fake_gpus,
          {weightd::Defaults().devices.fake_gpus},
          "add N fake GPUs backed by host memory, after the real ones (tests, "
          "demos)");
ABSL_FLAG(weightd::CopyDelayUs, fake_gpu_copy_delay_us,
          {static_cast<int>(absl::ToInt64Microseconds(
              weightd::Defaults().devices.fake_gpu_copy_delay))},
          "slow each chunk copied to a fake GPU by this many microseconds "
          "(tests, demos)");
ABSL_FLAG(weightd::MessageSize, max_message_bytes,
          {weightd::Defaults().max_message_bytes},
          "gRPC message size limit");
ABSL_FLAG(weightd::FileMode, unix_socket_mode,
          {weightd::Defaults().unix_socket_mode},
          "octal mode of the Unix sockets");
ABSL_FLAG(weightd::LogLevel, log_level, {weightd::Defaults().log_level},
          "debug, info, warning or error");
ABSL_FLAG(std::string, tls_cert_file, "",
          "PEM certificate chain every TCP listener serves (with "
          "--tls_key_file)");
ABSL_FLAG(std::string, tls_key_file, "", "PEM key of --tls_cert_file");
ABSL_FLAG(std::string, auth_token_file, "",
          "TCP clients must send \"authorization: Bearer <the file's "
          "contents>\"");
ABSL_FLAG(std::string, tls_client_ca_file, "",
          "TCP clients must present a certificate signed by this PEM CA "
          "(mTLS)");
ABSL_FLAG(bool, insecure_tcp, weightd::Defaults().insecure_tcp,
          "serve TCP in plaintext, unauthenticated (trusted networks only; "
          "TCP clients then get no admin calls)");
ABSL_FLAG(weightd::NumericId, allow_uid, {},
          "Unix-socket peers with this uid may call (repeatable; with "
          "--allow_gid, peers matching either; neither: anyone who can open "
          "the socket, see --unix_socket_mode)")
    .OnUpdate([] {
      weightd::Repeated().Record(
          "allow_uid", absl::UnparseFlag(absl::GetFlag(FLAGS_allow_uid)));
    });
ABSL_FLAG(weightd::NumericId, allow_gid, {},
          "Unix-socket peers with this primary gid may call (repeatable)")
    .OnUpdate([] {
      weightd::Repeated().Record(
          "allow_gid", absl::UnparseFlag(absl::GetFlag(FLAGS_allow_gid)));
    });
ABSL_FLAG(weightd::NumericId, admin_uid, {},
          "uid allowed admin calls, `unload --force` (repeatable; none: the "
          "daemon's own uid and root)")
    .OnUpdate([] {
      weightd::Repeated().Record(
          "admin_uid", absl::UnparseFlag(absl::GetFlag(FLAGS_admin_uid)));
    });
ABSL_FLAG(weightd::KeepaliveTime, keepalive_time,
          {absl::Milliseconds(weightd::Defaults().keepalive_time_ms)},
          "ping a silent connection that has calls open after this long");
ABSL_FLAG(weightd::KeepaliveTimeout, keepalive_timeout,
          {absl::Milliseconds(weightd::Defaults().keepalive_timeout_ms)},
          "drop it, releasing its leases, when the ping is not answered "
          "within this long");
ABSL_FLAG(weightd::ShutdownGrace, shutdown_grace,
          {absl::Milliseconds(weightd::Defaults().shutdown_grace_ms)},
          "SIGTERM waits this long for running RPCs, then cancels them");
ABSL_FLAG(std::string, config_file, "",
          "read flags from this file: one --flag=value per line, # starts a "
          "comment line; they apply where --config_file stands, so flags "
          "after it override them")
    .OnUpdate([] {
      weightd::ConfigErrors().Apply(absl::GetFlag(FLAGS_config_file));
    });
// clang-format on

namespace weightd {
namespace {

constexpr char kUsage[] =
    R"(loads PyTorch checkpoints once and hands their tensors to many processes.

usage: weightd --listen=unix:PATH|HOST:PORT --model_root=DIR [flags]
       weightd --config_file=PATH [flags]

 Repeatable flags (--listen, --model_root, --allow_uid, --allow_gid,
 --admin_uid) collect every value given; an empty value drops those before it.
 TCP (every HOST:PORT listener) needs TLS (--tls_cert_file, --tls_key_file)
 plus --auth_token_file and/or --tls_client_ca_file, or --insecure_tcp.
 Unix-socket peers are identified by SO_PEERCRED (--allow_uid, --allow_gid,
 --admin_uid). Sizes take K, M, G, T suffixes; durations look like 10s, 500ms.)";

// Bounded and printable, for quoting a line of a file in an error.
std::string Quote(absl::string_view text) {
  constexpr size_t kMax = 80;
  std::string quoted = absl::CHexEscape(text.substr(0, kMax));
  return absl::StrCat("\"", quoted, text.size() > kMax ? "...\"" : "\"");
}

absl::StatusOr<std::string> ReadConfigFile(const std::string& path) {
  // O_NONBLOCK: a FIFO must not hang the daemon's start.
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--config_file=", path, ": cannot open: ", std::strerror(errno)));
  }
  struct stat info;
  std::string contents;
  absl::Status status;
  if (fstat(fd, &info) != 0) {
    status = absl::FailedPreconditionError(absl::StrCat(
        "--config_file=", path, ": cannot stat: ", std::strerror(errno)));
  } else if (!S_ISREG(info.st_mode)) {
    status = absl::InvalidArgumentError(
        absl::StrCat("--config_file=", path, ": not a regular file"));
  } else if (static_cast<uint64_t>(info.st_size) > kMaxConfigFileBytes) {
    status = absl::InvalidArgumentError(
        absl::StrCat("--config_file=", path, ": ", info.st_size,
                     " bytes; a config file holds at most ",
                     FormatByteSize(kMaxConfigFileBytes)));
  } else {
    contents.resize(static_cast<size_t>(info.st_size));
    size_t done = 0;
    while (done < contents.size()) {
      const ssize_t n = read(fd, &contents[done], contents.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        status = absl::FailedPreconditionError(absl::StrCat(
            "--config_file=", path, ": cannot read: ", std::strerror(errno)));
        break;
      }
      if (n == 0) break;  // shrank meanwhile: what is there
      done += static_cast<size_t>(n);
    }
    contents.resize(done);
  }
  close(fd);
  if (!status.ok()) return status;
  return contents;
}

}  // namespace

absl::Status ApplyConfigFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string contents, ReadConfigFile(path));
  int line_number = 0;
  for (absl::string_view raw_line : absl::StrSplit(contents, '\n')) {
    ++line_number;
    const absl::string_view line = absl::StripAsciiWhitespace(raw_line);
    if (line.empty() || absl::StartsWith(line, "#")) continue;
    const std::string where = absl::StrCat(path, ":", line_number, ": ");
    absl::string_view setting = line;
    if (!absl::ConsumePrefix(&setting, "--") || setting.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "expected --flag=value, got ", Quote(line)));
    }
    const size_t equals = setting.find('=');
    const absl::string_view name = setting.substr(0, equals);
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    // Only weightd's own flags: not absl's --flagfile and the like.
    if (flag == nullptr || flag->Filename() != __FILE__) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, "unknown flag --", absl::CHexEscape(name.substr(0, 80))));
    }
    if (name == "config_file") {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "--config_file cannot be nested"));
    }
    std::string value;
    if (equals != absl::string_view::npos) {
      value = std::string(setting.substr(equals + 1));
    } else if (flag->IsOfType<bool>()) {
      value = "true";
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          where, "--", name, " needs a value: --", name, "=VALUE"));
    }
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      return absl::InvalidArgumentError(absl::StrCat(where, error));
    }
  }
  return absl::OkStatus();
}

void SetUpServerFlagsUsage() {
  absl::SetProgramUsageMessage(kUsage);
  absl::FlagsUsageConfig usage;
  // --help lists this file's flags (absl's default looks for a file named
  // after the binary).
  usage.contains_help_flags = [](absl::string_view file) {
    return file == __FILE__;
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  usage.version_string = [] {
    return absl::StrCat("weightd ", kVersion, "\n");
  };
  absl::SetFlagsUsageConfig(usage);
}

absl::StatusOr<ServerConfig> ServerConfigFromFlags() {
  RETURN_IF_ERROR(ConfigErrors().first_error());
  ServerConfig config;
  config.listen = Repeated().Get("listen");
  config.metrics_address = absl::GetFlag(FLAGS_metrics_address);

  ModelManager::Options& manager = config.manager;
  manager.model_roots = Repeated().Get("model_root");
  manager.host_budget_bytes = absl::GetFlag(FLAGS_host_budget).bytes;
  manager.gpu_budget_bytes = absl::GetFlag(FLAGS_gpu_budget).bytes;
  manager.max_concurrent_loads =
      absl::GetFlag(FLAGS_max_concurrent_loads).value;
  manager.max_queued_loads =
      static_cast<size_t>(absl::GetFlag(FLAGS_max_queued_loads).value);
  manager.max_models =
      static_cast<size_t>(absl::GetFlag(FLAGS_max_models).value);
  manager.worker_threads = absl::GetFlag(FLAGS_worker_threads).value;

  DeviceSet::Options& devices = config.devices;
  devices.fake_gpus = absl::GetFlag(FLAGS_fake_gpus).value;
  devices.fake_gpu_copy_delay =
      absl::Microseconds(absl::GetFlag(FLAGS_fake_gpu_copy_delay_us).value);
  devices.io_backend = absl::GetFlag(FLAGS_io_backend).name;
  devices.staging_chunk_bytes = absl::GetFlag(FLAGS_staging_chunk).bytes;
  devices.staging_buffers = absl::GetFlag(FLAGS_staging_buffers).value;
  devices.direct_io = absl::GetFlag(FLAGS_direct_io).name;
  devices.io_queue_depth = absl::GetFlag(FLAGS_io_queue_depth).value;
  devices.io_request_bytes =
      static_cast<uint64_t>(absl::GetFlag(FLAGS_io_request_kib).value) << 10;

  config.max_message_bytes =
      static_cast<uint32_t>(absl::GetFlag(FLAGS_max_message_bytes).bytes);
  config.unix_socket_mode = absl::GetFlag(FLAGS_unix_socket_mode).mode;
  config.log_level = absl::GetFlag(FLAGS_log_level).name;
  config.tls_cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  config.tls_key_file = absl::GetFlag(FLAGS_tls_key_file);
  config.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca_file);
  config.auth_token_file = absl::GetFlag(FLAGS_auth_token_file);
  config.insecure_tcp = absl::GetFlag(FLAGS_insecure_tcp);
  const auto ids = [](const char* flag) {
    std::vector<uint32_t> ids;
    for (const std::string& text : Repeated().Get(flag)) {
      uint32_t id = 0;
      if (absl::SimpleAtoi(text, &id)) ids.push_back(id);  // parsed already
    }
    return ids;
  };
  config.allow_uids = ids("allow_uid");
  config.allow_gids = ids("allow_gid");
  config.admin_uids = ids("admin_uid");
  config.keepalive_time_ms =
      absl::ToInt64Milliseconds(absl::GetFlag(FLAGS_keepalive_time).value);
  config.keepalive_timeout_ms =
      absl::ToInt64Milliseconds(absl::GetFlag(FLAGS_keepalive_timeout).value);
  config.shutdown_grace_ms =
      absl::ToInt64Milliseconds(absl::GetFlag(FLAGS_shutdown_grace).value);
  RETURN_IF_ERROR(ValidateServerConfig(config));
  return config;
}

}  // namespace weightd
