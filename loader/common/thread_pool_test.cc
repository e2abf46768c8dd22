#include "loader/common/thread_pool.h"

#include <atomic>
#include <vector>

#include "gtest/gtest.h"
#include "loader/common/mutex.h"

namespace weightd {
namespace {

TEST(ThreadPoolTest, RunsTasksInOrderOnOneWorker) {
  auto pool = ThreadPool::Create("test pool", 1, 0);
  ASSERT_TRUE(pool.ok()) << pool.status();
  Mutex mu;
  std::vector<int> order;
  Notification done;
  for (int i = 0; i < 50; ++i) {
    ASSERT_TRUE((*pool)
                    ->Schedule([&, i] {
                      MutexLock lock(&mu);
                      order.push_back(i);
                      if (i == 49) done.Notify();
                    })
                    .ok());
  }
  done.WaitForNotification();
  MutexLock lock(&mu);
  ASSERT_EQ(order.size(), 50u);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(order[i], i);
}

TEST(ThreadPoolTest, FullQueueIsResourceExhaustedAndShutdownDropsQueued) {
  auto pool = ThreadPool::Create("load queue", 1, 2);
  ASSERT_TRUE(pool.ok());
  Notification release, started;
  ASSERT_TRUE((*pool)
                  ->Schedule([&] {
                    started.Notify();
                    release.WaitForNotification();
                  })
                  .ok());
  started.WaitForNotification();
  std::atomic<int> ran{0}, dropped{0};
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE((*pool)->Schedule([&] { ++ran; }, [&] { ++dropped; }).ok());
  }
  absl::Status full = (*pool)->Schedule([&] { ++ran; });
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(full.message().find("load queue is full"), std::string::npos)
      << full;
  EXPECT_EQ((*pool)->queued(), 2u);
  EXPECT_EQ((*pool)->busy(), 1);

  (*pool)->Shutdown();
  EXPECT_EQ(dropped.load(), 2);
  EXPECT_EQ((*pool)->Schedule([] {}).code(), absl::StatusCode::kUnavailable);
  release.Notify();
  pool->reset();  // joins: the running task finished, the dropped never ran
  EXPECT_EQ(ran.load(), 0);
}

TEST(ThreadPoolTest, ParallelForRunsEveryIndexOnceAndReturnsFirstError) {
  auto pool = ThreadPool::Create("work", 3, 0);
  ASSERT_TRUE(pool.ok());
  std::vector<std::atomic<int>> hits(1000);
  absl::Status status = (*pool)->ParallelFor(1000, [&](size_t i) {
    ++hits[i];
    return i == 700 || i == 900 ? absl::DataLossError(std::to_string(i))
                                : absl::OkStatus();
  });
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(status.message(), "700");
  for (auto& h : hits) EXPECT_EQ(h.load(), 1);
}

TEST(ThreadPoolTest, ParallelForFromInsideEveryWorkerDoesNotDeadlock) {
  auto pool = ThreadPool::Create("work", 2, 0);
  ASSERT_TRUE(pool.ok());
  std::atomic<int> total{0};
  Mutex mu;
  CondVar cv;
  int finished = 0;
  for (int outer = 0; outer < 4; ++outer) {
    ASSERT_TRUE((*pool)
                    ->Schedule([&] {
                      absl::Status s = (*pool)->ParallelFor(64, [&](size_t) {
                        ++total;
                        return absl::OkStatus();
                      });
                      EXPECT_TRUE(s.ok());
                      MutexLock lock(&mu);
                      ++finished;
                      cv.SignalAll();
                    })
                    .ok());
  }
  MutexLock lock(&mu);
  while (finished < 4) cv.Wait(&mu);
  EXPECT_EQ(total.load(), 4 * 64);
}

}  // namespace
}  // namespace weightd
