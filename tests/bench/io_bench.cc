// Host load from page cache: raw sequential read() throughput of a file vs
// each Reader backend reading the same file, queue_depth chunks in flight,
// into a shared-memory segment (where host copies of a checkpoint live).
// Prints a table; ratios are against the read() baseline measured in the
// same run.
//
//   bazel run -c opt //tests/bench:io_bench -- --size_mb=1024 [--file=PATH]
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "loader/device/fake_device.h"
#include "loader/device/shared_memory.h"
#include "loader/device/staging_pipeline.h"
#include "loader/io/direct_io.h"
#include "loader/io/io_uring_reader.h"
#include "loader/io/mapped_file.h"
#include "loader/io/reader_factory.h"
#include "tests/bench/bench_util.h"

ABSL_FLAG(std::string, file, "",
          "file to read (default: a generated file under /tmp)");
ABSL_FLAG(int64_t, size_mb, 1024, "size of the generated file in MiB");
ABSL_FLAG(int64_t, chunk_mb, 8, "read chunk (and baseline buffer) in MiB");
ABSL_FLAG(int, queue_depth, 8, "reads in flight");
ABSL_FLAG(int, repeats, 3, "runs per row; the best is reported");
ABSL_FLAG(bool, keep_file, false, "keep the generated file");
ABSL_FLAG(int, staging_buffers, 4, "pipeline rows: staging buffers");
ABSL_FLAG(int, io_depth, 64, "pipeline rows: SQEs (pread threads) in flight");
ABSL_FLAG(int64_t, request_kib, 0,
          "pipeline rows: KiB per read request (0: AutoRequestBytes of the "
          "device, direct_io.h)");
ABSL_FLAG(bool, cold, true,
          "also cold rows (page cache dropped with POSIX_FADV_DONTNEED)");
ABSL_FLAG(int64_t, staging_chunk_mb, 8, "pipeline rows: staging chunk, MiB");

