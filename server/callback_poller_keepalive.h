// Keeps gRPC's callback-API threads polling the server's connections.
//
// gRPC 1.51 on Linux (epoll1, which cannot poll in the background) runs every
// callback-API event on "nexting" threads that wait at most 1 s for an event
// and, when none came, sleep 100 ms before waiting again
// (src/cpp/common/completion_queue_cc.cc, CallbackAlternativeCQ). They are
// also the threads that poll the server's sockets: after a second without
// calls they all sleep at once, and a connection arriving then waits up to
// 100 ms for its first call to be read (measured here: 4 of 10 fresh clients
// took 22-99 ms for a first call that otherwise takes 1.5 ms).
//
// A cheap call on the server's in-process channel more often than once a
// second gives one of those threads an event, so at every moment one of them
// waited less than a second and is polling.
#ifndef WEIGHTD_SERVER_CALLBACK_POLLER_KEEPALIVE_H_
#define WEIGHTD_SERVER_CALLBACK_POLLER_KEEPALIVE_H_

#include <grpcpp/channel.h>

#include <memory>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "loader/common/mutex.h"

namespace weightd {

class CallbackPollerKeepalive {
 public:
  // Below the nexting threads' 1 s wait, with room for a busy machine.
  static constexpr absl::Duration kDefaultInterval = absl::Milliseconds(400);

  // Calls grpc.health.v1.Health/Check on `channel` (the server's
  // InProcessChannel) every `interval`, from one thread, until destroyed.
  static absl::StatusOr<std::unique_ptr<CallbackPollerKeepalive>> Start(
      std::shared_ptr<grpc::Channel> channel,
      absl::Duration interval = kDefaultInterval);

  // Stops: no call is made after the destructor returns.
  ~CallbackPollerKeepalive();

  CallbackPollerKeepalive(const CallbackPollerKeepalive&) = delete;
  CallbackPollerKeepalive& operator=(const CallbackPollerKeepalive&) = delete;

 private:
  CallbackPollerKeepalive(std::shared_ptr<grpc::Channel> channel,
                          absl::Duration interval);
  void Run();
  // True once the destructor asked to stop; waits `interval` for it otherwise.
  bool StopRequestedWithin(absl::Duration interval);

  const std::shared_ptr<grpc::Channel> channel_;
  const absl::Duration interval_;
  Mutex mu_;
  CondVar stop_requested_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace weightd

#endif  // WEIGHTD_SERVER_CALLBACK_POLLER_KEEPALIVE_H_
