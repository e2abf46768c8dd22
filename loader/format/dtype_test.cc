#include "loader/format/dtype.h"

#include "gtest/gtest.h"

namespace weightd {
namespace {

TEST(DTypeTest, NamesRoundTrip) {
  for (int i = 0; i <= static_cast<int>(DType::kQUInt2x4); ++i) {
    DType d = static_cast<DType>(i);
    auto back = DTypeFromName(DTypeName(d));
    ASSERT_TRUE(back.ok()) << DTypeName(d);
    EXPECT_EQ(*back, d);
  }
}

TEST(DTypeTest, SizesAndAliases) {
  EXPECT_EQ(DTypeSize(DType::kFloat32), 4u);
  EXPECT_EQ(DTypeSize(DType::kBFloat16), 2u);
  EXPECT_EQ(DTypeSize(DType::kComplex32), 4u);
  EXPECT_EQ(DTypeSize(DType::kComplex128), 16u);
  EXPECT_EQ(DTypeSize(DType::kFloat8E4M3FN), 1u);
  EXPECT_EQ(DTypeSize(DType::kUInt64), 8u);
  EXPECT_EQ(*DTypeFromName("torch.float"), DType::kFloat32);
  EXPECT_EQ(*DTypeFromName("half"), DType::kFloat16);
  EXPECT_EQ(*DTypeFromName("cdouble"), DType::kComplex128);
  EXPECT_FALSE(DTypeFromName("float128").ok());
  EXPECT_EQ(DTypeName(DType::kFloat8E5M2FNUZ), "float8_e5m2fnuz");
}

TEST(DTypeTest, StorageClassesAndSafetensors) {
  EXPECT_EQ(*DTypeFromStorageClass("FloatStorage"), DType::kFloat32);
  EXPECT_EQ(*DTypeFromStorageClass("BFloat16Storage"), DType::kBFloat16);
  EXPECT_EQ(*DTypeFromStorageClass("QInt8Storage"), DType::kQInt8);
  EXPECT_FALSE(DTypeFromStorageClass("UntypedStorage").ok());
  EXPECT_EQ(*DTypeFromSafetensorsName("F8_E4M3"), DType::kFloat8E4M3FN);
  EXPECT_EQ(*DTypeFromSafetensorsName("BOOL"), DType::kBool);
  EXPECT_EQ(*DTypeFromSafetensorsName("U16"), DType::kUInt16);
  EXPECT_FALSE(DTypeFromSafetensorsName("F4").ok());
  EXPECT_EQ(DTypeSafetensorsName(DType::kBFloat16), "BF16");
  EXPECT_TRUE(DTypeIsQuantized(DType::kQUInt4x2));
  EXPECT_FALSE(DTypeIsQuantized(DType::kUInt8));
}

}  // namespace
}  // namespace weightd
