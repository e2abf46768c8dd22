// One suite for every Reader backend.
#include "loader/io/reader.h"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "loader/io/direct_io.h"
#include "loader/io/fault_injecting_reader.h"
#include "loader/io/io_uring_reader.h"
#include "loader/io/mapped_file.h"
#include "loader/io/pread_reader.h"
#include "loader/io/reader_factory.h"
#include "loader/io/test_util.h"

namespace weightd {
namespace {

using testing::FirstPatternMismatch;
using testing::WritePatternFile;

struct Backend {
  std::string label;
  IoBackend backend;
  size_t max_request_bytes;
  int queue_depth;
  bool wrapped;  // behind a FaultInjectingReader with no faults
};

void PrintTo(const Backend& b, std::ostream* os) { *os << b.label; }

std::string BackendLabel(const ::testing::TestParamInfo<Backend>& info) {
  return info.param.label;
}

constexpr uint32_t kSeed = 11;

class ReaderTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    if (GetParam().backend == IoBackend::kIoUring) {
      absl::Status probe = IoUringReader::Probe();
      if (!probe.ok()) {
        GTEST_SKIP() << "io_uring unavailable here: " << probe;
      }
    }
    reader_ = MakeReader();
    ASSERT_NE(reader_, nullptr);
    path_ = WritePatternFile("reader", kFileSize, kSeed);
    auto file = MappedFile::Open(path_);
    ASSERT_TRUE(file.ok()) << file.status();
    file_ = std::move(*file);
  }
  void TearDown() override {
    reader_.reset();
    if (!path_.empty()) unlink(path_.c_str());
  }

  std::unique_ptr<Reader> MakeReader() {
    ReaderOptions options;
    options.backend = GetParam().backend;
    options.queue_depth = GetParam().queue_depth;
    options.max_request_bytes = GetParam().max_request_bytes;
    options.pread_threads = 3;
    auto reader = CreateReader(options);
    EXPECT_TRUE(reader.ok()) << reader.status();
    if (!reader.ok()) return nullptr;
    if (GetParam().wrapped) {
      return std::make_unique<FaultInjectingReader>(
          std::move(*reader), FaultInjectingReader::Faults());
    }
    return std::move(*reader);
  }

  static constexpr uint64_t kFileSize = (3 << 20) + 12345;
  std::unique_ptr<Reader> reader_;
  std::string path_;
  std::unique_ptr<MappedFile> file_;
};

TEST_P(ReaderTest, NameAndReason) {
  EXPECT_EQ(reader_->name(),
            GetParam().backend == IoBackend::kIoUring ? "io_uring" : "pread");
  EXPECT_FALSE(reader_->reason().empty());
  EXPECT_EQ(reader_->queue_depth(), GetParam().queue_depth);
  EXPECT_EQ(reader_->in_flight(), 0u);
}

TEST_P(ReaderTest, ReadsWholeFileWithManyInFlight) {
  std::vector<uint8_t> out(kFileSize, 0);
  const size_t chunk = 64 * 1024 + 7;  // odd size: unaligned offsets
  std::map<uint64_t, std::pair<uint64_t, size_t>> pending;  // tag -> range
  uint64_t next = 0;
  uint64_t tag = 100;
  size_t max_in_flight = 0;
  std::vector<ReadResult> results;
  while (next < kFileSize || reader_->in_flight() > 0) {
    while (next < kFileSize &&
           reader_->in_flight() < static_cast<size_t>(reader_->queue_depth())) {
      ReadRequest r;
      r.fd = file_->fd();
      r.offset = next;
      r.length =
          static_cast<size_t>(std::min<uint64_t>(chunk, kFileSize - next));
      r.buffer = out.data() + next;
      r.tag = tag;
      ASSERT_TRUE(reader_->Submit(r).ok());
      pending[tag++] = {r.offset, r.length};
      next += r.length;
    }
    max_in_flight = std::max(max_in_flight, reader_->in_flight());
    results.clear();
    ASSERT_TRUE(reader_->Wait(1, &results).ok());
    ASSERT_FALSE(results.empty());
    for (const ReadResult& r : results) {
      ASSERT_TRUE(r.status.ok()) << r.status;
      auto it = pending.find(r.tag);
      ASSERT_NE(it, pending.end()) << "unknown tag " << r.tag;
      EXPECT_EQ(r.bytes_read, it->second.second);
      pending.erase(it);
    }
  }
  EXPECT_TRUE(pending.empty());
  EXPECT_EQ(max_in_flight, static_cast<size_t>(GetParam().queue_depth));
  EXPECT_EQ(FirstPatternMismatch(out.data(), kFileSize, 0, kSeed), -1);
}

