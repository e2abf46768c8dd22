#include "loader/cache/checkpoint_cache.h"

#include <atomic>
#include <functional>
#include <random>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "loader/common/mutex.h"

namespace weightd {
namespace {

class FakeValue : public CacheValue {
 public:
  explicit FakeValue(TierBytes bytes, std::atomic<int>* live = nullptr)
      : bytes_(std::move(bytes)), live_(live) {
    if (live_) ++*live_;
  }
  ~FakeValue() override {
    if (live_) --*live_;
  }
  TierBytes ResidentBytes() const override { return bytes_; }

 private:
  TierBytes bytes_;
  std::atomic<int>* live_;
};

CacheKey Key(const std::string& path, const std::string& identity = "1:1:100:5",
             const std::string& placement = "cpu") {
  return CacheKey{path, identity, placement};
}

CheckpointCache::LoadFn Loader(TierBytes bytes,
                               std::atomic<int>* calls = nullptr,
                               std::atomic<int>* live = nullptr) {
  return [bytes, calls, live](const CancellationToken&)
             -> absl::StatusOr<std::shared_ptr<const CacheValue>> {
    if (calls) ++*calls;
    return std::make_shared<FakeValue>(bytes, live);
  };
}

TEST(CheckpointCacheTest, SecondRequestIsAHit) {
  CheckpointCache cache({});
  std::atomic<int> calls{0};
  auto first = cache.GetOrLoad(Key("/m/a.pt"), {{"host", 10}},
                               Loader({{"host", 10}}, &calls));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_FALSE(first->hit);
  auto second = cache.GetOrLoad(Key("/m/a.pt"), {{"host", 10}},
                                Loader({{"host", 10}}, &calls));
  ASSERT_TRUE(second.ok());
  EXPECT_TRUE(second->hit);
  EXPECT_EQ(first->model_id, second->model_id);
  EXPECT_EQ(calls.load(), 1);
  CacheStats stats = cache.Stats();
  EXPECT_EQ(stats.loads, 1u);
  EXPECT_EQ(stats.hits, 1u);
  EXPECT_EQ(stats.used["host"], 10u);
}

TEST(CheckpointCacheTest, ConcurrentIdenticalLoadsShareOneLoad) {
  CheckpointCache cache({});
  std::atomic<int> calls{0};
  Notification release_load;
  auto slow_load = [&](const CancellationToken&)
      -> absl::StatusOr<std::shared_ptr<const CacheValue>> {
    ++calls;
    release_load.WaitForNotification();
    return std::make_shared<FakeValue>(TierBytes{{"host", 1}});
  };
  std::vector<std::thread> threads;
  std::vector<std::string> ids(8);
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      auto result = cache.GetOrLoad(Key("/m/a.pt"), TierBytes{}, slow_load);
      ASSERT_TRUE(result.ok());
      ids[i] = result->model_id;
    });
  }
  absl::SleepFor(absl::Milliseconds(50));
  release_load.Notify();
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(calls.load(), 1);
  for (const auto& id : ids) EXPECT_EQ(id, ids[0]);
  EXPECT_EQ(cache.Stats().loads, 1u);
  EXPECT_EQ(cache.Stats().hits, 7u);
}

TEST(CheckpointCacheTest, FailedLoadReachesJoinersAndIsNotCached) {
  CheckpointCache cache({});
  Notification release_load;
  auto failing = [&](const CancellationToken&)
      -> absl::StatusOr<std::shared_ptr<const CacheValue>> {
    release_load.WaitForNotification();
    return absl::InvalidArgumentError("/m/bad.pt: not a checkpoint");
  };
  absl::Status joined_status;
  std::thread joiner;
  std::thread loader([&] {
    EXPECT_EQ(cache.GetOrLoad(Key("/m/bad.pt"), {{"host", 5}}, failing)
                  .status()
                  .message(),
              "/m/bad.pt: not a checkpoint");
  });
  absl::SleepFor(absl::Milliseconds(20));
  joiner = std::thread([&] {
    joined_status =
        cache.GetOrLoad(Key("/m/bad.pt"), {{"host", 5}}, failing).status();
  });
  absl::SleepFor(absl::Milliseconds(20));
  release_load.Notify();
  loader.join();
  joiner.join();
  EXPECT_EQ(joined_status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.Stats().models, 0);
  EXPECT_EQ(cache.Stats().used["host"], 0u);
  // A later request loads again.
  EXPECT_TRUE(cache.GetOrLoad(Key("/m/bad.pt"), TierBytes{}, Loader({})).ok());
}

