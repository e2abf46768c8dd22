// Small helpers shared by the benchmark programs.
#ifndef WEIGHTD_TESTS_BENCH_BENCH_UTIL_H_
#define WEIGHTD_TESTS_BENCH_BENCH_UTIL_H_

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "loader/cache/device_set.h"
#include "loader/cache/model_manager.h"
#include "loader/io/reader.h"
#include "loader/io/reader_factory.h"

namespace weightd {
namespace bench {

// One line of a benchmark's table.
struct Row {
  std::string name;
  double seconds = 0;
  uint64_t bytes = 0;
};

// Anonymous memory (heap, private mappings) this process holds now, from
// /proc/self/status; 0 where unreadable.
inline uint64_t RssAnonBytes() {
  FILE* f = std::fopen("/proc/self/status", "r");
  if (f == nullptr) return 0;
  char line[256];
  uint64_t kib = 0;
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    if (std::sscanf(line, "RssAnon: %llu kB",
                    reinterpret_cast<unsigned long long*>(&kib)) == 1) {
      break;
    }
  }
  std::fclose(f);
  return kib << 10;
}

// Samples RssAnonBytes() every 200 us on a thread from construction until
// PeakGrowth(): how much anonymous memory grew at most meanwhile.
class PeakAnonSampler {
 public:
  PeakAnonSampler() : before_(RssAnonBytes()), peak_(before_) {
    thread_ = std::thread([this] {
      while (!done_.load()) {
        uint64_t now = RssAnonBytes();
        if (now > peak_.load()) peak_.store(now);
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
    });
  }
  ~PeakAnonSampler() { PeakGrowth(); }
  uint64_t PeakGrowth() {
    if (thread_.joinable()) {
      done_.store(true);
      thread_.join();
    }
    return peak_.load() - before_;
  }

 private:
  const uint64_t before_;
  std::atomic<uint64_t> peak_;
  std::atomic<bool> done_{false};
  std::thread thread_;
};

inline double Now() {
  return std::chrono::duration<double>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Makes `path` hold `size` bytes of non-zero data unless it already does.
inline bool EnsureFile(const std::string& path, uint64_t size) {
  struct stat st;
  if (stat(path.c_str(), &st) == 0 &&
      static_cast<uint64_t>(st.st_size) == size) {
    return true;
  }
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return false;
  std::vector<uint64_t> block((8 << 20) / 8);
  uint64_t x = 0x243F6A8885A308D3ull;
  for (uint64_t done = 0; done < size;) {
    for (uint64_t& v : block) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      v = x;
    }
    size_t n =
        static_cast<size_t>(std::min<uint64_t>(block.size() * 8, size - done));
    if (std::fwrite(block.data(), 1, n, f) != n) {
      std::fclose(f);
      return false;
    }
    done += n;
  }
  return std::fclose(f) == 0;
}

// Reads the whole file with read() into a reused buffer; returns seconds
// (negative on error). Also what puts the file in the page cache.
inline double ReadWholeFile(const std::string& path, size_t buffer_bytes,
                            uint64_t* bytes_out) {
  int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) return -1;
  std::vector<char> buffer(buffer_bytes);
  uint64_t total = 0;
  double start = Now();
  for (;;) {
    ssize_t n = read(fd, buffer.data(), buffer.size());
    if (n < 0) {
      close(fd);
      return -1;
    }
    if (n == 0) break;
    total += static_cast<uint64_t>(n);
  }
  double elapsed = Now() - start;
  close(fd);
  if (bytes_out != nullptr) *bytes_out = total;
  return elapsed;
}

// Peak resident set (VmHWM) in MiB, or -1.
inline double PeakRssMiB() {
  FILE* f = std::fopen("/proc/self/status", "r");
  if (f == nullptr) return -1;
  char line[256];
  double kib = -1;
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    if (std::sscanf(line, "VmHWM: %lf kB", &kib) == 1) break;
  }
  std::fclose(f);
  return kib < 0 ? -1 : kib / 1024;
}

inline double GiBps(uint64_t bytes, double seconds) {
  return seconds > 0 ? bytes / seconds / (1024.0 * 1024 * 1024) : 0;
}

// A benchmark's main(): parses its flags (absl), then returns what `run`
// returns.
int ParseFlagsAndRun(int argc, char** argv, int (*run)());

// One tensor of a generated safetensors file.
struct TensorLayout {
  std::string name;
  std::vector<int64_t> shape;
};

// Writes a safetensors file holding `tensors` back to back, every one of
// `dtype` (`element_bytes` per element), their bytes a fixed non-zero
// pattern. Returns the tensor bytes written.
absl::StatusOr<uint64_t> WriteSafetensors(
    const std::string& path, const std::string& dtype, uint64_t element_bytes,
    const std::vector<TensorLayout>& tensors);

// A ModelManager over the DeviceSet `device_options` describe.
absl::StatusOr<std::unique_ptr<ModelManager>> CreateModelManager(
    const DeviceSet::Options& device_options,
    const ModelManager::Options& options);

// Drops the benchmark's reference to a loaded model and unloads it, so the
// next Load of the file reads it again.
void UnloadModel(ModelManager& manager, ModelManager::LoadResult& loaded);

// A `backend` reader with `queue_depth` reads in flight (and as many pread
// threads where it is the pread reader).
absl::StatusOr<std::unique_ptr<Reader>> CreateReaderWithDepth(IoBackend backend,
                                                              int queue_depth);

// Reads the first `size` bytes of `fd` into `dst` through `reader` in
// `chunk`-byte requests, as many in flight as its queue depth; a short read
// is DATA_LOSS.
absl::Status ReadWithReader(Reader* reader, int fd, uint64_t size,
                            uint64_t chunk, uint8_t* dst);

}  // namespace bench
}  // namespace weightd

#endif  // WEIGHTD_TESTS_BENCH_BENCH_UTIL_H_
