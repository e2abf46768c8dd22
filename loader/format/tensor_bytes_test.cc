#include "loader/format/tensor_bytes.h"

#include <cstring>
#include <vector>

#include "gtest/gtest.h"
#include "loader/common/sha256.h"

namespace weightd {
namespace {

TensorInfo Make(DType dtype, std::vector<int64_t> shape,
                std::vector<int64_t> stride, int64_t offset) {
  TensorInfo t;
  t.name = "t";
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.stride = std::move(stride);
  t.storage_offset = offset;
  return t;
}

std::vector<uint8_t> Floats(std::vector<float> v) {
  std::vector<uint8_t> b(v.size() * 4);
  memcpy(b.data(), v.data(), b.size());
  return b;
}

TEST(TensorBytesTest, Contiguous) {
  auto s = Floats({1, 2, 3, 4, 5, 6});
  std::string out;
  ASSERT_TRUE(GatherTensorBytes(Make(DType::kFloat32, {2, 3}, {3, 1}, 0),
                                s.data(), s.size(), ByteOrder::kLittle, &out)
                  .ok());
  EXPECT_EQ(out, std::string(reinterpret_cast<char*>(s.data()), s.size()));
  EXPECT_EQ(TensorSha256Hex(Make(DType::kFloat32, {2, 3}, {3, 1}, 0), s.data(),
                            s.size(), ByteOrder::kLittle),
            Sha256Hex(out));
}

TEST(TensorBytesTest, TransposeOffsetExpand) {
  auto s = Floats({0, 1, 2, 3, 4, 5, 6});
  std::string out;
  // Transpose of a 2x3 starting at element 1.
  ASSERT_TRUE(GatherTensorBytes(Make(DType::kFloat32, {3, 2}, {1, 3}, 1),
                                s.data(), s.size(), ByteOrder::kLittle, &out)
                  .ok());
  auto want = Floats({1, 4, 2, 5, 3, 6});
  EXPECT_EQ(out, std::string(want.begin(), want.end()));
  // Stride-0 expand.
  ASSERT_TRUE(GatherTensorBytes(Make(DType::kFloat32, {2, 2}, {0, 1}, 2),
                                s.data(), s.size(), ByteOrder::kLittle, &out)
                  .ok());
  want = Floats({2, 3, 2, 3});
  EXPECT_EQ(out, std::string(want.begin(), want.end()));
  // 0-dim and empty.
  ASSERT_TRUE(GatherTensorBytes(Make(DType::kFloat32, {}, {}, 5), s.data(),
                                s.size(), ByteOrder::kLittle, &out)
                  .ok());
  want = Floats({5});
  EXPECT_EQ(out, std::string(want.begin(), want.end()));
  ASSERT_TRUE(GatherTensorBytes(Make(DType::kFloat32, {0, 3}, {3, 1}, 0),
                                s.data(), s.size(), ByteOrder::kLittle, &out)
                  .ok());
  EXPECT_TRUE(out.empty());
}

TEST(TensorBytesTest, BigEndianSwapsPerElementAndComponent) {
  std::vector<uint8_t> s = {0, 1, 0, 2, 1, 2, 3, 4, 5, 6, 7, 8};
  std::string out;
  ASSERT_TRUE(GatherTensorBytes(Make(DType::kInt16, {2}, {1}, 0), s.data(),
                                s.size(), ByteOrder::kBig, &out)
                  .ok());
  EXPECT_EQ(out, std::string("\x01\x00\x02\x00", 4));
  ASSERT_TRUE(GatherTensorBytes(Make(DType::kComplex64, {1}, {1}, 0),
                                s.data() + 4, 8, ByteOrder::kBig, &out)
                  .ok());
  EXPECT_EQ(out, std::string("\x04\x03\x02\x01\x08\x07\x06\x05", 8));
}

TEST(TensorBytesTest, RefusesViewsOutsideTheStorage) {
  auto s = Floats({1, 2, 3, 4});
  std::string out;
  EXPECT_FALSE(GatherTensorBytes(Make(DType::kFloat32, {2, 2}, {2, 1}, 1),
                                 s.data(), s.size(), ByteOrder::kLittle, &out)
                   .ok());
  EXPECT_FALSE(CheckTensorView(
                   Make(DType::kFloat32, {INT64_MAX, 2}, {INT64_MAX, 1}, 0), 16)
                   .ok());
  EXPECT_EQ(TensorSha256Hex(Make(DType::kFloat32, {5}, {1}, 0), s.data(),
                            s.size(), ByteOrder::kLittle),
            "");
}

TEST(TensorBytesTest, LargeStridedMatchesNaive) {
  // 64 x 100 int32 matrix, take every other column of a transposed view.
  std::vector<int32_t> v(6400);
  for (int i = 0; i < 6400; ++i) v[i] = i * 7;
  TensorInfo t = Make(DType::kInt32, {50, 64}, {2, 100}, 0);
  std::string out;
  ASSERT_TRUE(GatherTensorBytes(t, reinterpret_cast<uint8_t*>(v.data()),
                                v.size() * 4, ByteOrder::kLittle, &out)
                  .ok());
  std::vector<int32_t> want;
  for (int i = 0; i < 50; ++i) {
    for (int j = 0; j < 64; ++j) want.push_back(v[i * 2 + j * 100]);
  }
  ASSERT_EQ(out.size(), want.size() * 4);
  EXPECT_EQ(memcmp(out.data(), want.data(), out.size()), 0);
}

}  // namespace
}  // namespace weightd
