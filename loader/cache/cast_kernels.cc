#include "loader/cache/cast_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

namespace weightd {

uint16_t FloatBitsToBFloat16(uint32_t bits) {
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<uint16_t>((bits >> 16) | 0x40);
  }
  // Cannot overflow 32 bits: the largest non-NaN is 0xff800000.
  const uint32_t rounding = 0x7fff + ((bits >> 16) & 1);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

uint16_t FloatBitsToHalf(uint32_t bits) {
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000);
  const uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00;   // NaN: quiet, sign kept
  if (abs >= 0x477ff000u) return sign | 0x7c00;  // inf, or rounds past 65504
  if (abs < 0x38800000u) {  // below the smallest normal half
    // Subnormal: value / 2^-24 (exact: a power-of-two scale of a value below
    // 2^10), rounded to nearest even.
    float magnitude;
    std::memcpy(&magnitude, &abs, 4);
    return sign |
           static_cast<uint16_t>(std::nearbyint(magnitude * 16777216.0f));
  }
  const uint32_t exponent = (abs >> 23) - 127 + 15;
  const uint32_t mantissa = abs & 0x7fffff;
  uint32_t half = exponent << 10 | mantissa >> 13;
  const uint32_t rest = mantissa & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (half & 1))) ++half;  // may carry
  return sign | static_cast<uint16_t>(half);
}

namespace {

uint32_t LoadBits(const uint8_t* p) {
  uint32_t bits;
  std::memcpy(&bits, p, 4);
  return bits;
}

void StoreHalf(uint8_t* p, uint16_t value) { std::memcpy(p, &value, 2); }

void Float32ToBFloat16Scalar(const uint8_t* src, size_t count, uint8_t* dst) {
  for (size_t i = 0; i < count; ++i) {
    StoreHalf(dst + 2 * i, FloatBitsToBFloat16(LoadBits(src + 4 * i)));
  }
}

void Float32ToFloat16Scalar(const uint8_t* src, size_t count, uint8_t* dst) {
  for (size_t i = 0; i < count; ++i) {
    StoreHalf(dst + 2 * i, FloatBitsToHalf(LoadBits(src + 4 * i)));
  }
}

template <typename T, T (*kSwap)(T)>
void SwapCopyUnit(const uint8_t* src, uint8_t* dst, size_t count) {
  for (size_t i = 0; i < count; ++i) {
    T value;
    std::memcpy(&value, src + i * sizeof(T), sizeof(T));
    value = kSwap(value);
    std::memcpy(dst + i * sizeof(T), &value, sizeof(T));
  }
}

uint16_t Swap16(uint16_t v) { return __builtin_bswap16(v); }
uint32_t Swap32(uint32_t v) { return __builtin_bswap32(v); }
uint64_t Swap64(uint64_t v) { return __builtin_bswap64(v); }

// Whole groups only; the caller copies the tail.
void SwapBytesCopyScalar(const uint8_t* src, uint8_t* dst, size_t groups,
                         size_t unit) {
  switch (unit) {
    case 2:
      SwapCopyUnit<uint16_t, Swap16>(src, dst, groups);
      return;
    case 4:
      SwapCopyUnit<uint32_t, Swap32>(src, dst, groups);
      return;
    case 8:
      SwapCopyUnit<uint64_t, Swap64>(src, dst, groups);
      return;
    default:
      for (size_t g = 0; g < groups; ++g) {
        const uint8_t* in = src + g * unit;
        uint8_t* out = dst + g * unit;
        if (in == out) {
          std::reverse(out, out + unit);
        } else {
          std::reverse_copy(in, in + unit, out);
        }
      }
  }
}

#if defined(__x86_64__)

#define WEIGHTD_AVX2 __attribute__((target("avx2,f16c")))

// Eight float32 (as bits) to eight bfloat16 in the low 16 bits of each lane.
WEIGHTD_AVX2 inline __m256i BFloat16Lanes(__m256i bits) {
  const __m256i abs = _mm256_and_si256(bits, _mm256_set1_epi32(0x7fffffff));
  const __m256i is_nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7f800000));
  const __m256i high = _mm256_srli_epi32(bits, 16);
  const __m256i lsb = _mm256_and_si256(high, _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_srli_epi32(
      _mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))),
      16);
  const __m256i nan = _mm256_or_si256(high, _mm256_set1_epi32(0x40));
  return _mm256_blendv_epi8(rounded, nan, is_nan);
}

// Eight float32 to eight float16 (F16C rounds to nearest even, overflows to
// inf, rounds subnormals); NaN lanes replaced by sign | 0x7e00.
WEIGHTD_AVX2 inline __m256i HalfLanes(__m256i bits) {
  const __m128i converted =
      _mm256_cvtps_ph(_mm256_castsi256_ps(bits), _MM_FROUND_TO_NEAREST_INT);
  const __m256i widened = _mm256_cvtepu16_epi32(converted);
  const __m256i abs = _mm256_and_si256(bits, _mm256_set1_epi32(0x7fffffff));
  const __m256i is_nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7f800000));
  const __m256i nan = _mm256_or_si256(
      _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(0x8000)),
      _mm256_set1_epi32(0x7e00));
  return _mm256_blendv_epi8(widened, nan, is_nan);
}

