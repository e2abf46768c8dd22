#include "server/call_interceptor.h"

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/request_validation.h"

namespace weightd {

using grpc::experimental::InterceptionHookPoints;

void RunningCalls::Begin() {
  MutexLock lock(&mu_);
  ++count_;
}

void RunningCalls::End(bool answered) {
  MutexLock lock(&mu_);
  if (answered) last_answered_end_ = absl::Now();
  if (--count_ == 0) idle_.SignalAll();
}

absl::Time RunningCalls::LastAnsweredEnd() const {
  MutexLock lock(&mu_);
  return last_answered_end_;
}

int RunningCalls::count() const {
  MutexLock lock(&mu_);
  return count_;
}

bool RunningCalls::WaitUntilIdle(absl::Time deadline) {
  MutexLock lock(&mu_);
  while (count_ > 0) {
    absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return false;
    idle_.WaitWithTimeout(&mu_, left);
  }
  return true;
}

namespace {

class CallInterceptor : public grpc::experimental::Interceptor {
 public:
  CallInterceptor(grpc::experimental::ServerRpcInfo* info, RunningCalls* calls)
      : method_(info->method() != nullptr ? info->method() : ""),
        single_request_(
            info->type() == grpc::experimental::ServerRpcInfo::Type::UNARY ||
            info->type() ==
                grpc::experimental::ServerRpcInfo::Type::SERVER_STREAMING),
        calls_(calls) {
    calls_->Begin();
  }
  // Health checks (probes, and the daemon's own keepalive every 400 ms) do
  // not hold shutdown's flush.
  ~CallInterceptor() override {
    calls_->End(!absl::StartsWith(method_, "/grpc.health.v1.Health/"));
  }

  void Intercept(
      grpc::experimental::InterceptorBatchMethods* methods) override {
    if (single_request_ &&
        methods->QueryInterceptionHookPoint(
            InterceptionHookPoints::POST_RECV_MESSAGE) &&
        methods->GetRecvMessage() == nullptr) {
      // The request's bytes did not parse as the method's request message.
      undecodable_request_ = true;
    }
    if (undecodable_request_ &&
        methods->QueryInterceptionHookPoint(
            InterceptionHookPoints::PRE_SEND_STATUS) &&
        methods->GetSendStatus().error_code() ==
            grpc::StatusCode::UNIMPLEMENTED) {
      methods->ModifySendStatus(grpc::Status(
          grpc::StatusCode::INVALID_ARGUMENT,
          absl::StrCat("the request to ", BoundForMessage(method_),
                       " is not a valid protobuf message of the method's "
                       "request type")));
    }
    methods->Proceed();
  }

 private:
  const std::string method_;
  const bool single_request_;
  RunningCalls* const calls_;
  bool undecodable_request_ = false;
};

}  // namespace

grpc::experimental::Interceptor*
CallInterceptorFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  return new CallInterceptor(info, calls_);
}

}  // namespace weightd
