// The daemon: gRPC services on every listen address plus the operators' HTTP
// endpoint.
#ifndef WEIGHTD_SERVER_DAEMON_H_
#define WEIGHTD_SERVER_DAEMON_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/config.h"

namespace grpc {
class Server;
}

namespace weightd {

class HttpEndpoint;
class MetricsRegistry;
class DaemonServices;

class Daemon {
 public:
  static absl::StatusOr<std::unique_ptr<Daemon>> Create(
      const ServerConfig& config);
  ~Daemon();

  // The line logged once the daemon serves.
  std::string ReadyLine() const;
  // Port of the HTTP endpoint (0 when disabled).
  int metrics_port() const;
  // Ports bound for the TCP listen addresses, in order (useful with HOST:0).
  const std::vector<int>& tcp_ports() const { return tcp_ports_; }
  // Stops accepting, lets in-flight calls finish (bounded), releases
  // everything.
  void Shutdown();

 private:
  Daemon() = default;
  ServerConfig config_;
  std::unique_ptr<MetricsRegistry> metrics_;
  std::unique_ptr<DaemonServices> services_;
  std::unique_ptr<grpc::Server> grpc_server_;
  std::unique_ptr<HttpEndpoint> http_;
  std::vector<std::string> unix_socket_paths_;
  std::vector<int> tcp_ports_;
};

}  // namespace weightd

#endif  // WEIGHTD_SERVER_DAEMON_H_