// Sixteen float32 per step through `lanes`; the tail goes to `scalar`.
template <__m256i (*kLanes)(__m256i)>
WEIGHTD_AVX2 void NarrowAvx2(const uint8_t* src, size_t count, uint8_t* dst,
                             void (*scalar)(const uint8_t*, size_t, uint8_t*)) {
  size_t i = 0;
  for (; i + 16 <= count; i += 16) {
    const __m256i a = kLanes(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 4 * i)));
    const __m256i b = kLanes(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 4 * i + 32)));
    // Every lane is in [0, 0xffff]: the unsigned-saturating pack is exact.
    // It interleaves 128-bit halves (a0 b0 a1 b1); the permute restores order.
    const __m256i packed =
        _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xd8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 2 * i), packed);
  }
  scalar(src + 4 * i, count - i, dst + 2 * i);
}

WEIGHTD_AVX2 void SwapBytesCopyAvx2(const uint8_t* src, uint8_t* dst,
                                    size_t groups, size_t unit) {
  __m256i shuffle;
  switch (unit) {
    case 2:
      shuffle = _mm256_setr_epi8(1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12,
                                 15, 14, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10,
                                 13, 12, 15, 14);
      break;
    case 4:
      shuffle = _mm256_setr_epi8(3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14,
                                 13, 12, 3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8,
                                 15, 14, 13, 12);
      break;
    case 8:
      shuffle = _mm256_setr_epi8(7, 6, 5, 4, 3, 2, 1, 0, 15, 14, 13, 12, 11, 10,
                                 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 15, 14, 13, 12,
                                 11, 10, 9, 8);
      break;
    default:
      SwapBytesCopyScalar(src, dst, groups, unit);
      return;
  }
  const size_t size = groups * unit;
  size_t i = 0;
  for (; i + 32 <= size; i += 32) {
    const __m256i v =
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i),
                        _mm256_shuffle_epi8(v, shuffle));
  }
  SwapBytesCopyScalar(src + i, dst + i, (size - i) / unit, unit);
}

bool CpuHasAvx2() {
  __builtin_cpu_init();
  // F16C from CPUID leaf 1 (ECX bit 29): clang's __builtin_cpu_supports has
  // no "f16c"; the avx2 check covers the OS saving the AVX registers.
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C);
  return __builtin_cpu_supports("avx2") && f16c;
}

#endif  // __x86_64__

}  // namespace

CastIsa BestCastIsa() {
#if defined(__x86_64__)
  static const CastIsa best = CpuHasAvx2() ? CastIsa::kAvx2 : CastIsa::kScalar;
  return best;
#else
  return CastIsa::kScalar;
#endif
}

const char* CastIsaName(CastIsa isa) {
  return isa == CastIsa::kAvx2 ? "avx2" : "scalar";
}

void Float32ToBFloat16(const uint8_t* src, size_t count, uint8_t* dst,
                       CastIsa isa) {
#if defined(__x86_64__)
  if (isa == CastIsa::kAvx2 && BestCastIsa() == CastIsa::kAvx2) {
    NarrowAvx2<BFloat16Lanes>(src, count, dst, Float32ToBFloat16Scalar);
    return;
  }
#endif
  Float32ToBFloat16Scalar(src, count, dst);
}

void Float32ToFloat16(const uint8_t* src, size_t count, uint8_t* dst,
                      CastIsa isa) {
#if defined(__x86_64__)
  if (isa == CastIsa::kAvx2 && BestCastIsa() == CastIsa::kAvx2) {
    NarrowAvx2<HalfLanes>(src, count, dst, Float32ToFloat16Scalar);
    return;
  }
#endif
  Float32ToFloat16Scalar(src, count, dst);
}

void SwapBytesCopy(const uint8_t* src, uint8_t* dst, size_t size, size_t unit,
                   CastIsa isa) {
  if (unit <= 1) {
    if (src != dst) std::memmove(dst, src, size);
    return;
  }
  const size_t groups = size / unit;
  const size_t tail = size - groups * unit;
  if (tail != 0 && src != dst) {
    std::memcpy(dst + groups * unit, src + groups * unit, tail);
  }
#if defined(__x86_64__)
  if (isa == CastIsa::kAvx2 && BestCastIsa() == CastIsa::kAvx2) {
    SwapBytesCopyAvx2(src, dst, groups, unit);
    return;
  }
#endif
  SwapBytesCopyScalar(src, dst, groups, unit);
}

}  // namespace weightd
