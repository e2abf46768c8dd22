// The staging pipeline on the fake GPU, over every reader backend.
#include "loader/device/staging_pipeline.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "loader/common/test_child.h"
#include "loader/device/arena_handle.h"
#include "loader/device/fault_injecting_fake_device.h"
#include "loader/io/direct_io.h"
#include "loader/io/fault_injecting_reader.h"
#include "loader/io/io_uring_reader.h"
#include "loader/io/mapped_file.h"
#include "loader/io/reader_factory.h"
#include "loader/io/test_util.h"

namespace weightd {
namespace {

using testing::FirstPatternMismatch;
using testing::PatternByte;
using testing::WritePatternFile;

constexpr uint32_t kSeed = 42;
constexpr uint64_t kFileSize = (5 << 20) + 123;

// Bytes of generated ranges: a function of the position alone, so any chunk
// is checkable and the generator is stateless (shared by threads).
uint8_t GeneratedByte(uint64_t pos) {
  return static_cast<uint8_t>((pos * 131 + 17) ^ (pos >> 9));
}

// A generator that also checks the pipeline's contract: chunks on multiples of
// the unit and never larger than one staging buffer.
RangeGenerator CheckedGenerator(uint64_t unit, uint64_t chunk_bytes) {
  return [unit, chunk_bytes](uint64_t pos, uint64_t length, uint8_t* out) {
    if (pos % unit != 0 || length % unit != 0 || length == 0 ||
        length > chunk_bytes) {
      return absl::InternalError(absl::StrCat("bad generated chunk ", pos, " +",
                                              length, " (unit ", unit,
                                              ", chunk ", chunk_bytes, ")"));
    }
    for (uint64_t k = 0; k < length; ++k) out[k] = GeneratedByte(pos + k);
    return absl::OkStatus();
  };
}

// Whether the arena bytes at a range's offset are the range's bytes.
bool RangeMatches(const uint8_t* arena, const CopyRange& r) {
  const uint8_t* at = arena + r.arena_offset;
  if (r.generate) {
    for (uint64_t k = 0; k < r.length; ++k) {
      if (at[k] != GeneratedByte(k)) return false;
    }
    return true;
  }
  if (r.host_source != nullptr) {
    return std::memcmp(at, r.host_source, r.length) == 0;
  }
  return FirstPatternMismatch(at, r.length, r.file_offset, kSeed) == -1;
}

// A checkpoint-like layout: file ranges at odd offsets, one range from host
// memory, one generated range (12-byte units, several chunks), a zero-length
// range, placed in the arena out of order with gaps.
struct Layout {
  std::vector<CopyRange> ranges;
  uint64_t arena_size = 0;
  std::vector<uint8_t> memory;  // the host-memory source
};

Layout MakeLayout(uint64_t file_size, uint64_t chunk_bytes) {
  Layout l;
  l.memory.resize(100000);
  for (size_t i = 0; i < l.memory.size(); ++i) l.memory[i] = i * 13 + 1;
  struct R {
    uint64_t off, len;
  };
  std::vector<R> file_ranges = {{0, 64},
                                {64, 1 << 20},
                                {(1 << 20) + 64, 3 << 20},
                                {(4 << 20) + 7, file_size - (4 << 20) - 7},
                                {100, 0},
                                {12345, 777}};
  // Arena: reverse order, 256-byte aligned, 1000-byte gaps.
  uint64_t at = 0;
  for (auto it = file_ranges.rbegin(); it != file_ranges.rend(); ++it) {
    l.ranges.push_back(CopyRange::FromFile(it->off, it->len, at));
    at = (at + it->len + 1000 + 255) / 256 * 256;
  }
  l.ranges.push_back(
      CopyRange::FromMemory(l.memory.data(), l.memory.size(), at));
  at = (at + l.memory.size() + 255) / 256 * 256;
  constexpr uint64_t kUnit = 12;
  l.ranges.push_back(CopyRange::Generated(
      kUnit * 25000, kUnit, CheckedGenerator(kUnit, chunk_bytes), at));
  at += kUnit * 25000;
  l.arena_size = at + 500;
  return l;
}

// Every range byte-identical at its offset; gaps untouched (zero).
void ExpectArena(const uint8_t* arena, const Layout& l) {
  std::vector<bool> covered(l.arena_size, false);
  for (const CopyRange& r : l.ranges) {
    EXPECT_TRUE(RangeMatches(arena, r))
        << "range at arena offset " << r.arena_offset;
    std::fill(covered.begin() + r.arena_offset,
              covered.begin() + r.arena_offset + r.length, true);
  }
  for (uint64_t i = 0; i < l.arena_size; ++i) {
    if (!covered[i] && arena[i] != 0) {
      ADD_FAILURE() << "gap byte " << i << " written";
      break;
    }
  }
}

struct Param {
  std::string label;
  IoBackend backend;
  uint64_t chunk;
  int buffers;
  // The fake reports its arenas' host addresses: the pipeline reads and
  // writes straight into them (no ring, no device copies).
  bool in_place = false;
};
void PrintTo(const Param& p, std::ostream* os) { *os << p.label; }

class StagingPipelineTest : public ::testing::TestWithParam<Param> {
 protected:
  static void SetUpTestSuite() {
    path_ = new std::string(WritePatternFile("staging", kFileSize, kSeed));
  }
  static void TearDownTestSuite() {
    unlink(path_->c_str());
    delete path_;
  }

