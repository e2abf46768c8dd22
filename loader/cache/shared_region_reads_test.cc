#include "loader/cache/shared_region_reads.h"

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

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
                                   int consumers) {
  SharedRegionReads::Region region;
  region.file.inode = 42;
  region.offset = offset;
  region.length = length;
  region.consumers = consumers;
  return region;
}

absl::StatusOr<SharedRegionReads::Taken> TakeFrom(SharedRegionReads& reads,
                                                  CountingFile& file,
                                                  uint64_t offset,
                                                  uint64_t length,
                                                  int consumers) {
  return reads.Take(RegionOf(offset, length, consumers), [&](uint8_t* out) {
    return file.Read(offset, length, out);
  });
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
    ranks.emplace_back([&] {
      for (int b = 0; b < kBlocks; ++b) {
        auto taken = TakeFrom(reads, file, b * kBlock, kBlock, kWorld);
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
  auto late = TakeFrom(reads, file, 0, 100, 2);
  ASSERT_TRUE(late.ok());
  EXPECT_EQ(late->bytes_read, 100u);
  EXPECT_EQ(std::memcmp(late->bytes->data.get(), file.data(), 100), 0);
  EXPECT_EQ(reads.stats().rereads, 1u);
  auto shared = TakeFrom(reads, file, 100, 100, 2);
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
  ASSERT_TRUE(TakeFrom(reads, file, 0, 100, 2).ok());
  ASSERT_TRUE(TakeFrom(reads, file, 0, 100, 2).ok());
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
  auto retry = TakeFrom(reads, file, 0, 100, 2);
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

}  // namespace
}  // namespace weightd
