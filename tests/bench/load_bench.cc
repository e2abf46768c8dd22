// Whole-load benchmark through the ModelManager (what the daemon runs for a
// Load), against baselines measured in the same run on the same file:
//   host:  raw sequential read() of the file from page cache  vs  load +
//   reading every tensor
//          byte through the zero-copy view (and the shared-memory cast path,
//          for reference);
//   GPU:   (where GPUs exist) the same checkpoint loaded onto each GPU.
// Usage: load_bench [--size_mib=1024] [--dir=/tmp] [--iterations=3]
// [--fake_gpus=0]
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "loader/cache/model_manager.h"
#include "tests/bench/bench_util.h"

ABSL_FLAG(uint64_t, size_mib, 1024, "checkpoint size, MiB");
ABSL_FLAG(std::string, dir, "/tmp", "where the checkpoint is written");
ABSL_FLAG(int, iterations, 3, "runs per row; the best is reported");
ABSL_FLAG(int, fake_gpus, 0, "fake GPUs to add (0: the real ones only)");

namespace weightd {
namespace {

// A safetensors file of float32 tensors, 64 MiB each (the last one smaller).
bool WriteCheckpoint(const std::string& path, uint64_t size_bytes) {
  constexpr uint64_t kTensorBytes = 64ull << 20;
  std::vector<bench::TensorLayout> tensors;
  for (uint64_t offset = 0; offset < size_bytes;) {
    const uint64_t elements = std::min(kTensorBytes, size_bytes - offset) / 4;
    if (elements == 0) break;
    tensors.push_back({absl::StrCat("layers.", tensors.size(), ".weight"),
                       {static_cast<int64_t>(elements)}});
    offset += elements * 4;
  }
  return bench::WriteSafetensors(path, "F32", 4, tensors).ok();
}

uint64_t SumWords(const uint64_t* p, uint64_t words) {
  uint64_t a = 0, b = 0, c = 0, d = 0, i = 0;
  for (; i + 4 <= words; i += 4) {
    a += p[i];
    b += p[i + 1];
    c += p[i + 2];
    d += p[i + 3];
  }
  for (; i < words; ++i) a += p[i];
  return a + b + c + d;
}

// Reads every byte of every host tensor (as a client touching its weights
// would).
uint64_t TouchAll(const LoadedModel& model) {
  uint64_t sum = 0;

  for (const PlacedTensor& tensor : model.tensors) {
    if (tensor.buffer_index < 0) continue;
    const uint8_t* data = model.buffers[tensor.buffer_index].host_data +
                          tensor.storage_byte_offset;
    const uint64_t words = tensor.byte_size / 8;
    const uint64_t* p = reinterpret_cast<const uint64_t*>(data);
    sum += SumWords(p, words);
  }
  return sum;
}

// The same consumer over read(): each chunk read into a buffer, then summed.
double ReadAndSum(const std::string& path, uint64_t* checksum) {
  int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) return -1;
  std::vector<uint64_t> buffer((8 << 20) / 8);
  double start = bench::Now();
  for (;;) {
    ssize_t n = read(fd, buffer.data(), buffer.size() * 8);
    if (n <= 0) break;
    *checksum += SumWords(buffer.data(), static_cast<uint64_t>(n) / 8);
  }
  double seconds = bench::Now() - start;
  close(fd);
  return seconds;
}

int Main() {
  const uint64_t size = absl::GetFlag(FLAGS_size_mib) << 20;
  const int iterations = absl::GetFlag(FLAGS_iterations);
  std::string dir = absl::GetFlag(FLAGS_dir) + "/weightd-load-bench";
  std::filesystem::create_directories(dir);
  std::string path = dir + "/bench.safetensors";
  if (!WriteCheckpoint(path, size)) {
    std::fprintf(stderr, "cannot write %s\n", path.c_str());
    return 1;
  }
  DeviceSet::Options device_options;
  device_options.fake_gpus = absl::GetFlag(FLAGS_fake_gpus);
  ModelManager::Options options;
  options.model_roots = {dir};
  auto manager = bench::CreateModelManager(device_options, options);
  if (!manager.ok()) {
    std::fprintf(stderr, "%s\n",
                 std::string(manager.status().message()).c_str());
    return 1;
  }
  uint64_t bytes = 0;
  bench::ReadWholeFile(path, 8 << 20, &bytes);  // page cache warm-up
  double raw = 1e30, raw_sum = 1e30, host_load = 1e30, host_touch = 1e30,
         cast = 1e30;
  uint64_t checksum = 0;
  for (int i = 0; i < iterations; ++i) {
    raw = std::min(raw, bench::ReadWholeFile(path, 8 << 20, &bytes));
    raw_sum = std::min(raw_sum, ReadAndSum(path, &checksum));
    for (const char* cast_dtype : {"", "bfloat16"}) {
      LoadSpec spec;
      spec.path = path;
      spec.target = "cpu";
      spec.cast_dtype = cast_dtype;
      double start = bench::Now();
      auto result = (*manager)->Load(spec, nullptr);
      double loaded = bench::Now();
      if (!result.ok()) {
        std::fprintf(stderr, "%s\n",
                     std::string(result.status().message()).c_str());
        return 1;
      }
      checksum += TouchAll(*result->model);
      double touched = bench::Now();
      if (*cast_dtype == '\0') {
        host_load = std::min(host_load, loaded - start);
        host_touch = std::min(host_touch, touched - start);
      } else {
        cast = std::min(cast, loaded - start);
      }
      bench::UnloadModel(**manager, *result);
    }
  }
  const double gib = static_cast<double>(size) / (1ull << 30);
  std::printf("checkpoint: %s, %.2f GiB, %d iteration(s), best of each\n",
              path.c_str(), gib, iterations);
  std::printf("%-52s %10s %10s %8s\n", "measurement", "seconds", "GiB/s",
              "ratio");
  std::printf("%-52s %10.4f %10.2f %8s\n",
              "baseline: raw sequential read() (page cache)", raw, gib / raw,
              "1.00");
  std::printf("%-52s %10.4f %10.2f %8.2f\n",
              "baseline: read() + sum every byte (a consumer)", raw_sum,
              gib / raw_sum, raw / raw_sum);
  std::printf("%-52s %10.4f %10s %8s\n",
              "host load (metadata + zero-copy mapping)", host_load, "-", "-");
  std::printf("%-52s %10.4f %10.2f %8.2f\n",
              "host load + sum every tensor byte", host_touch, gib / host_touch,
              raw / host_touch);
  std::printf("%-52s %10s %10s %8.2f\n",
              "  ratio to read() + sum (same consumer)", "", "",
              raw_sum / host_touch);
  std::printf("%-52s %10.4f %10.2f %8.2f\n",
              "host load cast to bfloat16 (shared memory copy)", cast,
              gib / cast, raw / cast);
  const uint64_t ring = device_options.staging_chunk_bytes *
                        static_cast<uint64_t>(device_options.staging_buffers);
  for (const GpuDescription& gpu : (*manager)->Info().gpus) {
    for (const char* cast_dtype : {"", "bfloat16"}) {
      // One unmeasured load first: it creates the pinned staging ring.
      double best = 1e30;
      uint64_t peak = 0;
      for (int i = 0; i <= iterations; ++i) {
        LoadSpec spec;
        spec.path = path;
        spec.target = absl::StrCat("cuda:", gpu.index);
        spec.cast_dtype = cast_dtype;
        bench::PeakAnonSampler sampler;
        double start = bench::Now();
        auto result = (*manager)->Load(spec, nullptr);
        double seconds = bench::Now() - start;
        uint64_t growth = sampler.PeakGrowth();
        if (!result.ok()) {
          std::fprintf(stderr, "%s\n",
                       std::string(result.status().message()).c_str());
          return 1;
        }
        if (i > 0) {
          best = std::min(best, seconds);
          peak = std::max(peak, growth);
        }
        bench::UnloadModel(**manager, *result);
      }
      std::printf("%-52s %10.4f %10.2f %8.2f\n",
                  absl::StrCat("GPU load onto cuda:", gpu.index,
                               gpu.fake ? " (fake)" : "",
                               *cast_dtype ? " cast to " : "", cast_dtype)
                      .c_str(),
                  best, gib / best, raw / best);
      std::printf("%-52s %10.1f MiB (staging ring %.0f MiB)\n",
                  "  peak anonymous host memory growth during the load",
                  static_cast<double>(peak) / (1 << 20),
                  static_cast<double>(ring) / (1 << 20));
    }
  }
  std::printf("(checksum %llu)\n", static_cast<unsigned long long>(checksum));
  std::filesystem::remove(path);
  return 0;
}

}  // namespace
}  // namespace weightd

int main(int argc, char** argv) {
  return weightd::bench::ParseFlagsAndRun(argc, argv, weightd::Main);
}
