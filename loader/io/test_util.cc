#include "loader/io/test_util.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "absl/strings/str_cat.h"

namespace weightd {
namespace testing {

std::string TempPath(const std::string& stem) {
  static std::atomic<int> counter{0};
  const char* dir = std::getenv("TEST_TMPDIR");
  return absl::StrCat(dir != nullptr ? dir : "/tmp", "/", stem, "-", getpid(),
                      "-", counter.fetch_add(1));
}

std::string WritePatternFile(const std::string& stem, uint64_t size,
                             uint32_t seed) {
  std::string path = TempPath(stem);
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return "";
  std::vector<uint8_t> block(1 << 20);
  for (uint64_t done = 0; done < size;) {
    size_t n =
        static_cast<size_t>(std::min<uint64_t>(block.size(), size - done));
    for (size_t i = 0; i < n; ++i) block[i] = PatternByte(done + i, seed);
    std::fwrite(block.data(), 1, n, f);
    done += n;
  }
  std::fclose(f);
  return path;
}

int64_t FirstPatternMismatch(const uint8_t* data, uint64_t size,
                             uint64_t file_offset, uint32_t seed) {
  for (uint64_t i = 0; i < size; ++i) {
    if (data[i] != PatternByte(file_offset + i, seed)) {
      return static_cast<int64_t>(i);
    }
  }
  return -1;
}

}  // namespace testing
}  // namespace weightd
