#include "loader/cache/convert.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "gtest/gtest.h"

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

}  // namespace
}  // namespace weightd