TEST_P(ReaderTest, ReadFullyLargeRange) {
  std::vector<uint8_t> out(2 << 20);
  ASSERT_TRUE(
      ReadFully(reader_.get(), file_->fd(), 333, out.data(), out.size()).ok());
  EXPECT_EQ(FirstPatternMismatch(out.data(), out.size(), 333, kSeed), -1);
}

TEST_P(ReaderTest, EndOfFileGivesShortResult) {
  std::vector<uint8_t> out(10000);
  ReadRequest r;
  r.fd = file_->fd();
  r.offset = kFileSize - 1000;
  r.buffer = out.data();
  r.length = out.size();
  r.tag = 5;
  std::vector<ReadResult> results;
  ASSERT_TRUE(reader_->Submit(r).ok());
  ASSERT_TRUE(reader_->Wait(1, &results).ok());
  r.offset = kFileSize + 50;  // wholly past the end
  r.tag = 6;
  ASSERT_TRUE(reader_->Submit(r).ok());
  ASSERT_TRUE(reader_->Wait(1, &results).ok());
  ASSERT_EQ(results.size(), 2u);
  for (const ReadResult& res : results) {
    EXPECT_TRUE(res.status.ok());
    EXPECT_EQ(res.bytes_read, res.tag == 5 ? 1000u : 0u);
  }
  EXPECT_EQ(FirstPatternMismatch(out.data(), 1000, kFileSize - 1000, kSeed),
            -1);
  absl::Status s =
      ReadFully(reader_.get(), file_->fd(), kFileSize - 10, out.data(), 20);
  EXPECT_TRUE(absl::IsOutOfRange(s)) << s;
}

TEST_P(ReaderTest, ZeroLengthRead) {
  ReadRequest r;
  r.fd = file_->fd();
  r.offset = 10;
  r.length = 0;
  r.tag = 9;
  ASSERT_TRUE(reader_->Submit(r).ok());
  std::vector<ReadResult> results;
  ASSERT_TRUE(reader_->Wait(1, &results).ok());
  ASSERT_EQ(results.size(), 1u);
  EXPECT_TRUE(results[0].status.ok());
  EXPECT_EQ(results[0].bytes_read, 0u);
}

TEST_P(ReaderTest, QueueFullAndBadRequests) {
  std::vector<uint8_t> out(4096 * GetParam().queue_depth);
  for (int i = 0; i < reader_->queue_depth(); ++i) {
    ReadRequest r;
    r.fd = file_->fd();
    r.offset = 4096 * i;
    r.buffer = out.data() + 4096 * i;
    r.length = 4096;
    r.tag = i;
    ASSERT_TRUE(reader_->Submit(r).ok());
  }
  ReadRequest extra;
  extra.fd = file_->fd();
  extra.buffer = out.data();
  extra.length = 1;
  absl::Status s = reader_->Submit(extra);
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
  std::vector<ReadResult> results;
  ASSERT_TRUE(reader_->Wait(reader_->queue_depth(), &results).ok());
  EXPECT_EQ(results.size(), static_cast<size_t>(reader_->queue_depth()));
  EXPECT_EQ(reader_->in_flight(), 0u);
  EXPECT_EQ(FirstPatternMismatch(out.data(), out.size(), 0, kSeed), -1);

  ReadRequest bad;
  bad.fd = -1;
  bad.buffer = out.data();
  bad.length = 1;
  EXPECT_TRUE(absl::IsInvalidArgument(reader_->Submit(bad)));
  bad.fd = file_->fd();
  bad.buffer = nullptr;
  EXPECT_TRUE(absl::IsInvalidArgument(reader_->Submit(bad)));
  bad.buffer = out.data();
  bad.offset = ~0ull;
  EXPECT_TRUE(absl::IsInvalidArgument(reader_->Submit(bad)));
}

TEST_P(ReaderTest, FailedReadNamesTheError) {
  // A directory descriptor: read() fails with EISDIR.
  int dir = open("/", O_RDONLY | O_DIRECTORY);
  ASSERT_GE(dir, 0);
  std::vector<uint8_t> out(100);
  ReadRequest r;
  r.fd = dir;
  r.buffer = out.data();
  r.length = out.size();
  r.tag = 77;
  ASSERT_TRUE(reader_->Submit(r).ok());
  std::vector<ReadResult> results;
  ASSERT_TRUE(reader_->Wait(1, &results).ok());
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].tag, 77u);
  EXPECT_FALSE(results[0].status.ok());
  EXPECT_NE(results[0].status.message().find("directory"), std::string::npos)
      << results[0].status;
  close(dir);
}

