#include "loader/cache/shared_region_reads.h"

#include <atomic>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "loader/common/mutex.h"

namespace weightd {
namespace {

// A file that counts how often each byte was read.
class CountingFile {
 public:
  explicit CountingFile(uint64_t size) : data_(size) {
    for (uint64_t i = 0; i < size; ++i) data_[i] = static_cast<uint8_t>(i * 7);
  }
  absl::Status Read(uint64_t offset, uint64_t length, uint8_t* out) {
    reads_ += 1;
    bytes_ += length;
    std::memcpy(out, data_.data() + offset, length);
    return absl::OkStatus();
  }
  const uint8_t* data() const { return data_.data(); }
  uint64_t reads() const { return reads_.load(); }
  uint64_t bytes() const { return bytes_.load(); }

 private:
  std::vector<uint8_t> data_;
  std::atomic<uint64_t> reads_{0};
  std::atomic<uint64_t> bytes_{0};
};

SharedRegionReads::Region RegionOf(uint64_t offset, uint64_t length,
                                   int consumers, int consumer = 0) {
  SharedRegionReads::Region region;
  region.consumer = consumer;
  region.file.inode = 42;
  region.offset = offset;
  region.length = length;
  region.consumers = consumers;
  return region;
}

absl::StatusOr<SharedRegionReads::Taken> TakeFrom(
    SharedRegionReads& reads, CountingFile& file, uint64_t offset,
    uint64_t length, int consumers, int consumer = 0) {
  return reads.Take(
      RegionOf(offset, length, consumers, consumer),
      [&](uint8_t* out) { return file.Read(offset, length, out); });
}

TEST(SharedRegionReadsTest, ConcurrentRanksReadEachRegionOnce) {
  constexpr int kWorld = 4;
  constexpr uint64_t kBlock = 1000;
  constexpr int kBlocks = 16;
  CountingFile file(kBlock * kBlocks);
  SharedRegionReads reads(SharedRegionReads::Options{});
  std::vector<std::thread> ranks;
  std::atomic<uint64_t> read_by_takes{0};
  std::atomic<int> mismatches{0};
  for (int rank = 0; rank < kWorld; ++rank) {
    ranks.emplace_back([&, rank] {
      for (int b = 0; b < kBlocks; ++b) {
        auto taken = TakeFrom(reads, file, b * kBlock, kBlock, kWorld, rank);
        ASSERT_TRUE(taken.ok()) << taken.status();
        read_by_takes += taken->bytes_read;
        if (taken->bytes->size != kBlock ||
            std::memcmp(taken->bytes->data.get(), file.data() + b * kBlock,
                        kBlock) != 0)
          ++mismatches;
      }
    });
  }
  for (std::thread& t : ranks) t.join();
  EXPECT_EQ(mismatches.load(), 0);
  EXPECT_EQ(file.bytes(), kBlock * kBlocks);
  EXPECT_EQ(read_by_takes.load(), kBlock * kBlocks);
  const SharedRegionReads::Stats stats = reads.stats();
  EXPECT_EQ(stats.bytes_read, kBlock * kBlocks);
  EXPECT_EQ(stats.bytes_shared, kBlock * kBlocks * (kWorld - 1));
  EXPECT_EQ(stats.held_bytes, 0u);  // every region taken by all: freed
}

TEST(SharedRegionReadsTest, OneConsumerNeverKeeps) {
  CountingFile file(100);
  SharedRegionReads reads(SharedRegionReads::Options{});
  ASSERT_TRUE(TakeFrom(reads, file, 0, 100, 1).ok());
  ASSERT_TRUE(TakeFrom(reads, file, 0, 100, 1).ok());
  EXPECT_EQ(file.bytes(), 200u);
  EXPECT_EQ(reads.stats().held_bytes, 0u);
}

TEST(SharedRegionReadsTest, EvictsOldestAndCountsTheReread) {
  CountingFile file(1000);
  SharedRegionReads::Options options;
  options.budget_bytes = 250;  // two regions of 100
  SharedRegionReads reads(options);
  for (int b = 0; b < 3; ++b)
    ASSERT_TRUE(TakeFrom(reads, file, b * 100, 100, 2).ok());
  // Region 0 was evicted for region 2.
  EXPECT_EQ(reads.stats().evictions, 1u);
  EXPECT_EQ(reads.stats().held_bytes, 200u);
  auto late = TakeFrom(reads, file, 0, 100, 2, 1);
  ASSERT_TRUE(late.ok());
  EXPECT_EQ(late->bytes_read, 100u);
  EXPECT_EQ(std::memcmp(late->bytes->data.get(), file.data(), 100), 0);
  EXPECT_EQ(reads.stats().rereads, 1u);
  auto shared = TakeFrom(reads, file, 100, 100, 2, 1);
  ASSERT_TRUE(shared.ok());
  EXPECT_EQ(shared->bytes_read, 0u);
  EXPECT_EQ(file.bytes(), 400u);
  EXPECT_EQ(reads.stats().held_bytes, 100u);  // region 2 awaits its second
}

TEST(SharedRegionReadsTest, RegionsOverTheBudgetAreReadAlone) {
  CountingFile file(1000);
  SharedRegionReads::Options options;
  options.budget_bytes = 50;
  SharedRegionReads reads(options);
  ASSERT_TRUE(TakeFrom(reads, file, 0, 100, 2, 0).ok());
  ASSERT_TRUE(TakeFrom(reads, file, 0, 100, 2, 1).ok());
  EXPECT_EQ(file.bytes(), 200u);
  EXPECT_EQ(reads.stats().held_bytes, 0u);
}

TEST(SharedRegionReadsTest, AFailedReadIsNotKept) {
  CountingFile file(100);
  SharedRegionReads reads(SharedRegionReads::Options{});
  auto failed = reads.Take(RegionOf(0, 100, 2), [](uint8_t*) {
    return absl::DataLossError("truncated");
  });
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(reads.stats().held_bytes, 0u);
  auto retry = TakeFrom(reads, file, 0, 100, 2, 1);
  ASSERT_TRUE(retry.ok());
  EXPECT_EQ(retry->bytes_read, 100u);
}

TEST(SharedRegionReadsTest, DifferentFilesAreDifferentRegions) {
  CountingFile file(100);
  SharedRegionReads reads(SharedRegionReads::Options{});
  SharedRegionReads::Region a = RegionOf(0, 100, 2);
  SharedRegionReads::Region b = a;
  b.file.inode = 43;
  auto read = [&](uint8_t* out) { return file.Read(0, 100, out); };
  ASSERT_TRUE(reads.Take(a, read).ok());
  ASSERT_TRUE(reads.Take(b, read).ok());
  EXPECT_EQ(file.bytes(), 200u);
}

TEST(SharedRegionReadsTest, ASecondTakeByTheSameConsumerFreesNothing) {
  CountingFile file(100);
  SharedRegionReads reads(SharedRegionReads::Options{});
  ASSERT_TRUE(TakeFrom(reads, file, 0, 100, 2, 0).ok());
  auto again = TakeFrom(reads, file, 0, 100, 2, 0);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->bytes_read, 0u);
  EXPECT_EQ(reads.stats().held_bytes, 100u);  // consumer 1 has yet to take
  auto other = TakeFrom(reads, file, 0, 100, 2, 1);
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(other->bytes_read, 0u);
  EXPECT_EQ(file.bytes(), 100u);
  EXPECT_EQ(reads.stats().held_bytes, 0u);
  EXPECT_EQ(reads.stats().regions, 0u);
}

TEST(SharedRegionReadsTest, AnAbandonedConsumerLeavesNothingHeld) {
  constexpr int kWorld = 4;
  constexpr int kBlocks = 8;
  CountingFile file(100 * kBlocks);
  SharedRegionReads reads(SharedRegionReads::Options{});
  // Consumer 2 takes the first two blocks, then its load fails.
  for (int b = 0; b < 2; ++b)
    ASSERT_TRUE(TakeFrom(reads, file, b * 100, 100, kWorld, 2).ok());
  ASSERT_TRUE(TakeFrom(reads, file, 0, 100, kWorld, 0).ok());
  reads.Abandon(RegionOf(0, 0, kWorld).file, kWorld, 2);
  for (int consumer : {0, 1, 3}) {
    for (int b = 0; b < kBlocks; ++b) {
      auto taken = TakeFrom(reads, file, b * 100, 100, kWorld, consumer);
      ASSERT_TRUE(taken.ok()) << taken.status();
      EXPECT_EQ(
          std::memcmp(taken->bytes->data.get(), file.data() + b * 100, 100), 0);
    }
  }
  // Block 0 taken twice by consumer 0 still read once; every block once.
  EXPECT_EQ(file.bytes(), 100u * kBlocks);
  const SharedRegionReads::Stats stats = reads.stats();
  EXPECT_EQ(stats.held_bytes, 0u);
  EXPECT_EQ(stats.regions, 0u);
  EXPECT_EQ(stats.abandoned_groups, 1u);
  // Its retry takes again: regions from then on wait for it too.
  ASSERT_TRUE(TakeFrom(reads, file, 0, 100, kWorld, 2).ok());
  EXPECT_EQ(reads.stats().abandoned_groups, 0u);
  EXPECT_EQ(reads.stats().held_bytes, 100u);
  for (int consumer : {0, 1, 3})
    ASSERT_TRUE(TakeFrom(reads, file, 0, 100, kWorld, consumer).ok());
  EXPECT_EQ(reads.stats().held_bytes, 0u);
}

TEST(SharedRegionReadsTest, AbandonFreesEvictedAndOtherGroupsKeepWaiting) {
  CountingFile file(1000);
  SharedRegionReads::Options options;
  options.budget_bytes = 150;  // one region of 100
  SharedRegionReads reads(options);
  ASSERT_TRUE(TakeFrom(reads, file, 0, 100, 2, 0).ok());
  ASSERT_TRUE(TakeFrom(reads, file, 100, 100, 2, 0).ok());  // evicts 0
  SharedRegionReads::Region other_file = RegionOf(0, 100, 2, 0);
  other_file.file.inode = 43;
  ASSERT_TRUE(reads
                  .Take(other_file,
                        [&](uint8_t* out) { return file.Read(0, 100, out); })
                  .ok());  // evicts 100
  EXPECT_EQ(reads.stats().regions, 3u);
  reads.Abandon(RegionOf(0, 0, 2).file, 2, 1);
  // The other file's region still waits for its consumer 1.
  EXPECT_EQ(reads.stats().regions, 1u);
  EXPECT_EQ(reads.stats().held_bytes, 100u);
  // Bad consumers are ignored, never out of bounds.
  reads.Abandon(RegionOf(0, 0, 2).file, 2, 7);
  reads.Abandon(RegionOf(0, 0, 2).file, 2, -1);
  EXPECT_EQ(reads.stats().regions, 1u);
  auto alone = TakeFrom(reads, file, 0, 100, 2, 5);
  ASSERT_TRUE(alone.ok());
  EXPECT_EQ(alone->bytes_read, 100u);
}

TEST(SharedRegionReadsTest, EveryoneAbandonedMeansReadAlone) {
  CountingFile file(100);
  SharedRegionReads reads(SharedRegionReads::Options{});
  reads.Abandon(RegionOf(0, 0, 2).file, 2, 1);
  ASSERT_TRUE(TakeFrom(reads, file, 0, 100, 2, 0).ok());
  EXPECT_EQ(reads.stats().held_bytes, 0u);
  EXPECT_EQ(reads.stats().regions, 0u);
}

// The reader of a block others wait for fails: they read it themselves (and
// see the file's own error if it fails for them too), never hang.
TEST(SharedRegionReadsTest, WaitersOfAFailedReadReadForThemselves) {
  constexpr int kWorld = 4;
  CountingFile file(100);
  SharedRegionReads reads(SharedRegionReads::Options{});
  Notification reading;
  Notification others_started;
  std::thread failing([&] {
    auto taken = reads.Take(RegionOf(0, 100, kWorld, 0), [&](uint8_t*) {
      reading.Notify();
      others_started.WaitForNotification();
      absl::SleepFor(absl::Milliseconds(50));  // let them reach the wait
      return absl::DataLossError("model.bin was truncated");
    });
    EXPECT_EQ(taken.status().code(), absl::StatusCode::kDataLoss);
    reads.Abandon(RegionOf(0, 0, kWorld).file, kWorld, 0);
  });
  reading.WaitForNotification();
  std::vector<std::thread> others;
  std::atomic<int> good{0};
  for (int consumer = 1; consumer < kWorld; ++consumer) {
    others.emplace_back([&, consumer] {
      auto taken = TakeFrom(reads, file, 0, 100, kWorld, consumer);
      ASSERT_TRUE(taken.ok()) << taken.status();
      if (std::memcmp(taken->bytes->data.get(), file.data(), 100) == 0) ++good;
    });
  }
  others_started.Notify();
  failing.join();
  for (std::thread& t : others) t.join();
  EXPECT_EQ(good.load(), kWorld - 1);
  EXPECT_EQ(file.bytes(), 100u);  // one of the waiters read it for all
  EXPECT_EQ(reads.stats().held_bytes, 0u);
  EXPECT_EQ(reads.stats().regions, 0u);
}

// Ranks whose reads fail now and then, each giving up at its first error:
// the others always finish with the right bytes and nothing stays held.
TEST(SharedRegionReadsTest, RanksFailingAtRandomLeaveNothingHeld) {
  constexpr int kWorld = 4;
  constexpr uint64_t kBlock = 64;
  constexpr int kBlocks = 200;
  for (int round = 0; round < 20; ++round) {
    CountingFile file(kBlock * kBlocks);
    SharedRegionReads::Options options;
    options.budget_bytes = kBlock * 16;  // evictions too
    SharedRegionReads reads(options);
    std::atomic<int> finished{0};
    std::vector<std::thread> ranks;
    for (int rank = 0; rank < kWorld; ++rank) {
      ranks.emplace_back([&, rank] {
        std::mt19937 random(round * kWorld + rank);
        // Rank 0 never fails, so someone always finishes.
        const bool fails = rank != 0 && random() % 2 == 0;
        const int fail_at = static_cast<int>(random() % kBlocks);
        for (int b = 0; b < kBlocks; ++b) {
          auto taken = reads.Take(
              RegionOf(b * kBlock, kBlock, kWorld, rank), [&](uint8_t* out) {
                if (fails && b >= fail_at)
                  return absl::UnavailableError("injected read failure");
                return file.Read(b * kBlock, kBlock, out);
              });
          if (!taken.ok()) {
            EXPECT_TRUE(fails);
            reads.Abandon(RegionOf(0, 0, kWorld).file, kWorld, rank);
            return;
          }
          EXPECT_EQ(std::memcmp(taken->bytes->data.get(),
                                file.data() + b * kBlock, kBlock),
                    0);
        }
        ++finished;
      });
    }
    for (std::thread& t : ranks) t.join();
    EXPECT_GE(finished.load(), 1);
    const SharedRegionReads::Stats stats = reads.stats();
    EXPECT_EQ(stats.held_bytes, 0u) << "round " << round;
    // Regions left remembered wait only for a rank that never came back;
    // none here took fewer than every block unless it failed.
    EXPECT_EQ(stats.regions, 0u) << "round " << round;
  }
}

// A rank reloaded alone after its group finished keeps its blocks for ranks
// that never come: they are freed after the linger.
TEST(SharedRegionReadsTest, RegionsNobodyTakesAreFreedAfterTheLinger) {
  CountingFile file(300);
  absl::Time now = absl::FromUnixSeconds(1000);
  SharedRegionReads::Options options;
  options.linger = absl::Seconds(30);
  options.clock = [&now] { return now; };
  SharedRegionReads reads(options);
  ASSERT_TRUE(TakeFrom(reads, file, 0, 100, 4, 2).ok());
  ASSERT_TRUE(TakeFrom(reads, file, 100, 100, 4, 2).ok());
  now += absl::Seconds(20);
  ASSERT_TRUE(TakeFrom(reads, file, 100, 100, 4, 1).ok());  // still used
  EXPECT_EQ(reads.stats().held_bytes, 200u);
  now += absl::Seconds(15);  // region 0 untaken for 35 s, region 1 for 15 s
  EXPECT_EQ(reads.stats().held_bytes, 100u);
  EXPECT_EQ(reads.stats().expired, 1u);
  now += absl::Seconds(30);
  EXPECT_EQ(reads.stats().held_bytes, 0u);
  EXPECT_EQ(reads.stats().regions, 0u);
  // A late rank reads for itself.
  auto late = TakeFrom(reads, file, 0, 100, 4, 3);
  ASSERT_TRUE(late.ok());
  EXPECT_EQ(late->bytes_read, 100u);
  EXPECT_EQ(std::memcmp(late->bytes->data.get(), file.data(), 100), 0);
}

}  // namespace
}  // namespace weightd
