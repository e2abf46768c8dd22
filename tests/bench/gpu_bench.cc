// GPU load from page cache: pinned host-to-device bandwidth (one big
// cudaMemcpyAsync from a cudaHostAlloc buffer, through the CUDA Device) vs the
// staging pipeline loading 1 GiB and 4 GiB files into a GPU arena. Prints a
// table; ratios are against the pinned bandwidth measured in the same run.
// Skips (exit 0) with the reason where there is no GPU.
//
//   bazel run -c opt //tests/bench:gpu_bench -- --sizes_mb=1024,4096
//   [--dir=/tmp]
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "loader/device/cuda_device.h"
#include "loader/device/staging_pipeline.h"
#include "loader/io/mapped_file.h"
#include "loader/io/reader_factory.h"
#include "tests/bench/bench_util.h"

ABSL_FLAG(std::string, sizes_mb, "1024,4096", "file sizes to load, MiB");
ABSL_FLAG(std::string, files, "",
          "comma-separated files to load instead of generated ones");
ABSL_FLAG(std::string, dir, "/tmp", "where generated files go");
ABSL_FLAG(int, gpu, 0, "CUDA ordinal");
ABSL_FLAG(int64_t, chunk_mb, 8, "staging chunk, MiB");
ABSL_FLAG(int, buffers, 8, "staging buffers");
ABSL_FLAG(int, queue_depth, 8, "reads in flight");
ABSL_FLAG(int, streams, 4, "CUDA streams");
ABSL_FLAG(std::string, io_backend, "auto", "auto, io_uring or pread");
ABSL_FLAG(int, repeats, 3, "runs per row; the best is reported");
ABSL_FLAG(bool, keep_files, true, "keep generated files for the next run");

