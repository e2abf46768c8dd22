#include "server/callback_poller_keepalive.h"

#include <grpcpp/client_context.h>
#include <grpcpp/completion_queue.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <utility>

#include "absl/status/status.h"

namespace weightd {
namespace {

constexpr char kHealthCheckMethod[] = "/grpc.health.v1.Health/Check";

// One unary call with an empty HealthCheckRequest (service ""), waited for on
// a private completion queue; its outcome does not matter, only that the
// server handled it.
void CallOnce(grpc::GenericStub* stub, absl::Duration timeout) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  grpc::CompletionQueue queue;
  grpc::Slice empty("", 0);
  grpc::ByteBuffer request(&empty, 1);
  std::unique_ptr<grpc::GenericClientAsyncResponseReader> call =
      stub->PrepareUnaryCall(&context, kHealthCheckMethod, request, &queue);
  call->StartCall();
  grpc::ByteBuffer response;
  grpc::Status status;
  call->Finish(&response, &status, &queue);
  void* tag = nullptr;
  bool ok = false;
  queue.Next(&tag, &ok);
  queue.Shutdown();
  while (queue.Next(&tag, &ok)) {
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<CallbackPollerKeepalive>>
CallbackPollerKeepalive::Start(std::shared_ptr<grpc::Channel> channel,
                               absl::Duration interval) {
  if (channel == nullptr) {
    return absl::InvalidArgumentError("callback poller keepalive: no channel");
  }
  if (interval <= absl::ZeroDuration() || interval >= absl::Seconds(1)) {
    return absl::InvalidArgumentError(
        "callback poller keepalive: the interval must be above 0 and below "
        "the 1 s gRPC's callback threads wait for an event");
  }
  return std::unique_ptr<CallbackPollerKeepalive>(
      new CallbackPollerKeepalive(std::move(channel), interval));
}

CallbackPollerKeepalive::CallbackPollerKeepalive(
    std::shared_ptr<grpc::Channel> channel, absl::Duration interval)
    : channel_(std::move(channel)), interval_(interval) {
  thread_ = std::thread([this] { Run(); });
}

CallbackPollerKeepalive::~CallbackPollerKeepalive() {
  {
    MutexLock lock(&mu_);
    stop_ = true;
  }
  stop_requested_.SignalAll();
  thread_.join();
}

bool CallbackPollerKeepalive::StopRequestedWithin(absl::Duration interval) {
  const absl::Time deadline = absl::Now() + interval;
  MutexLock lock(&mu_);
  while (!stop_) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return false;
    stop_requested_.WaitWithTimeout(&mu_, left);
  }
  return true;
}

void CallbackPollerKeepalive::Run() {
  grpc::GenericStub stub(channel_);
  while (!StopRequestedWithin(interval_)) {
    CallOnce(&stub, interval_);
  }
}

}  // namespace weightd