TEST(CheckpointCacheTest, EvictsLeastRecentlyUsedUnleasedWithinBudget) {
  std::atomic<int> live{0};
  CheckpointCache cache({{{"host", 100}}});
  auto a = cache.GetOrLoad(Key("/m/a"), {{"host", 40}},
                           Loader({{"host", 40}}, nullptr, &live));
  auto b = cache.GetOrLoad(Key("/m/b"), {{"host", 40}},
                           Loader({{"host", 40}}, nullptr, &live));
  ASSERT_TRUE(a.ok() && b.ok());
  a->value.reset();
  b->value.reset();
  // Touch a, so b is the least recently used.
  ASSERT_TRUE(cache.GetOrLoad(Key("/m/a"), {{"host", 40}}, Loader({})).ok());
  auto c = cache.GetOrLoad(Key("/m/c"), {{"host", 40}},
                           Loader({{"host", 40}}, nullptr, &live));
  ASSERT_TRUE(c.ok());
  c->value.reset();
  EXPECT_FALSE(cache.Describe(b->model_id).ok());
  EXPECT_TRUE(cache.Describe(a->model_id).ok());
  EXPECT_EQ(cache.Stats().evictions, 1u);
  EXPECT_EQ(cache.Stats().used["host"], 80u);
  EXPECT_EQ(live.load(), 2);  // b's memory was freed
}

TEST(CheckpointCacheTest, LeasedEntriesAreNeverEvicted) {
  CheckpointCache cache({{{"GPU-0", 100}}});
  cache.OpenSession("session-1");
  auto a = cache.GetOrLoad(Key("/m/a"), {{"GPU-0", 60}},
                           Loader({{"GPU-0", 60}}), "session-1");
  ASSERT_TRUE(a.ok());
  auto b =
      cache.GetOrLoad(Key("/m/b"), {{"GPU-0", 60}}, Loader({{"GPU-0", 60}}));
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(b.status().message(),
            "/m/b: needs 60 bytes on GPU-0; budget 100 bytes, 60 in use by "
            "leased or loading "
            "models");
  EXPECT_EQ(cache.ReleaseSession("session-1"), 1);
  EXPECT_TRUE(
      cache.GetOrLoad(Key("/m/b"), {{"GPU-0", 60}}, Loader({{"GPU-0", 60}}))
          .ok());
  EXPECT_FALSE(cache.Describe(a->model_id).ok());
}

TEST(CheckpointCacheTest, LargerThanBudgetIsRefusedUpFront) {
  CheckpointCache cache({{{"host", 10}}});
  std::atomic<int> calls{0};
  auto result =
      cache.GetOrLoad(Key("/m/big"), {{"host", 11}}, Loader({}, &calls));
  EXPECT_EQ(
      result.status().message(),
      "/m/big: needs 11 bytes on host, more than its whole budget of 10 bytes");
  EXPECT_EQ(calls.load(), 0);
}

