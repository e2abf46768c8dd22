// The daemon: gRPC services on every listen address plus the operators' HTTP
// endpoint.
#ifndef WEIGHTD_SERVER_DAEMON_H_
#define WEIGHTD_SERVER_DAEMON_H_

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/config.h"

namespace grpc {
class Server;
}

namespace weightd {

class AccessPolicy;
class CallInterceptorFactory;
class HttpEndpoint;
class MetricsRegistry;
class DaemonServices;
class RunningCalls;
class UnixPeerRegistry;
class UnixSocketListener;
class UnknownMethodService;
class CallbackPollerKeepalive;

class Daemon {
 public:
  static absl::StatusOr<std::unique_ptr<Daemon>> Create(
      const ServerConfig& config);
  ~Daemon();

  // The line logged once the daemon serves.
  std::string ReadyLine() const;
  // Port of the HTTP endpoint (0 when disabled).
  int metrics_port() const;
  // What /readyz answers: OK while gRPC serves, no shutdown has begun, and the
  // loader can take work (its load queue has room, every model root is a
  // readable directory); otherwise UNAVAILABLE with the reason. Thread-safe.
  absl::Status Readiness() const;
  // Ports bound for the TCP listen addresses, in order (useful with HOST:0).
  const std::vector<int>& tcp_ports() const { return tcp_ports_; }
  // Stops accepting, lets running calls finish (within the shutdown grace;
  // idle connections do not hold it), releases everything.
  void Shutdown();

 private:
  Daemon() = default;
  ServerConfig config_;
  std::unique_ptr<MetricsRegistry> metrics_;
  // Declared before the services and the server, which use them.
  std::unique_ptr<UnixPeerRegistry> unix_peers_;
  std::unique_ptr<AccessPolicy> access_policy_;
  std::unique_ptr<RunningCalls> running_calls_;
  std::unique_ptr<DaemonServices> services_;
  std::unique_ptr<UnknownMethodService> unknown_methods_;
  std::unique_ptr<grpc::Server> grpc_server_;
  std::unique_ptr<CallbackPollerKeepalive> poller_keepalive_;
  std::vector<std::unique_ptr<UnixSocketListener>> unix_listeners_;
  std::unique_ptr<HttpEndpoint> http_;
  std::vector<std::string> unix_socket_paths_;
  std::vector<int> tcp_ports_;
  std::atomic<bool> serving_{false};   // the gRPC server has started
  std::atomic<bool> draining_{false};  // Shutdown() has begun
};

}  // namespace weightd

#endif  // WEIGHTD_SERVER_DAEMON_H_
