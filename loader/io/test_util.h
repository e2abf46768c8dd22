// Test helpers: temporary files filled with a recognizable byte pattern.
#ifndef WEIGHTD_LOADER_IO_TEST_UTIL_H_
#define WEIGHTD_LOADER_IO_TEST_UTIL_H_

#include <cstdint>
#include <string>

namespace weightd {
namespace testing {

// The pattern byte at `offset` of a file made with `seed`.
inline uint8_t PatternByte(uint64_t offset, uint32_t seed) {
  uint64_t x = (offset + 1) * 0x9E3779B97F4A7C15ull ^ (uint64_t{seed} << 32);
  return static_cast<uint8_t>((x >> 29) ^ (x >> 47));
}

// A fresh path under TEST_TMPDIR (or /tmp).
std::string TempPath(const std::string& stem);

// Writes `size` pattern bytes to a new temporary file; returns its path.
std::string WritePatternFile(const std::string& stem, uint64_t size,
                             uint32_t seed);

// The first offset in [0, size) where `data` differs from the pattern
// starting at file offset `file_offset`, or -1 when it matches.
int64_t FirstPatternMismatch(const uint8_t* data, uint64_t size,
                             uint64_t file_offset, uint32_t seed);

}  // namespace testing
}  // namespace weightd

#endif  // WEIGHTD_LOADER_IO_TEST_UTIL_H_
