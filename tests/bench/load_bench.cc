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
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "loader/cache/model_manager.h"
#include "loader/common/json.h"
#include "tests/bench/bench_util.h"

namespace weightd {
namespace {

struct Flags {
  uint64_t size_mib = 1024;
  std::string dir = "/tmp";
  int iterations = 3;
  int fake_gpus = 0;
};

Flags ParseFlags(int argc, char** argv) {
  Flags flags;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::string value = arg.substr(arg.find('=') + 1);
    if (absl::StartsWith(arg, "--size_mib="))
      (void)absl::SimpleAtoi(value, &flags.size_mib);
    if (absl::StartsWith(arg, "--dir=")) flags.dir = value;
    if (absl::StartsWith(arg, "--iterations="))
      (void)absl::SimpleAtoi(value, &flags.iterations);
    if (absl::StartsWith(arg, "--fake_gpus="))
      (void)absl::SimpleAtoi(value, &flags.fake_gpus);
  }
  return flags;
}

// A safetensors file of float32 tensors, 64 MiB each (the last one smaller).
bool WriteCheckpoint(const std::string& path, uint64_t size_bytes) {
  constexpr uint64_t kTensorBytes = 64ull << 20;
  Json header = Json::MakeObject();
  uint64_t offset = 0;
  for (int i = 0; offset < size_bytes; ++i) {
    uint64_t bytes = std::min(kTensorBytes, size_bytes - offset) / 4 * 4;
    if (bytes == 0) break;
    Json entry = Json::MakeObject();
    entry.Set("dtype", Json("F32"));
    Json shape = Json::MakeArray();
    shape.Append(Json(bytes / 4));
    entry.Set("shape", std::move(shape));
    Json offsets = Json::MakeArray();
    offsets.Append(Json(offset));
    offsets.Append(Json(offset + bytes));
    entry.Set("data_offsets", std::move(offsets));
    header.Set(absl::StrCat("layers.", i, ".weight"), std::move(entry));
    offset += bytes;
  }
  std::string text = header.Dump();
  while (text.size() % 8) text += ' ';
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  uint64_t header_size = text.size();
  out.write(reinterpret_cast<const char*>(&header_size), 8);
  out << text;
  std::vector<char> block(8 << 20);
  for (size_t i = 0; i < block.size(); ++i)
    block[i] = static_cast<char>(i * 31 + 7);
  for (uint64_t done = 0; done < offset;) {
    uint64_t n = std::min<uint64_t>(block.size(), offset - done);
    out.write(block.data(), n);
    done += n;
  }
  return static_cast<bool>(out);
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

int Run(const Flags& flags) {
  const uint64_t size = flags.size_mib << 20;
  std::string dir = flags.dir + "/weightd-load-bench";
  std::filesystem::create_directories(dir);
  std::string path = dir + "/bench.safetensors";
  if (!WriteCheckpoint(path, size)) {
    std::fprintf(stderr, "cannot write %s\n", path.c_str());
    return 1;
  }
  DeviceSet::Options device_options;
  device_options.fake_gpus = flags.fake_gpus;
  auto devices = DeviceSet::Create(device_options);
  if (!devices.ok()) {
    std::fprintf(stderr, "%s\n",
                 std::string(devices.status().message()).c_str());
    return 1;
  }
  ModelManager::Options options;
  options.model_roots = {dir};
  auto manager = ModelManager::Create(options, *std::move(devices));
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
  for (int i = 0; i < flags.iterations; ++i) {
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
      std::string id = result->model_id;
      result->model.reset();
      (void)(*manager)->Unload(id, true);
    }
  }
  const double gib = static_cast<double>(size) / (1ull << 30);
  std::printf("checkpoint: %s, %.2f GiB, %d iteration(s), best of each\n",
              path.c_str(), gib, flags.iterations);
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
      for (int i = 0; i <= flags.iterations; ++i) {
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
        std::string id = result->model_id;
        result->model.reset();
        (void)(*manager)->Unload(id, true);
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
  return weightd::Run(weightd::ParseFlags(argc, argv));
}