  void SetUp() override {
    if (GetParam().backend == IoBackend::kIoUring &&
        !IoUringReader::Probe().ok()) {
      GTEST_SKIP() << "io_uring unavailable: " << IoUringReader::Probe();
    }
    auto file = MappedFile::Open(*path_);
    ASSERT_TRUE(file.ok());
    file_ = std::move(*file);
    source_.fd = file_->fd();
    source_.size = file_->size();
    source_.name = *path_;
    UseDevice(absl::ZeroDuration());
    layout_ = MakeLayout(kFileSize, GetParam().chunk);
  }

  // A fresh fake GPU whose copies take `copy_delay` each.
  void UseDevice(absl::Duration copy_delay) {
    FakeDevice::Options o;
    o.total_memory = 64 << 20;
    o.num_streams = 2;
    o.copy_delay = copy_delay;
    auto d = FaultInjectingFakeDevice::Create(o);
    ASSERT_TRUE(d.ok());
    fake_ = d->get();
    fake_->set_host_addressed(GetParam().in_place);
    device_ = std::move(*d);
  }

  std::unique_ptr<Reader> NewReader(int queue_depth = 8) {
    ReaderOptions o;
    o.backend = GetParam().backend;
    o.queue_depth = queue_depth;
    auto r = CreateReader(o);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? std::move(*r) : nullptr;
  }

  std::unique_ptr<StagingPipeline> NewPipeline(std::unique_ptr<Reader> reader) {
    StagingOptions o;
    o.chunk_bytes = GetParam().chunk;
    o.num_buffers = GetParam().buffers;
    auto p = StagingPipeline::Create(device_.get(), std::move(reader), o);
    EXPECT_TRUE(p.ok()) << p.status();
    return p.ok() ? std::move(*p) : nullptr;
  }

  // The suite file's O_DIRECT descriptor (held by the fixture) set in
  // `source`; false, with why_not_direct_, where its file system refuses it.
  bool AddDirectFd(FileSource* source) {
    DirectFd direct = OpenDirectIo(file_->fd(), *path_);
    if (!direct.fd.valid()) {
      why_not_direct_ = direct.why_not;
      return false;
    }
    source->direct_fd = direct.fd.get();
    source->direct_alignment = direct.alignment;
    direct_fd_ = std::move(direct.fd);
    return true;
  }

  // The arena opened the way a client opens it: by its exported handle.
  std::unique_ptr<OpenedArena> Open(const DeviceArena& arena) {
    auto handle = device_->ExportHandle(arena);
    EXPECT_TRUE(handle.ok()) << handle.status();
    if (!handle.ok()) return nullptr;
    auto opened = OpenArenaHandle(*handle, arena.size(), device_->uuid());
    EXPECT_TRUE(opened.ok()) << opened.status();
    return opened.ok() ? std::move(*opened) : nullptr;
  }

  // A full load of the layout succeeds with every byte in place (a pipeline
  // is still usable after a failure).
  void ExpectLoadsTheLayout(StagingPipeline* pipeline) {
    auto arena = pipeline->Load(layout_.arena_size, source_, layout_.ranges,
                                nullptr, nullptr);
    ASSERT_TRUE(arena.ok()) << arena.status();
    auto opened = Open(**arena);
    ASSERT_NE(opened, nullptr);
    ExpectArena(opened->host_data(), layout_);
  }

  void ExpectNoLeaks() {
    EXPECT_EQ(fake_->live_arenas(), 0);
    EXPECT_EQ(fake_->allocated_bytes(), 0u);
  }