TEST(CheckpointCacheTest, UnloadRefusedWhileLeasedUnlessForced) {
  CheckpointCache cache({});
  auto a = cache.GetOrLoad(Key("/m/a"), {{"host", 8}}, Loader({{"host", 8}}));
  ASSERT_TRUE(a.ok());
  cache.OpenSession("s1");
  cache.OpenSession("s2");
  ASSERT_TRUE(cache.Acquire(a->model_id, "s1").ok());
  auto refused = cache.Unload(a->model_id, false);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(cache.Release(a->model_id, "s1").ok());
  EXPECT_EQ(cache.Release(a->model_id, "s1").code(),
            absl::StatusCode::kNotFound);
  ASSERT_TRUE(cache.Acquire(a->model_id, "s2").ok());
  auto forced = cache.Unload(a->model_id, true);
  ASSERT_TRUE(forced.ok());
  EXPECT_EQ(*forced, 8u);
  EXPECT_EQ(cache.Stats().active_leases, 0);
  EXPECT_EQ(cache.Unload(a->model_id, false).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(CheckpointCacheTest,
     ChangedFileIsANewEntryAndTheOldOneServesItsLeaseHolders) {
  CheckpointCache cache({});
  cache.OpenSession("holder");
  auto old_entry = cache.GetOrLoad(Key("/m/a", "1:1:100:5"), TierBytes{},
                                   Loader({{"host", 4}}), "holder");
  ASSERT_TRUE(old_entry.ok());
  auto new_entry = cache.GetOrLoad(Key("/m/a", "1:1:120:9"), TierBytes{},
                                   Loader({{"host", 4}}));
  ASSERT_TRUE(new_entry.ok());
  EXPECT_FALSE(new_entry->hit);
  EXPECT_NE(old_entry->model_id, new_entry->model_id);
  auto old_info = cache.Describe(old_entry->model_id);
  ASSERT_TRUE(old_info.ok());
  EXPECT_TRUE(old_info->stale);
  ASSERT_TRUE(cache.Release(old_entry->model_id, "holder").ok());
  EXPECT_FALSE(cache.Describe(old_entry->model_id).ok());
  EXPECT_EQ(cache.Stats().used["host"], 4u);
}

TEST(CheckpointCacheTest, LeasesNeedAnOpenSession) {
  CheckpointCache cache({});
  auto refused = cache.GetOrLoad(Key("/m/a"), {{"host", 8}},
                                 Loader({{"host", 8}}), "never-opened");
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.status().message().find("never-opened"), std::string::npos);
  EXPECT_EQ(cache.Stats().loads, 0u);  // refused before loading anything
  cache.OpenSession("s");
  auto a =
      cache.GetOrLoad(Key("/m/a"), {{"host", 8}}, Loader({{"host", 8}}), "s");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(cache.ReleaseSession("s"), 1);
  // Closed: neither a new lease by Acquire nor by a load.
  EXPECT_EQ(cache.Acquire(a->model_id, "s").code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(cache.GetOrLoad(Key("/m/a"), TierBytes{}, Loader({}), "s")
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(cache.Stats().active_leases, 0);
}

TEST(CheckpointCacheTest, SessionClosedDuringItsLoadLeavesNoLease) {
  // A client dies while its load runs: the Lease stream ends first, the load
  // finishes later. The model stays cached but unleased (evictable).
  CheckpointCache cache({});
  cache.OpenSession("dying");
  Mutex mu;
  CondVar cv;
  bool started = false, go = false;
  CheckpointCache::LoadFn slow = [&](const CancellationToken&)
      -> absl::StatusOr<std::shared_ptr<const CacheValue>> {
    MutexLock lock(&mu);
    started = true;
    cv.SignalAll();
    while (!go) cv.Wait(&mu);
    return std::make_shared<FakeValue>(TierBytes{{"host", 8}});
  };
  absl::StatusOr<CheckpointCache::Result> result;
  std::thread loader([&] {
    result = cache.GetOrLoad(Key("/m/a"), {{"host", 8}}, slow, "dying");
  });
  {
    MutexLock lock(&mu);
    while (!started) cv.Wait(&mu);
  }
  EXPECT_EQ(cache.ReleaseSession("dying"), 0);  // nothing leased yet
  {
    MutexLock lock(&mu);
    go = true;
    cv.SignalAll();
  }
  loader.join();
  ASSERT_TRUE(result.ok()) << result.status();
  auto info = cache.Describe(result->model_id);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->lease_count, 0);
  EXPECT_EQ(cache.Stats().active_leases, 0);
  EXPECT_TRUE(cache.Unload(result->model_id, /*force=*/false).ok());
}

// Waits (bounded) until `done()`; false if it never happened.
bool Eventually(const std::function<bool()>& done) {
  for (int i = 0; i < 10000; ++i) {
    if (done()) return true;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return false;
}

TEST(CheckpointCacheTest, LoadAbandonedByItsOnlyRequestStopsAndLeavesNothing) {
  CheckpointCache cache({{{"GPU-0", 100}}});
  CancellationToken request;
  Notification started;
  std::atomic<bool> saw_abandoned{false};
  CheckpointCache::LoadFn load = [&](const CancellationToken& abandoned)
      -> absl::StatusOr<std::shared_ptr<const CacheValue>> {
    started.Notify();
    if (!Eventually([&] { return abandoned.cancelled(); })) {
      return std::make_shared<FakeValue>(TierBytes{{"GPU-0", 60}});
    }
    saw_abandoned = true;
    return absl::CancelledError("load cancelled");
  };
  absl::StatusOr<CheckpointCache::Result> result;
  std::thread loader([&] {
    result = cache.GetOrLoad(Key("/m/a"), {{"GPU-0", 60}}, load, "", &request);
  });
  started.WaitForNotification();
  EXPECT_EQ(cache.Stats().loads_in_flight, 1);
  EXPECT_EQ(cache.Stats().used["GPU-0"], 60u);  // reserved while loading
  request.Cancel();
  loader.join();
  EXPECT_TRUE(saw_abandoned.load());
  EXPECT_TRUE(absl::IsCancelled(result.status())) << result.status();
  CacheStats stats = cache.Stats();
  EXPECT_EQ(stats.models, 0);
  EXPECT_EQ(stats.loads_in_flight, 0);
  EXPECT_EQ(stats.load_failures, 1u);
  EXPECT_EQ(stats.used["GPU-0"], 0u);  // the reservation is returned
}

TEST(CheckpointCacheTest, LoadGoesOnWhileAnotherRequestStillWaits) {
  CheckpointCache cache({});
  CancellationToken first;
  Notification started, finish;
  std::atomic<bool> abandoned_seen{false};
  CheckpointCache::LoadFn load = [&](const CancellationToken& abandoned)
      -> absl::StatusOr<std::shared_ptr<const CacheValue>> {
    started.Notify();
    finish.WaitForNotification();
    abandoned_seen = abandoned.cancelled();
    return std::make_shared<FakeValue>(TierBytes{{"host", 8}});
  };
  absl::StatusOr<CheckpointCache::Result> a, b;
  std::thread first_request([&] {
    a = cache.GetOrLoad(Key("/m/a"), {{"host", 8}}, load, "", &first);
  });
  started.WaitForNotification();
  std::thread second_request([&] {
    b = cache.GetOrLoad(Key("/m/a"), {{"host", 8}}, load);
  });
  ASSERT_TRUE(Eventually([&] { return cache.Stats().waiting_requests == 1; }));
  first.Cancel();  // the first client goes away; the second still wants it
  finish.Notify();
  first_request.join();
  second_request.join();
  EXPECT_FALSE(abandoned_seen.load());
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_TRUE(b->hit);
  EXPECT_EQ(cache.Stats().models, 1);
  EXPECT_EQ(cache.Stats().waiting_requests, 0);
}

TEST(CheckpointCacheTest, CancelledWaiterReturnsAtOnceAndTheLoadGoesOn) {
  CheckpointCache cache({});
  Notification started, finish;
  CheckpointCache::LoadFn load = [&](const CancellationToken&)
      -> absl::StatusOr<std::shared_ptr<const CacheValue>> {
    started.Notify();
    finish.WaitForNotification();
    return std::make_shared<FakeValue>(TierBytes{{"host", 8}});
  };
  absl::StatusOr<CheckpointCache::Result> a, b;
  std::thread first_request([&] {
    a = cache.GetOrLoad(Key("/m/a"), {{"host", 8}}, load);
  });
  started.WaitForNotification();
  CancellationToken second;
  std::thread second_request([&] {
    b = cache.GetOrLoad(Key("/m/a"), {{"host", 8}}, load, "", &second);
  });
  ASSERT_TRUE(Eventually([&] { return cache.Stats().waiting_requests == 1; }));
  second.Cancel();
  second_request.join();  // returns while the load still runs
  EXPECT_TRUE(absl::IsCancelled(b.status())) << b.status();
  EXPECT_EQ(cache.Stats().waiting_requests, 0);
  finish.Notify();
  first_request.join();
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(cache.Stats().models, 1);
}

TEST(CheckpointCacheTest, RequestJoiningAnAbandonedLoadStartsAFreshOne) {
  CheckpointCache cache({});
  CancellationToken first;
  Notification started, saw_abandoned, give_up;
  std::atomic<int> calls{0};
  CheckpointCache::LoadFn load = [&](const CancellationToken& abandoned)
      -> absl::StatusOr<std::shared_ptr<const CacheValue>> {
    if (++calls == 1) {
      started.Notify();
      if (!Eventually([&] { return abandoned.cancelled(); })) {
        return absl::InternalError("never abandoned");
      }
      saw_abandoned.Notify();
      give_up.WaitForNotification();
      return absl::CancelledError("load cancelled");
    }
    return std::make_shared<FakeValue>(TierBytes{{"host", 8}});
  };
  absl::StatusOr<CheckpointCache::Result> a, b;
  std::thread first_request([&] {
    a = cache.GetOrLoad(Key("/m/a"), {{"host", 8}}, load, "", &first);
  });
  started.WaitForNotification();
  first.Cancel();
  saw_abandoned.WaitForNotification();
  // Joins the abandoned load before it gives up: it must not inherit the
  // other client's cancellation.
  std::thread second_request([&] {
    b = cache.GetOrLoad(Key("/m/a"), {{"host", 8}}, load);
  });
  ASSERT_TRUE(Eventually([&] { return cache.Stats().waiting_requests == 1; }));
  give_up.Notify();
  first_request.join();
  second_request.join();
  EXPECT_TRUE(absl::IsCancelled(a.status())) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_FALSE(b->hit);
  EXPECT_EQ(calls.load(), 2);
  EXPECT_EQ(cache.Stats().loads, 2u);
  EXPECT_EQ(cache.Stats().models, 1);
}

TEST(CheckpointCacheTest, ManyThreadsLoadingLeasingReleasingAndEvicting) {
  std::atomic<int> live{0};
  CheckpointCache cache({{{"host", 64}}});
  constexpr int kThreads = 8;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 random(t);
      std::string session = "s" + std::to_string(t);
      cache.OpenSession(session);
      for (int i = 0; i < 300; ++i) {
        std::string path = "/m/" + std::to_string(random() % 12);
        auto result = cache.GetOrLoad(Key(path), {{"host", 8}},
                                      Loader({{"host", 8}}, nullptr, &live),
                                      random() % 2 ? session : "");
        if (!result.ok()) {
          EXPECT_EQ(result.status().code(),
                    absl::StatusCode::kResourceExhausted);
          continue;
        }
        switch (random() % 4) {
          case 0:
            cache.ReleaseSession(session);
            cache.OpenSession(session);  // the client opens a new stream
            break;
          case 1:
            (void)cache.Unload(result->model_id, false);
            break;
          case 2:
            (void)cache.Acquire(result->model_id, session);
            break;
          default:
            (void)cache.List();
        }
      }
      cache.ReleaseSession(session);
    });
  }
  for (auto& thread : threads) thread.join();
  CacheStats stats = cache.Stats();
  EXPECT_EQ(stats.active_leases, 0);
  EXPECT_LE(stats.used["host"], 64u);
  EXPECT_EQ(stats.used["host"], static_cast<uint64_t>(stats.models) * 8);
  EXPECT_EQ(live.load(), stats.models);
}

}  // namespace
}  // namespace weightd