TEST_P(ReaderTest, RegisteredBuffers) {
  const size_t kBuf = 256 * 1024;
  void* a = nullptr;
  void* b = nullptr;
  ASSERT_EQ(posix_memalign(&a, 4096, kBuf), 0);
  ASSERT_EQ(posix_memalign(&b, 4096, kBuf), 0);
  iovec iov[2] = {{a, kBuf}, {b, kBuf}};
  ASSERT_TRUE(reader_->RegisterBuffers(iov).ok());
  for (int round = 0; round < 4; ++round) {
    ReadRequest r;
    r.fd = file_->fd();
    r.offset = round * kBuf + 17;
    r.buffer = round % 2 ? b : a;
    r.length = kBuf;
    r.tag = round;
    ASSERT_TRUE(reader_->Submit(r).ok());
    std::vector<ReadResult> results;
    ASSERT_TRUE(reader_->Wait(1, &results).ok());
    ASSERT_EQ(results.size(), 1u);
    ASSERT_TRUE(results[0].status.ok()) << results[0].status;
    EXPECT_EQ(FirstPatternMismatch(static_cast<uint8_t*>(r.buffer), kBuf,
                                   r.offset, kSeed),
              -1);
  }
  // Part of a registered buffer, and memory outside any.
  std::vector<uint8_t> other(1000);
  ReadRequest r;
  r.fd = file_->fd();
  r.offset = 5;
  r.buffer = static_cast<uint8_t*>(a) + 100;
  r.length = 1000;
  r.tag = 1;
  std::vector<ReadResult> results;
  ASSERT_TRUE(reader_->Submit(r).ok());
  ASSERT_TRUE(reader_->Wait(1, &results).ok());
  r.buffer = other.data();
  r.tag = 2;
  ASSERT_TRUE(reader_->Submit(r).ok());
  ASSERT_TRUE(reader_->Wait(1, &results).ok());
  EXPECT_EQ(
      FirstPatternMismatch(static_cast<uint8_t*>(a) + 100, 1000, 5, kSeed), -1);
  EXPECT_EQ(FirstPatternMismatch(other.data(), 1000, 5, kSeed), -1);
  reader_->UnregisterBuffers();
  EXPECT_FALSE(reader_->buffers_registered());
  free(a);
  free(b);
}

TEST_P(ReaderTest, DirectReadsWhenAligned) {
  auto direct = file_->OpenDirect();
  if (!direct.ok())
    GTEST_SKIP() << "O_DIRECT refused here: " << direct.status();
  void* buf = nullptr;
  ASSERT_EQ(posix_memalign(&buf, 4096, 1 << 20), 0);
  // Aligned: goes through the O_DIRECT descriptor. Unaligned: buffered.
  for (uint64_t offset : {uint64_t{0}, uint64_t{8192}, uint64_t{100}}) {
    ReadRequest r;
    r.fd = file_->fd();
    r.direct_fd = direct->get();
    r.offset = offset;
    r.buffer = buf;
    r.length = 1 << 20;
    r.tag = offset;
    EXPECT_EQ(CanReadDirect(r), offset % 4096 == 0);
    ASSERT_TRUE(reader_->Submit(r).ok());
    std::vector<ReadResult> results;
    ASSERT_TRUE(reader_->Wait(1, &results).ok());
    ASSERT_TRUE(results[0].status.ok()) << results[0].status;
    EXPECT_EQ(results[0].bytes_read, size_t{1} << 20);
    EXPECT_EQ(FirstPatternMismatch(static_cast<uint8_t*>(buf), 1 << 20, offset,
                                   kSeed),
              -1);
  }
  // The aligned tail of the file: O_DIRECT returns the short remainder.
  uint64_t tail = kFileSize / 4096 * 4096;
  ReadRequest r;
  r.fd = file_->fd();
  r.direct_fd = direct->get();
  r.offset = tail;
  r.buffer = buf;
  r.length = 1 << 20;
  ASSERT_TRUE(reader_->Submit(r).ok());
  std::vector<ReadResult> results;
  ASSERT_TRUE(reader_->Wait(1, &results).ok());
  ASSERT_TRUE(results[0].status.ok()) << results[0].status;
  EXPECT_EQ(results[0].bytes_read, kFileSize - tail);
  free(buf);
}

