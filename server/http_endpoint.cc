#include "server/http_endpoint.h"

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace weightd {

absl::Status SplitHostPort(const std::string& address, std::string* host,
                           int* port) {
  size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("address \"", address, "\" is not HOST:PORT"));
  }
  std::string host_part = address.substr(0, colon);
  if (host_part.size() >= 2 && host_part.front() == '[' &&
      host_part.back() == ']') {
    host_part = host_part.substr(1, host_part.size() - 2);
  }
  int port_value = 0;
  if (!absl::SimpleAtoi(address.substr(colon + 1), &port_value) ||
      port_value < 0 || port_value > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("address \"", address, "\" has a bad port"));
  }
  *host = host_part;
  *port = port_value;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<HttpEndpoint>> HttpEndpoint::Start(
    const std::string& address, Handlers handlers) {
  std::string host;
  int port = 0;
  absl::Status split = SplitHostPort(address, &host, &port);
  if (!split.ok()) return split;
  auto endpoint = std::unique_ptr<HttpEndpoint>(new HttpEndpoint());
  endpoint->server_ = std::make_unique<httplib::Server>();
  httplib::Server& server = *endpoint->server_;
  server.Get("/metrics",
             [handlers](const httplib::Request&, httplib::Response& response) {
               response.set_content(handlers.metrics_text(),
                                    "text/plain; version=0.0.4; charset=utf-8");
             });
  server.Get("/healthz",
             [](const httplib::Request&, httplib::Response& response) {
               response.set_content("ok\n", "text/plain");
             });
  server.Get("/readyz", [handlers](const httplib::Request&,
                                   httplib::Response& response) {
    const absl::Status readiness = handlers.readiness();
    response.status = readiness.ok() ? 200 : 503;
    response.set_content(
        readiness.ok() ? "ready\n"
                       : absl::StrCat("not ready: ", readiness.message(), "\n"),
        "text/plain");
  });
  if (port == 0) {
    endpoint->port_ = server.bind_to_any_port(host);
    if (endpoint->port_ < 0) {
      return absl::UnavailableError(
          absl::StrCat("metrics endpoint: cannot bind ", address));
    }
  } else {
    if (!server.bind_to_port(host, port)) {
      return absl::UnavailableError(
          absl::StrCat("metrics endpoint: cannot bind ", address));
    }
    endpoint->port_ = port;
  }
  auto listening_ended = std::make_shared<std::atomic<bool>>(false);
  endpoint->thread_ = std::thread([&server, listening_ended] {
    server.listen_after_bind();
    listening_ended->store(true);
  });
  // httplib's stop() only takes effect once the server runs: a Stop() that came
  // before would leave the thread in accept() for good. Return once it runs.
  while (!server.is_running() && !listening_ended->load()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (!server.is_running()) {
    endpoint->thread_.join();
    return absl::UnavailableError(
        absl::StrCat("metrics endpoint: cannot serve on ", address));
  }
  return endpoint;
}

void HttpEndpoint::Stop() {
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
}

HttpEndpoint::~HttpEndpoint() { Stop(); }

}  // namespace weightd
