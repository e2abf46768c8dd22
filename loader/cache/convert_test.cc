#include "loader/cache/convert.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "loader/cache/cast_kernels.h"

namespace weightd {
namespace {

std::vector<uint16_t> CastFloats(const std::vector<float>& values, DType to) {
  std::vector<uint16_t> out(values.size());
  EXPECT_TRUE(CastElements(reinterpret_cast<const uint8_t*>(values.data()),
                           DType::kFloat32, ByteOrder::kLittle, values.size(),
                           reinterpret_cast<uint8_t*>(out.data()), to)
                  .ok());
  return out;
}

TEST(ConvertTest, Float32ToBFloat16RoundsToNearestEven) {
  // 1.0, -2.5, the tie 1 + 2^-8 (rounds down to even), just above the tie
  // (rounds up), inf.
  uint32_t tie_bits = 0x3F808000u, above_bits = 0x3F808001u;
  float tie, above;
  std::memcpy(&tie, &tie_bits, 4);
  std::memcpy(&above, &above_bits, 4);
  auto out = CastFloats({1.0f, -2.5f, tie, above, INFINITY}, DType::kBFloat16);
  EXPECT_EQ(out,
            (std::vector<uint16_t>{0x3F80, 0xC020, 0x3F80, 0x3F81, 0x7F80}));
  auto nan = CastFloats({NAN}, DType::kBFloat16);
  EXPECT_EQ(nan[0] & 0x7F80, 0x7F80);
  EXPECT_NE(nan[0] & 0x007F, 0);
}

TEST(ConvertTest, Float32ToFloat16CoversNormalsSubnormalsAndOverflow) {
  auto out = CastFloats(
      {1.0f, 65504.0f, 65520.0f, 5.9604645e-08f, -0.0f, 0.333333343f},
      DType::kFloat16);
  EXPECT_EQ(out, (std::vector<uint16_t>{0x3C00, 0x7BFF, 0x7C00, 0x0001, 0x8000,
                                        0x3555}));
}

TEST(ConvertTest, HalfAndBFloat16WidenExactly) {
  std::vector<uint16_t> halves = {0x3C00, 0x0001, 0xFC00, 0x3555};
  std::vector<float> widened(halves.size());
  ASSERT_TRUE(CastElements(reinterpret_cast<const uint8_t*>(halves.data()),
                           DType::kFloat16, ByteOrder::kLittle, halves.size(),
                           reinterpret_cast<uint8_t*>(widened.data()),
                           DType::kFloat32)
                  .ok());
  EXPECT_EQ(widened[0], 1.0f);
  EXPECT_EQ(widened[1], 5.9604645e-08f);
  EXPECT_EQ(widened[2], -INFINITY);
  EXPECT_FLOAT_EQ(widened[3], 0.333251953f);
}

TEST(ConvertTest, BigEndianSourcesAreSwappedWhileCasting) {
  const uint8_t big_one[4] = {0x3F, 0x80, 0x00, 0x00};  // 1.0f big-endian
  uint16_t out = 0;
  ASSERT_TRUE(CastElements(big_one, DType::kFloat32, ByteOrder::kBig, 1,
                           reinterpret_cast<uint8_t*>(&out), DType::kBFloat16)
                  .ok());
  EXPECT_EQ(out, 0x3F80);
  float same = 0;
  ASSERT_TRUE(CastElements(big_one, DType::kFloat32, ByteOrder::kBig, 1,
                           reinterpret_cast<uint8_t*>(&same), DType::kFloat32)
                  .ok());
  EXPECT_EQ(same, 1.0f);
}

TEST(ConvertTest, RefusesNonFloatCasts) {
  uint8_t byte = 0;
  EXPECT_EQ(CastElements(&byte, DType::kInt8, ByteOrder::kLittle, 1, &byte,
                         DType::kFloat16)
                .message(),
            "cannot cast int8 to float16");
}

TEST(ConvertTest, SwapsEachElementAndEachComplexHalf) {
  uint8_t data[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  SwapBytesInPlace(data, 8, SwapUnit(DType::kComplex64));
  EXPECT_EQ(std::vector<uint8_t>(data, data + 8),
            (std::vector<uint8_t>{4, 3, 2, 1, 8, 7, 6, 5}));
  SwapBytesInPlace(data, 8, SwapUnit(DType::kUInt8));
  EXPECT_EQ(data[0], 4);
}

// ---- the kernels: scalar and vector forms give the same bytes ----

using Narrow = void (*)(const uint8_t*, size_t, uint8_t*, CastIsa);

std::vector<CastIsa> Isas() {
  std::vector<CastIsa> isas = {CastIsa::kScalar};
  if (BestCastIsa() != CastIsa::kScalar) isas.push_back(BestCastIsa());
  return isas;
}

std::vector<uint16_t> NarrowBits(Narrow narrow, const std::vector<uint32_t>& in,
                                 CastIsa isa) {
  std::vector<uint16_t> out(in.size());
  narrow(reinterpret_cast<const uint8_t*>(in.data()), in.size(),
         reinterpret_cast<uint8_t*>(out.data()), isa);
  return out;
}

uint32_t Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

float FromBits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

float HalfValue(uint16_t h) {
  float f;
  EXPECT_TRUE(CastElements(reinterpret_cast<const uint8_t*>(&h),
                           DType::kFloat16, ByteOrder::kLittle, 1,
                           reinterpret_cast<uint8_t*>(&f), DType::kFloat32)
                  .ok());
  return f;
}

float BFloat16Value(uint16_t h) { return FromBits(uint32_t{h} << 16); }

// Float32 inputs that exercise rounding of a 16-bit format whose positive
// finite patterns are [0, last] in increasing order: every pattern, every
// midpoint between neighbours (the ties, exactly representable in float32)
// and the floats just below and above each midpoint; with `expected` the
// correctly rounded result. The midpoint past `last` (half the way to the
// next power) must round to inf.
struct RoundingCase {
  uint32_t input;
  uint16_t expected;
};

std::vector<RoundingCase> RoundingCases(float (*value)(uint16_t), uint16_t last,
                                        uint16_t inf, double beyond_last) {
  std::vector<RoundingCase> cases;
  for (uint16_t sign : {uint16_t{0}, uint16_t{0x8000}}) {
    for (uint32_t p = 0; p <= last; ++p) {
      const uint16_t low = static_cast<uint16_t>(p) | sign;
      const uint16_t high = p == last ? (inf | sign) : (low + 1);
      const float a = value(low);
      // Past the last finite value: the next power of two, which float32
      // may not hold (bfloat16's is 2^128), so in double.
      const double b =
          p == last ? (sign ? -beyond_last : beyond_last) : double{value(high)};
      cases.push_back({Bits(a), low});
      const double exact_mid = (double{a} + b) / 2;
      const float mid = static_cast<float>(exact_mid);
      EXPECT_EQ(double{mid}, exact_mid) << "midpoint not a float32: " << low;
      cases.push_back({Bits(mid), (low & 1) ? high : low});
      cases.push_back({Bits(std::nextafter(mid, a)), low});
      cases.push_back({Bits(std::nextafter(mid, static_cast<float>(b))), high});
    }
  }
  return cases;
}

void CheckRounding(Narrow narrow, const std::vector<RoundingCase>& cases,
                   const char* what) {
  std::vector<uint32_t> inputs;
  for (const RoundingCase& c : cases) inputs.push_back(c.input);
  for (CastIsa isa : Isas()) {
    const std::vector<uint16_t> out = NarrowBits(narrow, inputs, isa);
    int failures = 0;
    for (size_t i = 0; i < cases.size() && failures < 10; ++i) {
      if (out[i] != cases[i].expected) {
        ++failures;
        ADD_FAILURE() << what << " " << CastIsaName(isa) << ": float bits 0x"
                      << std::hex << cases[i].input << " gave 0x" << out[i]
                      << ", want 0x" << cases[i].expected;
      }
    }
  }
}

TEST(CastKernelsTest, Float32ToBFloat16RoundsEveryPatternAndTie) {
  // Largest finite bfloat16 0x7f7f; the next power of two is 2^128.
  CheckRounding(
      Float32ToBFloat16,
      RoundingCases(BFloat16Value, 0x7f7f, 0x7f80, std::ldexp(1.0, 128)),
      "bfloat16");
}

TEST(CastKernelsTest, Float32ToFloat16RoundsEveryPatternTieAndSubnormal) {
  // Largest finite half 65504; the midpoint to 65536 (65520) overflows.
  CheckRounding(Float32ToFloat16,
                RoundingCases(HalfValue, 0x7bff, 0x7c00, 65536.0), "float16");
}

TEST(CastKernelsTest, EverySixteenBitPatternRoundTrips) {
  std::vector<uint16_t> all(65536);
  for (uint32_t i = 0; i < 65536; ++i) all[i] = static_cast<uint16_t>(i);
  for (DType narrow : {DType::kFloat16, DType::kBFloat16}) {
    std::vector<float> wide(all.size());
    ASSERT_TRUE(CastElements(reinterpret_cast<const uint8_t*>(all.data()),
                             narrow, ByteOrder::kLittle, all.size(),
                             reinterpret_cast<uint8_t*>(wide.data()),
                             DType::kFloat32)
                    .ok());
    std::vector<uint16_t> back(all.size());
    ASSERT_TRUE(CastElements(reinterpret_cast<const uint8_t*>(wide.data()),
                             DType::kFloat32, ByteOrder::kLittle, wide.size(),
                             reinterpret_cast<uint8_t*>(back.data()), narrow)
                    .ok());
    const uint16_t exponent = narrow == DType::kFloat16 ? 0x7c00 : 0x7f80;
    for (uint32_t i = 0; i < 65536; ++i) {
      const bool nan = (i & exponent) == exponent && (i & ~(exponent | 0x8000));
      if (!nan) {
        ASSERT_EQ(back[i], i) << DTypeName(narrow) << " pattern " << i;
        continue;
      }
      // A NaN stays a quiet NaN of the same sign.
      const uint16_t quiet = narrow == DType::kFloat16 ? 0x0200 : 0x0040;
      EXPECT_EQ(back[i] & (exponent | quiet), exponent | quiet) << i;
      EXPECT_EQ(back[i] & 0x8000, i & 0x8000) << i;
      EXPECT_TRUE(std::isnan(wide[i])) << i;
    }
  }
}

TEST(CastKernelsTest, NaNPayloadsStayQuietNaNsWithTheirSign) {
  std::vector<uint32_t> nans;
  for (uint32_t sign : {0u, 0x80000000u}) {
    for (uint32_t payload : {1u, 0x1fffu, 0x2000u, 0xffffu, 0x10000u, 0x3fffffu,
                             0x400000u, 0x400001u, 0x7fffffu}) {
      nans.push_back(sign | 0x7f800000u | payload);
    }
  }
  for (CastIsa isa : Isas()) {
    const std::vector<uint16_t> bf = NarrowBits(Float32ToBFloat16, nans, isa);
    const std::vector<uint16_t> half = NarrowBits(Float32ToFloat16, nans, isa);
    for (size_t i = 0; i < nans.size(); ++i) {
      EXPECT_EQ(bf[i], (nans[i] >> 16) | 0x40) << CastIsaName(isa) << i;
      EXPECT_EQ(half[i], ((nans[i] >> 16) & 0x8000) | 0x7e00)
          << CastIsaName(isa) << i;
    }
  }
}

TEST(CastKernelsTest, VectorMatchesScalarOnRandomInputsAnyLengthAndAlignment) {
  if (BestCastIsa() == CastIsa::kScalar) {
    GTEST_SKIP() << "this CPU runs only the scalar kernels";
  }
  std::mt19937_64 random(13);
  std::vector<uint8_t> src(4 * 4096 + 64);
  for (uint8_t& b : src) b = static_cast<uint8_t>(random());
  std::vector<uint8_t> vector_out(2 * 4096 + 64), scalar_out(vector_out.size());
  for (Narrow narrow : {Float32ToBFloat16, Float32ToFloat16}) {
    for (size_t count : {0, 1, 7, 8, 15, 16, 17, 31, 33, 100, 4095, 4096}) {
      for (size_t src_shift : {0, 1, 3}) {
        for (size_t dst_shift : {0, 1}) {
          std::fill(vector_out.begin(), vector_out.end(), 0xcd);
          std::fill(scalar_out.begin(), scalar_out.end(), 0xcd);
          narrow(src.data() + src_shift, count, vector_out.data() + dst_shift,
                 BestCastIsa());
          narrow(src.data() + src_shift, count, scalar_out.data() + dst_shift,
                 CastIsa::kScalar);
          ASSERT_EQ(vector_out, scalar_out) << "count " << count << " shifts "
                                            << src_shift << " " << dst_shift;
        }
      }
    }
  }
  // Many random bit patterns (every exponent, both signs).
  std::vector<uint32_t> patterns(1 << 20);
  for (uint32_t& p : patterns) p = static_cast<uint32_t>(random());
  for (Narrow narrow : {Float32ToBFloat16, Float32ToFloat16}) {
    EXPECT_EQ(NarrowBits(narrow, patterns, BestCastIsa()),
              NarrowBits(narrow, patterns, CastIsa::kScalar));
  }
}

TEST(CastKernelsTest, SwapsMatchAReferenceForEveryUnitLengthAndAlignment) {
  std::mt19937_64 random(7);
  std::vector<uint8_t> src(300);
  for (uint8_t& b : src) b = static_cast<uint8_t>(random());
  for (size_t unit : {1, 2, 4, 8}) {
    for (size_t size : {0, 1, 2, 5, 8, 31, 32, 33, 64, 100, 255}) {
      for (size_t shift : {0, 1, 3}) {
        std::vector<uint8_t> want(src.begin() + shift,
                                  src.begin() + shift + size);
        for (size_t g = 0; g + unit <= size; g += unit) {
          std::reverse(want.begin() + g, want.begin() + g + unit);
        }
        for (CastIsa isa : Isas()) {
          std::vector<uint8_t> out(size + 1, 0xcd);
          SwapBytesCopy(src.data() + shift, out.data() + 1, size, unit, isa);
          EXPECT_EQ(std::vector<uint8_t>(out.begin() + 1, out.end()), want)
              << CastIsaName(isa) << " unit " << unit << " size " << size;
          std::vector<uint8_t> in_place(src.begin() + shift,
                                        src.begin() + shift + size);
          SwapBytesCopy(in_place.data(), in_place.data(), size, unit, isa);
          EXPECT_EQ(in_place, want) << "in place";
        }
      }
    }
  }
}

TEST(CastKernelsTest, BigEndianFloat32CastsAcrossSwapBlocks) {
  // More elements than one swap block, not a multiple of it.
  const size_t count = 5000;
  std::mt19937 random(3);
  std::vector<float> little(count);
  for (float& f : little)
    f = std::ldexp(float(random()) / 4e9f, int(random() % 40) - 20);
  std::vector<uint8_t> big(4 * count);
  SwapBytesCopy(reinterpret_cast<const uint8_t*>(little.data()), big.data(),
                big.size(), 4, CastIsa::kScalar);
  for (DType to : {DType::kBFloat16, DType::kFloat16}) {
    std::vector<uint16_t> from_big(count), from_little(count);
    ASSERT_TRUE(CastElements(big.data(), DType::kFloat32, ByteOrder::kBig,
                             count, reinterpret_cast<uint8_t*>(from_big.data()),
                             to)
                    .ok());
    ASSERT_TRUE(CastElements(reinterpret_cast<const uint8_t*>(little.data()),
                             DType::kFloat32, ByteOrder::kLittle, count,
                             reinterpret_cast<uint8_t*>(from_little.data()), to)
                    .ok());
    EXPECT_EQ(from_big, from_little);
  }
}

}  // namespace
}  // namespace weightd
