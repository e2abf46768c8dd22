// The daemon's configuration: a plain struct that main fills from its flags
// (server/config_flags.h) and tests build in code. The loader's own option
// structs are members, so each default is written once, where the loader
// declares it, and the daemon hands them to the loader as they are.
#ifndef WEIGHTD_SERVER_CONFIG_H_
#define WEIGHTD_SERVER_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "loader/cache/device_set.h"
#include "loader/cache/model_manager.h"

namespace weightd {

struct ServerConfig {
  // "unix:PATH" or "HOST:PORT"; repeatable. TCP is served only when listed
  // here.
  std::vector<std::string> listen;
  // Prometheus /metrics plus /healthz and /readyz; empty disables.
  std::string metrics_address = "127.0.0.1:9464";

  // Model roots, budgets, the load pool's bounds, worker threads: passed to
  // ModelManager::Create untouched.
  ModelManager::Options manager;
  // Fake GPUs, the io backend, the staging ring: passed to DeviceSet::Create
  // untouched.
  DeviceSet::Options devices;

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

// The combinations a config needs, checked by ServerConfigFromFlags and again
// by Daemon::Create for configs built in code. A TCP listener without TLS (or
// --insecure_tcp) is an error.
absl::Status ValidateServerConfig(const ServerConfig& config);

// "512M", "4G", "1073741824" -> bytes.
absl::StatusOr<uint64_t> ParseByteSize(const std::string& text);
// The inverse: the largest of T, G, M, K that divides `bytes` ("8M", "4097").
std::string FormatByteSize(uint64_t bytes);

}  // namespace weightd

#endif  // WEIGHTD_SERVER_CONFIG_H_
