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
#include <string>
#include <thread>
#include <vector>

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

}  // namespace bench
}  // namespace weightd

#endif  // WEIGHTD_TESTS_BENCH_BENCH_UTIL_H_
