#include "server/callback_poller_keepalive.h"

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>
#include <grpcpp/support/byte_buffer.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "loader/common/mutex.h"

namespace weightd {
namespace {

// Answers every call with an empty message and records the methods called.
class RecordingService : public grpc::CallbackGenericService {
 public:
  grpc::ServerGenericBidiReactor* CreateReactor(
      grpc::GenericCallbackServerContext* context) override {
    {
      MutexLock lock(&mu_);
      methods_.push_back(context->method());
    }
    return new Answer();
  }

  std::vector<std::string> methods() {
    MutexLock lock(&mu_);
    return methods_;
  }

 private:
  class Answer : public grpc::ServerGenericBidiReactor {
   public:
    Answer() { StartRead(&request_); }
    void OnReadDone(bool) override {
      grpc::Slice empty("", 0);
      response_ = grpc::ByteBuffer(&empty, 1);
      StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK);
    }
    void OnDone() override { delete this; }

   private:
    grpc::ByteBuffer request_;
    grpc::ByteBuffer response_;
  };

  Mutex mu_;
  std::vector<std::string> methods_ ABSL_GUARDED_BY(mu_);
};

class CallbackPollerKeepaliveTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.RegisterCallbackGenericService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
  }
  void TearDown() override { server_->Shutdown(); }

  absl::StatusOr<std::unique_ptr<CallbackPollerKeepalive>> StartEvery5Ms() {
    return CallbackPollerKeepalive::Start(
        server_->InProcessChannel(grpc::ChannelArguments()),
        absl::Milliseconds(5));
  }

  // Waits (up to 30 s, for a loaded machine) until `count` calls arrived.
  bool WaitForCalls(size_t count) {
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (service_.methods().size() < count) {
      if (absl::Now() > deadline) return false;
      absl::SleepFor(absl::Milliseconds(5));
    }
    return true;
  }

  RecordingService service_;
  std::unique_ptr<grpc::Server> server_;
};

TEST_F(CallbackPollerKeepaliveTest, CallsHealthCheckOnTheChannelRepeatedly) {
  auto keepalive = StartEvery5Ms();
  ASSERT_TRUE(keepalive.ok()) << keepalive.status();
  ASSERT_TRUE(WaitForCalls(3));
  keepalive->reset();
  for (const std::string& method : service_.methods()) {
    EXPECT_EQ(method, "/grpc.health.v1.Health/Check");
  }
}

TEST_F(CallbackPollerKeepaliveTest, MakesNoCallAfterItIsDestroyed) {
  auto keepalive = StartEvery5Ms();
  ASSERT_TRUE(keepalive.ok()) << keepalive.status();
  ASSERT_TRUE(WaitForCalls(1));
  keepalive->reset();  // joins its thread, which waits for its call
  const size_t calls = service_.methods().size();
  absl::SleepFor(absl::Milliseconds(50));  // ten intervals
  EXPECT_EQ(service_.methods().size(), calls);
}

TEST(CallbackPollerKeepaliveArgs, RefusesNoChannelAndIntervalsThatCannotWork) {
  EXPECT_EQ(CallbackPollerKeepalive::Start(nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  grpc::ServerBuilder builder;
  RecordingService service;
  builder.RegisterCallbackGenericService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  auto channel = server->InProcessChannel(grpc::ChannelArguments());
  for (absl::Duration bad :
       {absl::ZeroDuration(), absl::Seconds(1), absl::Seconds(5)}) {
    EXPECT_EQ(CallbackPollerKeepalive::Start(channel, bad).status().code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
  server->Shutdown();
}

}  // namespace
}  // namespace weightd
