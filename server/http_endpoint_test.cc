#include "server/http_endpoint.h"

#include <httplib.h>

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "loader/common/mutex.h"

namespace weightd {
namespace {

// A readiness the test switches.
class SwitchedReadiness {
 public:
  void Set(absl::Status status) {
    MutexLock lock(&mu_);
    status_ = std::move(status);
  }
  absl::Status Get() {
    MutexLock lock(&mu_);
    return status_;
  }

 private:
  Mutex mu_;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
};

TEST(HttpEndpointTest, ReadyzAnswersTheReadinessWithItsReason) {
  SwitchedReadiness readiness;
  auto endpoint = HttpEndpoint::Start(
      "127.0.0.1:0", {[] { return std::string("weightd_up 1\n"); },
                      [&readiness] { return readiness.Get(); }});
  ASSERT_TRUE(endpoint.ok()) << endpoint.status();
  httplib::Client http("127.0.0.1", (*endpoint)->port());

  auto ready = http.Get("/readyz");
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->status, 200);
  EXPECT_EQ(ready->body, "ready\n");

  readiness.Set(absl::UnavailableError("shutting down"));
  auto draining = http.Get("/readyz");
  ASSERT_TRUE(draining);
  EXPECT_EQ(draining->status, 503);
  EXPECT_EQ(draining->body, "not ready: shutting down\n");
  // Liveness is not readiness.
  auto health = http.Get("/healthz");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(health->body, "ok\n");

  readiness.Set(absl::OkStatus());
  EXPECT_EQ(http.Get("/readyz")->status, 200);
  auto metrics = http.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_EQ(metrics->body, "weightd_up 1\n");
  (*endpoint)->Stop();
}

TEST(HttpEndpointTest, BadAddressesAreRefused) {
  auto no_port = HttpEndpoint::Start("localhost", {});
  EXPECT_EQ(no_port.status().message(),
            "address \"localhost\" is not HOST:PORT");
  auto bad_port = HttpEndpoint::Start("127.0.0.1:99999", {});
  EXPECT_EQ(bad_port.status().message(),
            "address \"127.0.0.1:99999\" has a bad port");
  std::string host;
  int port = 0;
  ASSERT_TRUE(SplitHostPort("[::1]:9464", &host, &port).ok());
  EXPECT_EQ(host, "::1");
  EXPECT_EQ(port, 9464);
}

}  // namespace
}  // namespace weightd