// The aligned middle through O_DIRECT, an unaligned head and tail buffered,
// all in one request: the buffer is as misaligned as the file offset.
TEST_P(ReaderTest, DirectMiddleBufferedHeadAndTail) {
  DirectFd direct = OpenDirectIo(file_->fd(), path_);
  if (!direct.fd.valid())
    GTEST_SKIP() << "O_DIRECT refused: " << direct.why_not;
  const uint64_t a = direct.alignment;
  void* raw = nullptr;
  ASSERT_EQ(posix_memalign(&raw, a, 2 << 20), 0);
  uint8_t* base = static_cast<uint8_t*>(raw);
  struct Case {
    uint64_t offset, length;
    bool direct;
  };
  const Case cases[] = {
      {100, (1 << 20) + 333, true},  // head, middle, tail
      {a, 1 << 20, true},            // aligned both ends
      {a + 1, a, false},             // no whole block inside: buffered
      {(kFileSize - (1 << 20)) / a * a + 7, kFileSize, true},  // EOF inside
  };
  for (const Case& c : cases) {
    ReadRequest r;
    r.fd = file_->fd();
    r.direct_fd = direct.fd.get();
    r.direct_alignment = direct.alignment;
    r.offset = c.offset;
    r.buffer = base + c.offset % a;
    r.length = static_cast<size_t>(
        std::min<uint64_t>(c.length, (2 << 20) - c.offset % a));
    r.tag = c.offset;
    EXPECT_EQ(CanReadDirect(r), c.direct) << c.offset;
    std::memset(base, 0, 2 << 20);
    ASSERT_TRUE(reader_->Submit(r).ok());
    std::vector<ReadResult> results;
    ASSERT_TRUE(reader_->Wait(1, &results).ok());
    ASSERT_EQ(results.size(), 1u);
    ASSERT_TRUE(results[0].status.ok()) << results[0].status;
    const uint64_t want = std::min<uint64_t>(r.length, kFileSize - c.offset);
    EXPECT_EQ(results[0].bytes_read, want) << c.offset;
    EXPECT_EQ(results[0].direct_bytes > 0, c.direct) << c.offset;
    EXPECT_LE(results[0].direct_bytes, want);
    EXPECT_EQ(FirstPatternMismatch(static_cast<uint8_t*>(r.buffer), want,
                                   c.offset, kSeed),
              -1)
        << c.offset;
  }
  free(raw);
}

// Pieces of one request are split by the request's own cap too.
TEST(SplitReadTest, HeadMiddleTailAndCaps) {
  alignas(4096) static uint8_t buf[64 << 10];
  ReadRequest r;
  r.fd = 3;
  r.direct_fd = 4;
  r.offset = 4096 * 10 + 100;
  r.buffer = buf + 100;
  r.length = 5 * 4096 + 50;
  std::vector<ReadPiece> pieces;
  SplitRead(r, 8192, &pieces);
  // head 3996, middle 4*4096 in 2 pieces, tail 4096+50-(3996)... in order.
  ASSERT_GE(pieces.size(), 4u);
  EXPECT_FALSE(pieces.front().direct);
  EXPECT_EQ(pieces.front().length, 4096u - 100);
  uint64_t at = r.offset, direct = 0;
  for (const ReadPiece& p : pieces) {
    EXPECT_EQ(p.offset, at);
    EXPECT_EQ(p.buffer, buf + 100 + (at - r.offset));
    EXPECT_LE(p.length, 8192u);
    if (p.direct) {
      EXPECT_EQ(p.offset % 4096, 0u);
      EXPECT_EQ(p.length % 4096, 0u);
      direct += p.length;
    }
    at += p.length;
  }
  EXPECT_EQ(at, r.offset + r.length);
  EXPECT_EQ(direct, 4u * 4096);
  EXPECT_FALSE(pieces.back().direct);
  // Misaligned differently from the offset: all buffered.
  r.buffer = buf + 101;
  pieces.clear();
  SplitRead(r, 0, &pieces);
  ASSERT_EQ(pieces.size(), 1u);
  EXPECT_FALSE(pieces[0].direct);
  EXPECT_FALSE(CanReadDirect(r));
  // The request's cap below the reader's.
  r.buffer = buf + 100;
  r.max_piece_bytes = 4096;
  EXPECT_EQ(EffectiveMaxPiece(r, 8192), 4096u);
  EXPECT_EQ(EffectiveMaxPiece(r, 0), 4096u);
  r.direct_alignment = 3;
  EXPECT_FALSE(ValidateReadRequest(r).ok());
}

TEST_P(ReaderTest, DestroyWithReadsInFlight) {
  std::vector<uint8_t> out(kFileSize);
  for (int i = 0; i < reader_->queue_depth(); ++i) {
    ReadRequest r;
    r.fd = file_->fd();
    r.offset = 64 * 1024 * i;
    r.buffer = out.data() + 64 * 1024 * i;  // disjoint: no racing writes
    r.length = 64 * 1024;
    ASSERT_TRUE(reader_->Submit(r).ok());
  }
  reader_.reset();  // waits for the reads; no crash, no leak
}