namespace weightd {
namespace {

using bench::GiBps;
using bench::Now;

using bench::Row;

absl::StatusOr<double> PinnedBandwidthSeconds(Device* gpu, uint64_t bytes,
                                              int repeats) {
  auto pinned = gpu->AllocatePinned(bytes);
  if (!pinned.ok()) return pinned.status();
  std::fill((*pinned)->data(), (*pinned)->data() + bytes, 1);
  auto arena = gpu->Allocate(bytes);
  if (!arena.ok()) return arena.status();
  auto event = gpu->CreateEvent();
  if (!event.ok()) return event.status();
  double best = 1e30;
  for (int i = 0; i < repeats + 1; ++i) {  // the first run warms up
    double start = Now();
    absl::Status s =
        gpu->CopyToDeviceAsync(arena->get(), 0, (*pinned)->data(), bytes, 0);
    if (s.ok()) s = gpu->RecordEvent(event->get(), 0);
    if (s.ok()) s = (*event)->Wait();
    if (!s.ok()) return s;
    if (i > 0) best = std::min(best, Now() - start);
  }
  return best;
}

int Main() {
  CudaEnumeration e = EnumerateCudaDevices();
  if (e.count == 0) {
    std::printf("gpu_bench skipped: no GPU (%s)\n", e.status.c_str());
    return 0;
  }
  CudaDeviceOptions cuda_options;
  cuda_options.num_streams = absl::GetFlag(FLAGS_streams);
  auto gpu = CreateCudaDevice(absl::GetFlag(FLAGS_gpu), cuda_options);
  if (!gpu.ok()) {
    std::fprintf(stderr, "%s\n", gpu.status().ToString().c_str());
    return 1;
  }
  const int repeats = std::max(1, absl::GetFlag(FLAGS_repeats));

  std::vector<std::string> paths;
  if (!absl::GetFlag(FLAGS_files).empty()) {
    paths = absl::StrSplit(absl::GetFlag(FLAGS_files), ',');
  } else {
    for (absl::string_view mb :
         absl::StrSplit(absl::GetFlag(FLAGS_sizes_mb), ',')) {
      int64_t n = 0;
      if (!absl::SimpleAtoi(mb, &n) || n <= 0) {
        std::fprintf(stderr, "bad size '%s'\n", std::string(mb).c_str());
        return 1;
      }
      std::string path = absl::StrCat(absl::GetFlag(FLAGS_dir),
                                      "/weightd-gpu-bench-", n, "m.bin");
      if (!bench::EnsureFile(path, static_cast<uint64_t>(n) << 20)) {
        std::fprintf(stderr, "cannot write %s\n", path.c_str());
        return 1;
      }
      paths.push_back(path);
    }
  }

  const uint64_t pinned_bytes = 1ull << 30;
  auto pinned_seconds =
      PinnedBandwidthSeconds(gpu->get(), pinned_bytes, repeats);
  if (!pinned_seconds.ok()) {
    std::fprintf(stderr, "%s\n", pinned_seconds.status().ToString().c_str());
    return 1;
  }
  double pinned_gibps = GiBps(pinned_bytes, *pinned_seconds);
  std::vector<Row> rows;
  rows.push_back({"pinned cudaMemcpyAsync 1 GiB (baseline)", *pinned_seconds,
                  pinned_bytes});

  auto backend = ParseIoBackend(absl::GetFlag(FLAGS_io_backend));
  if (!backend.ok()) return 1;
  auto reader =
      bench::CreateReaderWithDepth(*backend, absl::GetFlag(FLAGS_queue_depth));
  if (!reader.ok()) {
    std::fprintf(stderr, "%s\n", reader.status().ToString().c_str());
    return 1;
  }
  std::string backend_note =
      absl::StrCat((*reader)->name(), " (", (*reader)->reason(), ")");
  StagingOptions so;
  so.chunk_bytes = static_cast<uint64_t>(absl::GetFlag(FLAGS_chunk_mb)) << 20;
  so.num_buffers = absl::GetFlag(FLAGS_buffers);
  auto pipeline = StagingPipeline::Create(gpu->get(), std::move(*reader), so);
  if (!pipeline.ok()) return 1;

  double rss_before = bench::PeakRssMiB();
  for (const std::string& path : paths) {
    auto file = MappedFile::Open(path);
    if (!file.ok()) {
      std::fprintf(stderr, "%s\n", file.status().ToString().c_str());
      return 1;
    }
    uint64_t size = (*file)->size();
    bench::ReadWholeFile(path, 8 << 20, nullptr);  // page cache
    FileSource source;
    source.fd = (*file)->fd();
    source.size = size;
    source.name = path;
    std::vector<CopyRange> ranges = {CopyRange::FromFile(0, size, 0)};
    auto arena = (*gpu)->Allocate(size);
    if (!arena.ok()) {
      std::fprintf(stderr, "%s\n", arena.status().ToString().c_str());
      return 1;
    }
    Row row{absl::StrCat("pipeline ", size >> 20, " MiB file -> GPU arena"),
            1e30, size};
    for (int i = 0; i < repeats + 1; ++i) {
      double start = Now();
      absl::Status s =
          (*pipeline)->Run(arena->get(), source, ranges, nullptr, nullptr);
      double t = Now() - start;
      if (!s.ok()) {
        std::fprintf(stderr, "%s\n", s.ToString().c_str());
        return 1;
      }
      if (i > 0) row.seconds = std::min(row.seconds, t);
    }
    rows.push_back(row);
    arena->reset();
    Row fresh{absl::StrCat("pipeline ", size >> 20, " MiB, incl. cudaMalloc"),
              1e30, size};
    for (int i = 0; i < repeats; ++i) {
      double start = Now();
      auto a = (*pipeline)->Load(size, source, ranges, nullptr, nullptr);
      double t = Now() - start;
      if (!a.ok()) {
        std::fprintf(stderr, "%s\n", a.status().ToString().c_str());
        return 1;
      }
      fresh.seconds = std::min(fresh.seconds, t);
    }
    rows.push_back(fresh);
  }
  double rss_after = bench::PeakRssMiB();

  std::printf(
      "\ngpu_bench: %s (%s), chunk %ld MiB x %d buffers, queue depth %d, "
      "%d streams, reader %s, best of %d\n",
      (*gpu)->name().c_str(), (*gpu)->uuid().c_str(),
      static_cast<long>(absl::GetFlag(FLAGS_chunk_mb)),
      absl::GetFlag(FLAGS_buffers), absl::GetFlag(FLAGS_queue_depth),
      absl::GetFlag(FLAGS_streams), backend_note.c_str(), repeats);
  std::printf("%-45s %10s %10s %12s\n", "path", "seconds", "GiB/s",
              "vs pinned");
  for (const Row& r : rows) {
    double g = GiBps(r.bytes, r.seconds);
    std::printf("%-45s %10.3f %10.2f %11.0f%%\n", r.name.c_str(), r.seconds, g,
                100.0 * g / pinned_gibps);
  }
  std::printf(
      "peak RSS (VmHWM) before loads %.0f MiB, after %.0f MiB; staging "
      "ring %.0f MiB (the 1 GiB pinned baseline buffer was freed before)\n",
      rss_before, rss_after, (*pipeline)->staging_bytes() / 1048576.0);
  if (absl::GetFlag(FLAGS_files).empty() && !absl::GetFlag(FLAGS_keep_files)) {
    for (const std::string& p : paths) unlink(p.c_str());
  }
  return 0;
}

}  // namespace
}  // namespace weightd

int main(int argc, char** argv) {
  return weightd::bench::ParseFlagsAndRun(argc, argv, weightd::Main);
}