  static std::string* path_;
  std::unique_ptr<MappedFile> file_;
  FileSource source_;
  ScopedFd direct_fd_;  // AddDirectFd's
  std::string why_not_direct_;
  std::unique_ptr<Device> device_;
  FaultInjectingFakeDevice* fake_ = nullptr;
  Layout layout_;
};

std::string* StagingPipelineTest::path_ = nullptr;

TEST_P(StagingPipelineTest, ByteIdenticalAtEveryOffset) {
  auto pipeline = NewPipeline(NewReader());
  ASSERT_NE(pipeline, nullptr);
  std::vector<std::pair<uint64_t, uint64_t>> progress;
  StagingStats stats;
  auto arena = pipeline->Load(
      layout_.arena_size, source_, layout_.ranges, nullptr,
      [&](uint64_t done, uint64_t total) {
        progress.push_back({done, total});
      },
      &stats);
  ASSERT_TRUE(arena.ok()) << arena.status();
  {
    auto opened = Open(**arena);
    ASSERT_NE(opened, nullptr);
    ExpectArena(opened->host_data(), layout_);
  }
  uint64_t total = 0;
  for (const CopyRange& r : layout_.ranges) total += r.length;
  ASSERT_FALSE(progress.empty());
  EXPECT_EQ(progress.back().first, total);
  for (size_t i = 0; i < progress.size(); ++i) {
    EXPECT_EQ(progress[i].second, total);
    if (i > 0) {
      EXPECT_GT(progress[i].first, progress[i - 1].first);
    }
  }
  EXPECT_EQ(stats.bytes, total);
  EXPECT_EQ(stats.host_addressed, GetParam().in_place);
  if (GetParam().in_place) {
    // Straight into the arena: no staging memory, no copies.
    EXPECT_EQ(pipeline->staging_bytes(), 0u);
    EXPECT_EQ(stats.max_copies_in_flight, 0);
    EXPECT_EQ(fake_->copies_started(), 0u);
  } else {
    // Bounded memory: the ring, whatever the checkpoint size.
    EXPECT_EQ(pipeline->staging_bytes(), GetParam().chunk * GetParam().buffers);
    EXPECT_LE(stats.max_copies_in_flight, GetParam().buffers);
  }
  // In place too: as many chunks in flight as the ring has buffers.
  EXPECT_LE(stats.max_reads_in_flight, GetParam().buffers);
  // The exported handle opens in another process with the same bytes.
  auto handle = device_->ExportHandle(**arena);
  ASSERT_TRUE(handle.ok()) << handle.status();
  const ArenaHandle h = *handle;
  const Layout& l = layout_;
  const uint64_t size = (*arena)->size();
  EXPECT_EQ(testing::RunInChild([&] {
              auto opened = OpenArenaHandle(h, size, "");
              if (!opened.ok()) return 1;
              for (const CopyRange& r : l.ranges) {
                if (!RangeMatches((*opened)->host_data(), r)) return 2;
              }
              return 0;
            }),
            0);
  // Reused for a second load.
  auto again = pipeline->Load(layout_.arena_size, source_, layout_.ranges,
                              nullptr, nullptr);
  ASSERT_TRUE(again.ok()) << again.status();
  {
    auto opened = Open(**again);
    ASSERT_NE(opened, nullptr);
    ExpectArena(opened->host_data(), layout_);
  }
  arena->reset();
  again->reset();
  ExpectNoLeaks();
}

TEST_P(StagingPipelineTest, ReadErrorMidLoad) {
  FaultInjectingReader::Faults f;
  f.fail_read = 5;
  auto pipeline =
      NewPipeline(std::make_unique<FaultInjectingReader>(NewReader(), f));
  auto arena = pipeline->Load(layout_.arena_size, source_, layout_.ranges,
                              nullptr, nullptr);
  EXPECT_TRUE(absl::IsDataLoss(arena.status())) << arena.status();
  EXPECT_NE(arena.status().message().find(*path_), std::string::npos)
      << arena.status();
  EXPECT_NE(arena.status().message().find("injected read error"),
            std::string::npos);
  ExpectNoLeaks();
  EXPECT_EQ(pipeline->reader()->in_flight(), 0u);
  // The pipeline still works afterwards.
  ExpectLoadsTheLayout(pipeline.get());
}

TEST_P(StagingPipelineTest, ShortReadAndSubmitFailure) {
  {
    FaultInjectingReader::Faults f;
    f.short_read = 3;
    auto pipeline =
        NewPipeline(std::make_unique<FaultInjectingReader>(NewReader(), f));
    auto arena = pipeline->Load(layout_.arena_size, source_, layout_.ranges,
                                nullptr, nullptr);
    EXPECT_TRUE(absl::IsDataLoss(arena.status())) << arena.status();
    EXPECT_NE(arena.status().message().find("file ended"), std::string::npos)
        << arena.status();
  }
  {
    FaultInjectingReader::Faults f;
    f.fail_submit = 4;
    auto pipeline =
        NewPipeline(std::make_unique<FaultInjectingReader>(NewReader(), f));
    auto arena = pipeline->Load(layout_.arena_size, source_, layout_.ranges,
                                nullptr, nullptr);
    EXPECT_TRUE(absl::IsUnavailable(arena.status())) << arena.status();
  }
  ExpectNoLeaks();
}

TEST_P(StagingPipelineTest, CopyAndAllocationFailures) {
  auto pipeline = NewPipeline(NewReader());
  FaultInjectingFakeDevice::Faults f;
  f.fail_copy = fake_->copies_started() + 4;
  fake_->SetFaults(f);
  auto arena = pipeline->Load(layout_.arena_size, source_, layout_.ranges,
                              nullptr, nullptr);
  if (GetParam().in_place) {
    // No copies to fail: the bytes went straight into the arena.
    EXPECT_TRUE(arena.ok()) << arena.status();
    EXPECT_EQ(fake_->copies_started(), 0u);
    arena = absl::CancelledError("");
  } else {
    EXPECT_TRUE(absl::IsInternal(arena.status())) << arena.status();
    EXPECT_NE(arena.status().message().find("injected copy failure"),
              std::string::npos)
        << arena.status();
  }
  ExpectNoLeaks();

  FaultInjectingFakeDevice::Faults submit;
  submit.fail_copy_submit = 3;
  auto fresh = FaultInjectingFakeDevice::Create(FakeDevice::Options(), submit);
  ASSERT_TRUE(fresh.ok());
  {
    StagingOptions so;
    so.chunk_bytes = GetParam().chunk;
    so.num_buffers = GetParam().buffers;
    auto p = StagingPipeline::Create(fresh->get(), NewReader(), so);
    ASSERT_TRUE(p.ok());
    auto a = (*p)->Load(layout_.arena_size, source_, layout_.ranges, nullptr,
                        nullptr);
    EXPECT_TRUE(absl::IsInternal(a.status())) << a.status();
    EXPECT_NE(a.status().message().find("submitting copy"), std::string::npos);
  }
  EXPECT_EQ((*fresh)->live_arenas(), 0);

  f = FaultInjectingFakeDevice::Faults();
  f.fail_allocation = 1;
  f.fail_all_allocations = true;
  fake_->SetFaults(f);
  arena = pipeline->Load(layout_.arena_size, source_, layout_.ranges, nullptr,
                         nullptr);
  EXPECT_TRUE(absl::IsResourceExhausted(arena.status())) << arena.status();
  EXPECT_NE(arena.status().message().find("allocating"), std::string::npos);
  fake_->SetFaults(FaultInjectingFakeDevice::Faults());
  // Too big for the device.
  arena = pipeline->Load(1ull << 40, source_, layout_.ranges, nullptr, nullptr);
  EXPECT_TRUE(absl::IsResourceExhausted(arena.status())) << arena.status();
  ExpectNoLeaks();
  ExpectLoadsTheLayout(pipeline.get());
}

TEST_P(StagingPipelineTest, CancelMidLoad) {
  UseDevice(absl::Milliseconds(1));
  FaultInjectingReader::Faults f;
  f.submit_delay = absl::Microseconds(200);
  auto pipeline =
      NewPipeline(std::make_unique<FaultInjectingReader>(NewReader(2), f));
  CancellationToken cancel;
  uint64_t last = 0;
  auto arena = pipeline->Load(layout_.arena_size, source_, layout_.ranges,
                              &cancel, [&](uint64_t done, uint64_t total) {
                                last = done;
                                if (done > total / 4) cancel.Cancel();
                              });
  EXPECT_TRUE(absl::IsCancelled(arena.status())) << arena.status();
  EXPECT_NE(arena.status().message().find("cancelled after"),
            std::string::npos);
  EXPECT_LT(last, kFileSize);
  ExpectNoLeaks();
  EXPECT_EQ(pipeline->reader()->in_flight(), 0u);

  // Cancelled from another thread.
  CancellationToken other;
  std::thread canceller([&] {
    absl::SleepFor(absl::Milliseconds(2));
    other.Cancel();
  });
  arena = pipeline->Load(layout_.arena_size, source_, layout_.ranges, &other,
                         nullptr);
  canceller.join();
  // Small loads may win the race; either way nothing leaks.
  EXPECT_TRUE(arena.ok() || absl::IsCancelled(arena.status()))
      << arena.status();
  arena = absl::CancelledError("");
  ExpectNoLeaks();

  // Cancelled before it starts.
  CancellationToken early;
  early.Cancel();
  arena = pipeline->Load(layout_.arena_size, source_, layout_.ranges, &early,
                         nullptr);
  EXPECT_TRUE(absl::IsCancelled(arena.status()));
  ExpectNoLeaks();
}

TEST_P(StagingPipelineTest, GeneratorFailureMidRange) {
  auto pipeline = NewPipeline(NewReader());
  const uint64_t unit = 8;
  const uint64_t chunk = GetParam().chunk / unit * unit;
  int calls = 0;
  std::vector<CopyRange> ranges = {
      CopyRange::FromFile(0, 4096, 0),
      CopyRange::Generated(
          chunk * 3, unit,
          [&](uint64_t pos, uint64_t length, uint8_t* out) {
            if (++calls == 2) {
              return absl::DataLossError("injected conversion failure");
            }
            std::memset(out, 1, length);
            return absl::OkStatus();
          },
          4096)};
  auto arena =
      pipeline->Load(4096 + chunk * 3, source_, ranges, nullptr, nullptr);
  EXPECT_TRUE(absl::IsDataLoss(arena.status())) << arena.status();
  EXPECT_NE(arena.status().message().find("injected conversion failure"),
            std::string::npos)
      << arena.status();
  EXPECT_NE(arena.status().message().find("producing"), std::string::npos);
  EXPECT_EQ(calls, 2);  // stops at the first failure
  ExpectNoLeaks();
  EXPECT_EQ(pipeline->reader()->in_flight(), 0u);
  // Still usable.
  ExpectLoadsTheLayout(pipeline.get());
}

TEST_P(StagingPipelineTest, RejectsBadRanges) {
  auto pipeline = NewPipeline(NewReader());
  std::vector<CopyRange> past_file = {
      CopyRange::FromFile(kFileSize - 10, 11, 0)};
  auto a = pipeline->Load(100, source_, past_file, nullptr, nullptr);
  EXPECT_TRUE(absl::IsOutOfRange(a.status())) << a.status();
  std::vector<CopyRange> past_arena = {CopyRange::FromFile(0, 100, 50)};
  a = pipeline->Load(100, source_, past_arena, nullptr, nullptr);
  EXPECT_TRUE(absl::IsOutOfRange(a.status())) << a.status();
  FileSource no_fd = source_;
  no_fd.fd = -1;
  a = pipeline->Load(100, no_fd, {CopyRange::FromFile(0, 10, 0)}, nullptr,
                     nullptr);
  EXPECT_TRUE(absl::IsInvalidArgument(a.status())) << a.status();
  // Generated lengths must be whole units, and a unit must fit a chunk.
  auto fill = [](uint64_t, uint64_t, uint8_t*) { return absl::OkStatus(); };
  a = pipeline->Load(100, source_, {CopyRange::Generated(10, 4, fill, 0)},
                     nullptr, nullptr);
  EXPECT_TRUE(absl::IsInvalidArgument(a.status())) << a.status();
  const uint64_t huge_unit = GetParam().chunk + 1;
  a = pipeline->Load(huge_unit, source_,
                     {CopyRange::Generated(huge_unit, huge_unit, fill, 0)},
                     nullptr, nullptr);
  EXPECT_TRUE(absl::IsInvalidArgument(a.status())) << a.status();
  // Nothing to copy.
  a = pipeline->Load(0, source_, {}, nullptr, nullptr);
  EXPECT_TRUE(a.ok()) << a.status();
  a = absl::CancelledError("");
  ExpectNoLeaks();
  EXPECT_FALSE(
      StagingPipeline::Create(device_.get(), NewReader(), StagingOptions{0, 4})
          .ok());
}

TEST_P(StagingPipelineTest, ManyThreadsLoadingAtOnce) {
  constexpr int kThreads = 6;
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      auto pipeline = NewPipeline(NewReader(4));
      if (pipeline == nullptr) {
        ++bad;
        return;
      }
      for (int round = 0; round < 3; ++round) {
        auto arena = pipeline->Load(layout_.arena_size, source_, layout_.ranges,
                                    nullptr, nullptr);
        if (!arena.ok()) {
          ++bad;
          continue;
        }
        std::unique_ptr<OpenedArena> opened = Open(**arena);
        if (opened == nullptr) {
          ++bad;
          continue;
        }
        for (const CopyRange& r : layout_.ranges) {
          if (!RangeMatches(opened->host_data(), r)) ++bad;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
  ExpectNoLeaks();
}

// Drops a file's pages from the page cache (no privileges needed).
void Evict(int fd) {
  ASSERT_EQ(fdatasync(fd), 0);
  ASSERT_EQ(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
}

// Options with direct reads for every range of 64 KiB and up; `mode` on by
// default (no measuring first).
StagingOptions DirectOptions(const Param& p,
                             DirectIoMode mode = DirectIoMode::kOn) {
  StagingOptions o;
  o.chunk_bytes = p.chunk;
  o.num_buffers = p.buffers;
  o.direct_min_bytes = 64 << 10;
  o.request_bytes = 48 << 10;  // several requests per chunk
  o.direct_io = mode;
  return o;
}

// A file not in the page cache: the large ranges' aligned middles come
// through the O_DIRECT descriptor (heads and tails buffered, the ring's
// buffers registered), byte-identical at every offset; the warm file reads
// buffered.
TEST_P(StagingPipelineTest, DirectReadsOfAColdFile) {
  FileSource source = source_;
  if (!AddDirectFd(&source))
    GTEST_SKIP() << "O_DIRECT refused: " << why_not_direct_;
  auto pipeline = StagingPipeline::Create(device_.get(), NewReader(),
                                          DirectOptions(GetParam()));
  ASSERT_TRUE(pipeline.ok()) << pipeline.status();
  Evict(file_->fd());
  StagingStats stats;
  auto arena = (*pipeline)->Load(layout_.arena_size, source, layout_.ranges,
                                 nullptr, nullptr, &stats);
  ASSERT_TRUE(arena.ok()) << arena.status();
  {
    auto opened = Open(**arena);
    ASSERT_NE(opened, nullptr);
    ExpectArena(opened->host_data(), layout_);
  }
  // In place, the layout's arena offsets are not congruent with its file
  // offsets: everything buffered (InPlaceDirectWhereOffsetsAreCongruent).
  if (!GetParam().in_place) {
    EXPECT_GT(stats.direct_bytes, 0u);
  }
  EXPECT_LT(stats.direct_bytes, kFileSize);  // heads, tails, small ranges
  EXPECT_EQ(stats.direct_refused, 0);
  EXPECT_EQ(stats.request_bytes, 48u << 10);
  if (GetParam().backend == IoBackend::kIoUring && !GetParam().in_place) {
    EXPECT_TRUE((*pipeline)->reader()->buffers_registered())
        << (*pipeline)->reader()->reason();
  }
  // Now in the page cache: buffered.
  std::vector<uint8_t> all(kFileSize);
  ASSERT_EQ(pread(file_->fd(), all.data(), all.size(), 0),
            static_cast<ssize_t>(kFileSize));
  auto again = (*pipeline)->Load(layout_.arena_size, source, layout_.ranges,
                                 nullptr, nullptr, &stats);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(stats.direct_bytes, 0u);
  arena->reset();
  again->reset();
  ExpectNoLeaks();
}

// In place, a range whose arena offset is as misaligned as its file offset
// reads its aligned middle direct into the arena; one that is not reads
// buffered; both byte-identical.
TEST_P(StagingPipelineTest, InPlaceDirectWhereOffsetsAreCongruent) {
  if (!GetParam().in_place) GTEST_SKIP() << "the ring path";
  FileSource source = source_;
  if (!AddDirectFd(&source))
    GTEST_SKIP() << "O_DIRECT refused: " << why_not_direct_;
  const uint64_t a = source.direct_alignment;
  const std::vector<CopyRange> ranges = {
      CopyRange::FromFile(3 * a + 5, 2 << 20, a + 5),            // congruent
      CopyRange::FromFile(7, 1 << 20, (2 << 20) + 2 * a + 100),  // not
  };
  const uint64_t arena_size = (3 << 20) + 3 * a;
  auto pipeline = StagingPipeline::Create(device_.get(), NewReader(),
                                          DirectOptions(GetParam()));
  ASSERT_TRUE(pipeline.ok()) << pipeline.status();
  Evict(file_->fd());
  StagingStats stats;
  auto arena =
      (*pipeline)->Load(arena_size, source, ranges, nullptr, nullptr, &stats);
  ASSERT_TRUE(arena.ok()) << arena.status();
  EXPECT_TRUE(stats.host_addressed);
  auto opened = Open(**arena);
  ASSERT_NE(opened, nullptr);
  for (const CopyRange& r : ranges) {
    EXPECT_TRUE(RangeMatches(opened->host_data(), r))
        << "range at arena offset " << r.arena_offset;
  }
  // The congruent range's aligned middle, nothing of the other.
  EXPECT_GT(stats.direct_bytes, (2u << 20) - 2 * a);
  EXPECT_LE(stats.direct_bytes, 2u << 20);
  EXPECT_EQ(stats.direct_refused, 0);
  opened.reset();
  arena->reset();
  ExpectNoLeaks();
}

// The file shrinks under a direct load: a short read, DATA_LOSS naming it.
TEST_P(StagingPipelineTest, DirectReadOfATruncatedFile) {
  std::string path = WritePatternFile("truncated", kFileSize, kSeed);
  auto file = MappedFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  DirectFd direct = OpenDirectIo((*file)->fd(), path);
  if (!direct.fd.valid()) {
    unlink(path.c_str());
    GTEST_SKIP() << "O_DIRECT refused: " << direct.why_not;
  }
  FileSource source;
  source.fd = (*file)->fd();
  source.direct_fd = direct.fd.get();
  source.direct_alignment = direct.alignment;
  source.size = kFileSize;
  source.name = path;
  ASSERT_EQ(truncate(path.c_str(), kFileSize / 2), 0);
  auto pipeline = StagingPipeline::Create(device_.get(), NewReader(),
                                          DirectOptions(GetParam()));
  ASSERT_TRUE(pipeline.ok());
  auto arena = (*pipeline)->Load(kFileSize, source,
                                 {CopyRange::FromFile(0, kFileSize, 0)},
                                 nullptr, nullptr);
  EXPECT_TRUE(absl::IsDataLoss(arena.status())) << arena.status();
  EXPECT_NE(arena.status().message().find(path), std::string::npos)
      << arena.status();
  EXPECT_NE(arena.status().message().find("file ended"), std::string::npos)
      << arena.status();
  unlink(path.c_str());
  ExpectNoLeaks();
}

// --direct_io=auto: the first cold loads of a device measure it (direct and
// buffered windows, byte-identical either way) until the device is decided,
// after which its uncached chunks read the way that won, with no measuring.
TEST_P(StagingPipelineTest, AutoMeasuresTheDeviceThenReadsTheFasterWay) {
  FileSource source = source_;
  if (!AddDirectFd(&source))
    GTEST_SKIP() << "O_DIRECT refused: " << why_not_direct_;
  StagingOptions o = DirectOptions(GetParam(), DirectIoMode::kAuto);
  o.direct_probe_window_bytes = 256 << 10;
  auto pipeline = StagingPipeline::Create(device_.get(), NewReader(), o);
  ASSERT_TRUE(pipeline.ok()) << pipeline.status();
  struct stat st;
  ASSERT_EQ(fstat(file_->fd(), &st), 0);
  const std::string on_device =
      absl::StrCat(" on device ", major(st.st_dev), ":", minor(st.st_dev));
  std::string summary;
  auto decided = [&] {
    summary = DirectIoSummary(DirectIoMode::kAuto);
    return summary.find("direct" + on_device) != std::string::npos ||
           summary.find("buffered" + on_device) != std::string::npos;
  };
  // Congruent in place too: every chunk could read direct.
  const std::vector<CopyRange> whole = {CopyRange::FromFile(0, kFileSize, 0)};
  auto load = [&](StagingStats* stats) {
    Evict(file_->fd());
    auto arena =
        (*pipeline)->Load(kFileSize, source, whole, nullptr, nullptr, stats);
    ASSERT_TRUE(arena.ok()) << arena.status();
    auto opened = Open(**arena);
    ASSERT_NE(opened, nullptr);
    EXPECT_EQ(FirstPatternMismatch(opened->host_data(), kFileSize, 0, kSeed),
              -1);
    EXPECT_EQ(stats->direct_refused, 0);
  };
  // An earlier instance of this test may have decided the device already.
  const bool decided_before = decided();
  uint64_t probed = 0;
  for (int i = 0; i < 20 && !decided(); ++i) {
    StagingStats stats;
    load(&stats);
    probed += stats.probe_bytes;
  }
  ASSERT_TRUE(decided()) << summary;
  // Two windows at least (the last two are skipped when the first two
  // differ twice over).
  if (!decided_before) {
    EXPECT_GE(probed, 2u * o.direct_probe_window_bytes);
  }
  const bool direct_won =
      summary.find("direct" + on_device) != std::string::npos;
  StagingStats stats;
  load(&stats);
  EXPECT_EQ(stats.probe_bytes, 0u);
  if (direct_won) {
    EXPECT_GT(stats.direct_bytes, kFileSize / 2) << summary;
  } else {
    EXPECT_EQ(stats.direct_bytes, 0u) << summary;
  }
  ExpectNoLeaks();
}

// While another Run measures the device (here the test holds its probe, or
// the device is decided), a Run's uncached reads are counted for that probe:
// a window they overlap is measured again (DirectIoProbe).
TEST_P(StagingPipelineTest, AutoCountsUncachedReadsForAnotherRunsProbe) {
  FileSource source = source_;
  if (!AddDirectFd(&source))
    GTEST_SKIP() << "O_DIRECT refused: " << why_not_direct_;
  StagingOptions o = DirectOptions(GetParam(), DirectIoMode::kAuto);
  auto pipeline = StagingPipeline::Create(device_.get(), NewReader(), o);
  ASSERT_TRUE(pipeline.ok()) << pipeline.status();
  struct stat st;
  ASSERT_EQ(fstat(source.direct_fd, &st), 0);
  const uint64_t dev = static_cast<uint64_t>(st.st_dev);
  DirectIoPlan held = PlanDirectIo(dev, o.direct_probe_window_bytes);
  const std::vector<CopyRange> whole = {CopyRange::FromFile(0, kFileSize, 0)};
  const uint64_t before = UnmeasuredReads(dev);
  Evict(file_->fd());
  StagingStats stats;
  auto arena =
      (*pipeline)->Load(kFileSize, source, whole, nullptr, nullptr, &stats);
  ASSERT_TRUE(arena.ok()) << arena.status();
  EXPECT_EQ(stats.probe_bytes, 0u);  // not this Run's to measure
  EXPECT_GE(UnmeasuredReads(dev), before + 1);
  // In the page cache (direct reads left it out: read it buffered), the
  // device reads nothing and nothing is counted.
  std::vector<uint8_t> all(kFileSize);
  ASSERT_EQ(pread(file_->fd(), all.data(), all.size(), 0),
            static_cast<ssize_t>(kFileSize));
  const uint64_t cached = UnmeasuredReads(dev);
  auto again =
      (*pipeline)->Load(kFileSize, source, whole, nullptr, nullptr, &stats);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(UnmeasuredReads(dev), cached);
  ReturnDirectIoProbe(dev, std::move(held.probe));
  arena->reset();
  again->reset();
  ExpectNoLeaks();
}

// --direct_io=off: a direct descriptor is never used.
TEST_P(StagingPipelineTest, DirectIoOffReadsBuffered) {
  FileSource source = source_;
  if (!AddDirectFd(&source))
    GTEST_SKIP() << "O_DIRECT refused: " << why_not_direct_;
  StagingOptions o = DirectOptions(GetParam(), DirectIoMode::kOff);
  auto pipeline = StagingPipeline::Create(device_.get(), NewReader(), o);
  ASSERT_TRUE(pipeline.ok()) << pipeline.status();
  Evict(file_->fd());
  StagingStats stats;
  auto arena = (*pipeline)->Load(kFileSize, source,
                                 {CopyRange::FromFile(0, kFileSize, 0)},
                                 nullptr, nullptr, &stats);
  ASSERT_TRUE(arena.ok()) << arena.status();
  EXPECT_EQ(stats.direct_bytes, 0u);
  EXPECT_EQ(stats.probe_bytes, 0u);
  auto opened = Open(**arena);
  ASSERT_NE(opened, nullptr);
  EXPECT_EQ(FirstPatternMismatch(opened->host_data(), kFileSize, 0, kSeed), -1);
  opened.reset();
  arena->reset();
  ExpectNoLeaks();
}

// One Run over two files (a model directory's shards), their ranges
// interleaved in the arena; a range naming a third file is refused.
TEST_P(StagingPipelineTest, SeveralFilesInOneRun) {
  constexpr uint32_t kOtherSeed = 7;
  constexpr uint64_t kOtherSize = (2 << 20) + 999;
  std::string other_path = WritePatternFile("other", kOtherSize, kOtherSeed);
  auto other = MappedFile::Open(other_path);
  ASSERT_TRUE(other.ok()) << other.status();
  std::vector<FileSource> files(2);
  files[0] = source_;
  files[1].fd = (*other)->fd();
  files[1].size = kOtherSize;
  files[1].name = other_path;
  DirectFd direct = OpenDirectIo((*other)->fd(), other_path);
  if (direct.fd.valid()) {  // one file direct-capable, one not
    files[1].direct_fd = direct.fd.get();
    files[1].direct_alignment = direct.alignment;
    Evict((*other)->fd());
  }
  std::vector<CopyRange> ranges = {
      CopyRange::FromFile(10, 1 << 20, 0, 1),
      CopyRange::FromFile(4, (1 << 20) + 5, 1 << 20, 0),
      CopyRange::FromFile((1 << 20) + 3, kOtherSize - (1 << 20) - 3,
                          (2 << 20) + 5, 1),
      CopyRange::FromFile(kFileSize - 77, 77, (3 << 20) + 10000, 0)};
  const uint64_t arena_size = (3 << 20) + 10077;
  auto pipeline = StagingPipeline::Create(device_.get(), NewReader(),
                                          DirectOptions(GetParam()));
  ASSERT_TRUE(pipeline.ok());
  StagingStats stats;
  auto arena =
      (*pipeline)->Load(arena_size, files, ranges, nullptr, nullptr, &stats);
  ASSERT_TRUE(arena.ok()) << arena.status();
  auto opened = Open(**arena);
  ASSERT_NE(opened, nullptr);
  for (const CopyRange& r : ranges) {
    uint32_t seed = r.file_index == 0 ? kSeed : kOtherSeed;
    EXPECT_EQ(FirstPatternMismatch(opened->host_data() + r.arena_offset,
                                   r.length, r.file_offset, seed),
              -1)
        << "range at arena offset " << r.arena_offset;
  }
  uint64_t total = 0;
  for (const CopyRange& r : ranges) total += r.length;
  EXPECT_EQ(stats.bytes, total);
  opened.reset();
  arena->reset();
  ranges.push_back(CopyRange::FromFile(0, 1, 0, 2));
  auto bad = (*pipeline)->Load(arena_size, files, ranges, nullptr, nullptr);
  EXPECT_TRUE(absl::IsInvalidArgument(bad.status())) << bad.status();
  unlink(other_path.c_str());
  ExpectNoLeaks();
}

// The daemon's fake GPU (a plain FakeDevice) is host-addressed, unless its
// copies are slowed down on purpose; a load goes straight into the arena.
TEST(HostAddressedFakeGpuTest, LoadsStraightIntoTheArena) {
  const std::string path = WritePatternFile("in_place", kFileSize, kSeed);
  auto file = MappedFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  FileSource source;
  source.fd = (*file)->fd();
  source.size = kFileSize;
  source.name = path;
  FakeDevice::Options slow;
  slow.copy_delay = absl::Microseconds(1);
  for (FakeDevice::Options o : {FakeDevice::Options(), slow}) {
    const bool in_place = o.copy_delay == absl::ZeroDuration();
    auto device = FakeDevice::Create(o);
    ASSERT_TRUE(device.ok()) << device.status();
    auto reader = CreateReader(ReaderOptions());
    ASSERT_TRUE(reader.ok()) << reader.status();
    auto pipeline = StagingPipeline::Create(device->get(), std::move(*reader),
                                            StagingOptions());
    ASSERT_TRUE(pipeline.ok()) << pipeline.status();
    const Layout layout = MakeLayout(kFileSize, StagingOptions().chunk_bytes);
    StagingStats stats;
    auto arena = (*pipeline)->Load(layout.arena_size, source, layout.ranges,
                                   nullptr, nullptr, &stats);
    ASSERT_TRUE(arena.ok()) << arena.status();
    EXPECT_EQ(stats.host_addressed, in_place);
    EXPECT_EQ((*device)->HostAddress(**arena) != nullptr, in_place);
    EXPECT_EQ((*pipeline)->staging_bytes() == 0, in_place);
    ExpectArena(static_cast<const uint8_t*>((*arena)->device_pointer()),
                layout);
  }
  unlink(path.c_str());
}

std::string Label(const ::testing::TestParamInfo<Param>& info) {
  return info.param.label;
}

INSTANTIATE_TEST_SUITE_P(
    All, StagingPipelineTest,
    ::testing::Values(
        Param{"fake_uring_64k_x3", IoBackend::kIoUring, 64 << 10, 3},
        Param{"fake_pread_64k_x3", IoBackend::kPread, 64 << 10, 3},
        Param{"fake_uring_1m_x1", IoBackend::kIoUring, 1 << 20, 1},
        Param{"fake_pread_odd_x4", IoBackend::kPread, 100003, 4},
        Param{"fake_uring_1m_x2", IoBackend::kIoUring, 1 << 20, 2},
        Param{"in_place_uring_64k", IoBackend::kIoUring, 64 << 10, 3, true},
        Param{"in_place_pread_odd", IoBackend::kPread, 100003, 4, true},
        Param{"in_place_uring_1m", IoBackend::kIoUring, 1 << 20, 1, true}),
    Label);

}  // namespace
}  // namespace weightd