TEST_P(ReaderTest, FaultInjection) {
  FaultInjectingReader::Faults faults;
  faults.fail_read = 2;
  faults.short_read = 3;
  faults.fail_submit = 4;
  FaultInjectingReader reader(MakeReader(), faults);
  std::vector<uint8_t> out(4 * 1000);
  std::vector<ReadResult> results;
  for (int i = 0; i < 4; ++i) {
    ReadRequest r;
    r.fd = file_->fd();
    r.offset = 1000 * i;
    r.buffer = out.data() + 1000 * i;
    r.length = 1000;
    r.tag = i + 1;
    absl::Status s = reader.Submit(r);
    if (i == 3) {
      EXPECT_TRUE(absl::IsUnavailable(s)) << s;
    } else {
      EXPECT_TRUE(s.ok()) << s;
      EXPECT_EQ(reader.in_flight(), 1u);
      ASSERT_TRUE(reader.Wait(1, &results).ok());
    }
  }
  EXPECT_EQ(reader.in_flight(), 0u);
  ASSERT_EQ(results.size(), 3u);
  for (const ReadResult& r : results) {
    switch (r.tag) {
      case 1:
        EXPECT_TRUE(r.status.ok());
        EXPECT_EQ(r.bytes_read, 1000u);
        break;
      case 2:
        EXPECT_TRUE(absl::IsDataLoss(r.status)) << r.status;
        break;
      case 3:
        EXPECT_TRUE(r.status.ok());
        EXPECT_EQ(r.bytes_read, 500u);
        break;
      default:
        ADD_FAILURE() << "tag " << r.tag;
    }
  }
  EXPECT_EQ(reader.submits(), 4u);
}

INSTANTIATE_TEST_SUITE_P(
    Backends, ReaderTest,
    ::testing::Values(
        Backend{"io_uring", IoBackend::kIoUring, 0, 8, false},
        Backend{"io_uring_split", IoBackend::kIoUring, 4096, 4, false},
        Backend{"io_uring_qd1", IoBackend::kIoUring, 0, 1, false},
        Backend{"pread", IoBackend::kPread, 0, 8, false},
        Backend{"pread_split", IoBackend::kPread, 4096, 4, false},
        Backend{"pread_qd1", IoBackend::kPread, 0, 1, false},
        Backend{"io_uring_wrapped", IoBackend::kIoUring, 0, 8, true},
        Backend{"pread_wrapped", IoBackend::kPread, 0, 8, true}),
    BackendLabel);

TEST(ReaderFactoryTest, ParsesBackends) {
  EXPECT_EQ(*ParseIoBackend("auto"), IoBackend::kAuto);
  EXPECT_EQ(*ParseIoBackend(""), IoBackend::kAuto);
  EXPECT_EQ(*ParseIoBackend("io_uring"), IoBackend::kIoUring);
  EXPECT_EQ(*ParseIoBackend("PREAD"), IoBackend::kPread);
  EXPECT_TRUE(absl::IsInvalidArgument(ParseIoBackend("aio").status()));
  EXPECT_STREQ(IoBackendName(IoBackend::kIoUring), "io_uring");
}

TEST(ReaderFactoryTest, AutoPicksIoUringWhereAllowedElsePread) {
  IoBackendChoice choice = ChooseIoBackend(IoBackend::kAuto);
  EXPECT_FALSE(choice.reason.empty());
  ReaderOptions options;
  auto reader = CreateReader(options);
  ASSERT_TRUE(reader.ok()) << reader.status();
  if (IoUringReader::Probe().ok()) {
    EXPECT_EQ((*reader)->name(), "io_uring");
  } else {
    EXPECT_EQ((*reader)->name(), "pread");
    EXPECT_NE((*reader)->reason().find("io_uring unavailable"),
              std::string::npos);
  }
  std::printf("auto backend: %s (%s)\n", (*reader)->name().c_str(),
              (*reader)->reason().c_str());
}

TEST(ReaderFactoryTest, RejectsBadOptions) {
  ReaderOptions options;
  options.backend = IoBackend::kPread;
  options.queue_depth = 0;
  EXPECT_TRUE(absl::IsInvalidArgument(CreateReader(options).status()));
  options.queue_depth = 4;
  options.pread_threads = 0;
  EXPECT_TRUE(absl::IsInvalidArgument(CreateReader(options).status()));
}

}  // namespace
}  // namespace weightd
