// A server interceptor on every call (all services): counts the calls still
// running, so shutdown can tell an idle server from a busy one, and turns the
// status gRPC gives an undecodable request (UNIMPLEMENTED, no message: the
// 1.51 callback handlers hard-code it) into INVALID_ARGUMENT with a message.
#ifndef WEIGHTD_SERVER_CALL_INTERCEPTOR_H_
#define WEIGHTD_SERVER_CALL_INTERCEPTOR_H_

#include <grpcpp/support/server_interceptor.h>

#include "absl/time/time.h"
#include "loader/common/mutex.h"

namespace weightd {

class RunningCalls {
 public:
  void Begin();
  // `answered`: the call's answer is for a client (not a health probe), so
  // LastAnsweredEnd() moves to now.
  void End(bool answered = true);
  int count() const;
  // Waits until no call runs or `deadline` passes; true when none runs.
  bool WaitUntilIdle(absl::Time deadline);
  // When the last answered call ended (InfinitePast: none yet). A call ends
  // once its status is handed to the transport, before its last bytes are
  // written: shutdown lets the connections flush for a while after it.
  absl::Time LastAnsweredEnd() const;

 private:
  mutable Mutex mu_;
  CondVar idle_;
  int count_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time last_answered_end_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

class CallInterceptorFactory
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit CallInterceptorFactory(RunningCalls* calls) : calls_(calls) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override;

 private:
  RunningCalls* const calls_;
};

}  // namespace weightd

#endif  // WEIGHTD_SERVER_CALL_INTERCEPTOR_H_
