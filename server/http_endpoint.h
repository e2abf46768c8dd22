// The operators' HTTP endpoint: Prometheus /metrics, liveness /healthz,
// readiness /readyz.
#ifndef WEIGHTD_SERVER_HTTP_ENDPOINT_H_
#define WEIGHTD_SERVER_HTTP_ENDPOINT_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace httplib {
class Server;
}

namespace weightd {

class HttpEndpoint {
 public:
  struct Handlers {
    std::function<std::string()> metrics_text;
    // OK: /readyz answers 200 "ready". Otherwise 503 "not ready: <message>".
    std::function<absl::Status()> readiness;
  };
  // Binds `address` ("HOST:PORT"; port 0 picks one) and serves in a background
  // thread.
  static absl::StatusOr<std::unique_ptr<HttpEndpoint>> Start(
      const std::string& address, Handlers handlers);
  ~HttpEndpoint();

  int port() const { return port_; }
  void Stop();

 private:
  HttpEndpoint() = default;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
};

// Splits "HOST:PORT" / "[V6]:PORT".
absl::Status SplitHostPort(const std::string& address, std::string* host,
                           int* port);

}  // namespace weightd

#endif  // WEIGHTD_SERVER_HTTP_ENDPOINT_H_