namespace weightd {
namespace {

using bench::GiBps;
using bench::Now;

using bench::Row;

int Main() {
  std::string path = absl::GetFlag(FLAGS_file);
  bool generated = path.empty();
  uint64_t size = static_cast<uint64_t>(absl::GetFlag(FLAGS_size_mb)) << 20;
  if (generated) {
    path = absl::StrCat("/tmp/weightd-io-bench-", absl::GetFlag(FLAGS_size_mb),
                        "m.bin");
    if (!bench::EnsureFile(path, size)) {
      std::fprintf(stderr, "cannot write %s\n", path.c_str());
      return 1;
    }
  }
  auto file = MappedFile::Open(path);
  if (!file.ok()) {
    std::fprintf(stderr, "%s\n", file.status().ToString().c_str());
    return 1;
  }
  size = (*file)->size();
  const size_t chunk = static_cast<size_t>(absl::GetFlag(FLAGS_chunk_mb)) << 20;
  const int repeats = std::max(1, absl::GetFlag(FLAGS_repeats));

  // Warm the page cache, then the baseline.
  bench::ReadWholeFile(path, chunk, nullptr);
  std::vector<Row> rows;
  Row baseline{"read() into one buffer (baseline)", 1e30, size};
  for (int i = 0; i < repeats; ++i) {
    uint64_t got = 0;
    double t = bench::ReadWholeFile(path, chunk, &got);
    if (t < 0 || got != size) {
      std::fprintf(stderr, "baseline read failed\n");
      return 1;
    }
    baseline.seconds = std::min(baseline.seconds, t);
  }
  rows.push_back(baseline);
  // The same with a fresh file-sized destination each run: what a copy into
  // new memory costs (page faults and zeroing included), for the
  // "incl. allocation" rows.
  Row fresh_baseline{"read() into a fresh file-sized buffer", 1e30, size};
  for (int i = 0; i < repeats; ++i) {
    int fd = open(path.c_str(), O_RDONLY);
    double start = Now();
    char* dst = static_cast<char*>(std::malloc(size ? size : 1));
    uint64_t got = 0;
    for (;;) {
      ssize_t n = read(fd, dst + got, std::min<uint64_t>(chunk, size - got));
      if (n <= 0) break;
      got += static_cast<uint64_t>(n);
    }
    std::free(dst);
    fresh_baseline.seconds = std::min(fresh_baseline.seconds, Now() - start);
    close(fd);
  }
  rows.push_back(fresh_baseline);

  const int fd = (*file)->fd();

  std::vector<IoBackend> backends = {IoBackend::kPread};
  if (IoUringReader::Probe().ok()) {
    backends.insert(backends.begin(), IoBackend::kIoUring);
  } else {
    std::printf("io_uring skipped: %s\n",
                IoUringReader::Probe().ToString().c_str());
  }
  std::string notes;
  for (IoBackend backend : backends) {
    auto reader =
        bench::CreateReaderWithDepth(backend, absl::GetFlag(FLAGS_queue_depth));
    if (!reader.ok()) {
      std::fprintf(stderr, "%s\n", reader.status().ToString().c_str());
      return 1;
    }
    notes +=
        absl::StrCat("  ", (*reader)->name(), ": ", (*reader)->reason(), "\n");
    // The segment's pages are faulted in once (as a long-lived daemon's
    // are); the "incl. allocation" row pays for a fresh segment every run.
    auto segment = SharedMemorySegment::Create(size, "weightd", true);
    if (!segment.ok()) {
      std::fprintf(stderr, "%s\n", segment.status().ToString().c_str());
      return 1;
    }
    absl::Status s = bench::ReadWithReader(reader->get(), fd, size, chunk,
                                           (*segment)->data());
    Row warm{absl::StrCat(IoBackendName(backend), " -> shared memory"), 1e30,
             size};
    Row fresh{absl::StrCat(IoBackendName(backend),
                           " -> shared memory, incl. allocation"),
              1e30, size};
    for (int i = 0; i < repeats && s.ok(); ++i) {
      double start = Now();
      s = bench::ReadWithReader(reader->get(), fd, size, chunk,
                                (*segment)->data());
      warm.seconds = std::min(warm.seconds, Now() - start);
    }
    segment->reset();
    for (int i = 0; i < repeats && s.ok(); ++i) {
      double start = Now();
      auto fresh_segment = SharedMemorySegment::Create(size, "weightd", true);
      s = fresh_segment.ok()
              ? bench::ReadWithReader(reader->get(), fd, size, chunk,
                                      (*fresh_segment)->data())
              : fresh_segment.status();
      fresh.seconds = std::min(fresh.seconds, Now() - start);
    }
    if (!s.ok()) {
      std::fprintf(stderr, "%s\n", s.ToString().c_str());
      return 1;
    }
    rows.push_back(warm);
    rows.push_back(fresh);
  }

  // The staging pipeline onto a fake GPU (whose arena is host shared memory):
  // a read into the staging ring plus a copy into the arena per chunk, the
  // path of a --fake_gpus load. Warm (page cache) and cold (dropped before
  // each run), buffered and O_DIRECT.
  auto evict = [&] {
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  };
  DirectFd direct = OpenDirectIo(fd, path);
  if (!direct.fd.valid()) notes += "  O_DIRECT: " + direct.why_not + "\n";
  std::vector<Row> cold_rows;
  Row cold_baseline{"cold: O_DIRECT read() 16 MiB (dd iflag=direct)", 1e30,
                    size};
  Row cold_buffered{"cold: buffered read() 8 MiB", 1e30, size};
  if (absl::GetFlag(FLAGS_cold)) {
    void* raw = nullptr;
    if (posix_memalign(&raw, 4096, 16 << 20) != 0) return 1;
    for (int i = 0; i < repeats && direct.fd.valid(); ++i) {
      evict();
      double start = Now();
      uint64_t got = 0;
      for (;;) {
        ssize_t n = pread(direct.fd.get(), raw, 16 << 20, got);
        if (n <= 0) break;
        got += static_cast<uint64_t>(n);
      }
      cold_baseline.seconds = std::min(cold_baseline.seconds, Now() - start);
    }
    free(raw);
    for (int i = 0; i < repeats; ++i) {
      evict();
      uint64_t got = 0;
      double t = bench::ReadWholeFile(path, 8 << 20, &got);
      cold_buffered.seconds = std::min(cold_buffered.seconds, t);
    }
    if (direct.fd.valid()) cold_rows.push_back(cold_baseline);
    cold_rows.push_back(cold_buffered);
  }
  for (IoBackend backend : backends) {
    FakeDevice::Options fo;
    fo.total_memory = size + (64ull << 20);
    fo.num_streams = 2;
    auto device = FakeDevice::Create(fo);
    ReaderOptions ro;
    ro.backend = backend;
    ro.queue_depth = absl::GetFlag(FLAGS_queue_depth);
    ro.ring_entries = absl::GetFlag(FLAGS_io_depth);
    auto reader = CreateReader(ro);
    if (!device.ok() || !reader.ok()) {
      std::fprintf(stderr, "fake GPU or reader refused\n");
      return 1;
    }
    StagingOptions so;
    so.num_buffers = absl::GetFlag(FLAGS_staging_buffers);
    so.chunk_bytes =
        static_cast<uint64_t>(absl::GetFlag(FLAGS_staging_chunk_mb)) << 20;
    so.request_bytes = static_cast<uint64_t>(absl::GetFlag(FLAGS_request_kib))
                       << 10;
    // The O_DIRECT rows read direct: no measuring first (--direct_io=on).
    so.direct_io = DirectIoMode::kOn;
    auto pipeline =
        StagingPipeline::Create(device->get(), std::move(*reader), so);
    auto arena = (*device)->Allocate(size);
    if (!pipeline.ok() || !arena.ok()) {
      std::fprintf(stderr, "pipeline or arena refused\n");
      return 1;
    }
    std::vector<CopyRange> ranges = {CopyRange::FromFile(0, size, 0)};
    uint64_t request_bytes = 0;
    auto run = [&](bool use_direct, bool cold, Row* row) -> bool {
      FileSource source;
      source.fd = fd;
      source.size = size;
      source.name = path;
      if (use_direct) {
        source.direct_fd = direct.fd.get();
        source.direct_alignment = direct.alignment;
      }
      // An earlier backend's cold rows dropped the file: warm it again.
      if (!cold) bench::ReadWholeFile(path, 8 << 20, nullptr);
      for (int i = 0; i < repeats + (cold ? 0 : 1); ++i) {
        if (cold) evict();
        StagingStats stats;
        double start = Now();
        absl::Status s = (*pipeline)->Run(arena->get(), source, ranges, nullptr,
                                          nullptr, &stats);
        if (!s.ok()) {
          std::fprintf(stderr, "%s\n", s.ToString().c_str());
          return false;
        }
        request_bytes = stats.request_bytes;
        // Warm: the first run faults the arena in.
        if (cold || i > 0) row->seconds = std::min(row->seconds, Now() - start);
      }
      return true;
    };
    Row row{
        absl::StrCat("pipeline ", IoBackendName(backend), " -> fake GPU arena"),
        1e30, size};
    if (!run(direct.fd.valid(), false, &row)) return 1;
    rows.push_back(row);
    if (absl::GetFlag(FLAGS_cold)) {
      Row buffered{absl::StrCat("cold: pipeline ", IoBackendName(backend),
                                " buffered -> fake GPU"),
                   1e30, size};
      if (!run(false, true, &buffered)) return 1;
      cold_rows.push_back(buffered);
      if (direct.fd.valid()) {
        Row d{absl::StrCat("cold: pipeline ", IoBackendName(backend),
                           " O_DIRECT -> fake GPU"),
              1e30, size};
        if (!run(true, true, &d)) return 1;
        cold_rows.push_back(d);
      }
    }
    notes += absl::StrCat(
        "  pipeline ", IoBackendName(backend), ": ",
        (*pipeline)->reader()->reason(), ", ",
        (*pipeline)->reader()->buffers_registered() ? "registered buffers"
                                                    : "unregistered buffers",
        ", requests of ", request_bytes >> 10, " KiB, ",
        absl::GetFlag(FLAGS_io_depth), " in flight at most\n");
  }

  std::printf(
      "\nio_bench: %s, %.0f MiB, page cache, chunk %zu MiB, queue depth %d, "
      "best of %d, %ld CPUs\n",
      path.c_str(), size / 1048576.0, chunk >> 20,
      absl::GetFlag(FLAGS_queue_depth), repeats, sysconf(_SC_NPROCESSORS_ONLN));
  std::printf("%-50s %10s %10s %10s\n", "path", "seconds", "GiB/s",
              "vs read()");
  for (const Row& r : rows) {
    std::printf("%-50s %10.3f %10.2f %9.0f%%\n", r.name.c_str(), r.seconds,
                GiBps(r.bytes, r.seconds),
                100.0 * baseline.seconds / r.seconds);
  }
  if (!cold_rows.empty()) {
    const Row& base = cold_rows.front();
    std::printf("%-50s %10s %10s %10s\n", "cold path", "seconds", "GiB/s",
                "vs first");
    for (const Row& r : cold_rows) {
      std::printf("%-50s %10.3f %10.2f %9.0f%%\n", r.name.c_str(), r.seconds,
                  GiBps(r.bytes, r.seconds), 100.0 * base.seconds / r.seconds);
    }
  }
  std::printf("backends:\n%s", notes.c_str());
  if (generated && !absl::GetFlag(FLAGS_keep_file)) unlink(path.c_str());
  return 0;
}

}  // namespace
}  // namespace weightd

int main(int argc, char** argv) {
  return weightd::bench::ParseFlagsAndRun(argc, argv, weightd::Main);
}
