// The daemon's configuration, parsed from its command line.
#ifndef WEIGHTD_SERVER_CONFIG_H_
#define WEIGHTD_SERVER_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace weightd {

struct ServerConfig {
  // "unix:PATH" or "HOST:PORT"; repeatable. TCP is served only when listed
  // here.
  std::vector<std::string> listen;
  // Directories whose files may be loaded; repeatable.
  std::vector<std::string> model_roots;
  // Prometheus /metrics plus /healthz and /readyz; empty disables.
  std::string metrics_address = "127.0.0.1:9464";
  uint64_t host_budget_bytes = 0;  // 0: unlimited
  uint64_t gpu_budget_bytes = 0;   // per GPU; 0: 90% of the GPU's memory
  int max_concurrent_loads = 4;
  int max_queued_loads = 256;  // loads waiting for a load thread
  int max_models = 1024;       // cache entries
  int worker_threads = 0;      // casts, ReadTensors; 0: cores, at most 8
  int fake_gpus = 0;  // test GPUs with their own memory, after the real ones
  int fake_gpu_copy_delay_us = 0;   // per staged chunk copied to a fake GPU
  std::string io_backend = "auto";  // auto | io_uring | pread
  uint64_t staging_chunk_bytes = 8ull << 20;
  int staging_buffers = 4;
  uint32_t max_message_bytes = 64u << 20;
  uint32_t unix_socket_mode = 0660;
  std::string log_level = "info";  // debug | info | warning | error

  // TCP listeners serve TLS with this certificate chain and key (PEM files).
  std::string tls_cert_file;
  std::string tls_key_file;
  // Clients must present a certificate signed by this CA (mTLS); a verified
  // certificate authenticates the client without a token.
  std::string tls_client_ca_file;
  // TCP clients must send `authorization: Bearer <the file's contents>`.
  std::string auth_token_file;
  // Serve TCP without TLS or authentication (trusted networks only; logged
  // loudly at start). TCP peers then get no admin rights.
  bool insecure_tcp = false;

  // Unix-socket peers allowed by uid or (primary) gid; both empty: every peer
  // that can open the socket.
  std::vector<uint32_t> allow_uids;
  std::vector<uint32_t> allow_gids;
  // Unix-socket peers allowed admin calls (Unload with force). Empty: the
  // daemon's own uid and root.
  std::vector<uint32_t> admin_uids;

  // The daemon pings a connection with calls open (Lease streams) after this
  // long without traffic and drops it (ending its Lease streams, releasing
  // their leases) when no answer comes within the timeout: a frozen or vanished
  // client's leases go after at most keepalive_time + keepalive_timeout.
  int64_t keepalive_time_ms = 20000;
  int64_t keepalive_timeout_ms = 10000;
  // How long SIGTERM waits for RPCs still running before cancelling them.
  int64_t shutdown_grace_ms = 5000;
};

// Clients may ping the daemon at most this often (the daemon's ping policy);
// the C++ and Python clients ping every kClientKeepaliveTimeMs.
inline constexpr int64_t kMinClientPingIntervalMs = 10000;
inline constexpr int64_t kClientKeepaliveTimeMs = 30000;

// True for a TCP (HOST:PORT) listen address, false for "unix:PATH".
bool IsTcpListenAddress(const std::string& address);

// The combinations a config needs: what ParseServerConfig checks after
// parsing, and Daemon::Create again for configs built in code. A TCP listener
// without TLS (or --insecure_tcp) is an error.
absl::Status ValidateServerConfig(const ServerConfig& config);

// Parses `--flag=value` / `--flag value`. Unknown flags and bad values are
// errors naming the flag. `--help` yields a NotFound status whose message is
// the usage text.
absl::StatusOr<ServerConfig> ParseServerConfig(
    const std::vector<std::string>& args);

std::string ServerUsage();

// "512M", "4G", "1073741824" -> bytes.
absl::StatusOr<uint64_t> ParseByteSize(const std::string& text);

}  // namespace weightd

#endif  // WEIGHTD_SERVER_CONFIG_H_
