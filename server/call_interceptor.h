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
  void End();
  int count() const;
  // Waits until no call runs or `deadline` passes; true when none runs.
  bool WaitUntilIdle(absl::Time deadline);

 private:
  mutable Mutex mu_;
  CondVar idle_;
  int count_ ABSL_GUARDED_BY(mu_) = 0;
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
