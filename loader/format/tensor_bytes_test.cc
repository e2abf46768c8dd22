#include "loader/format/tensor_bytes.h"

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
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

using ::testing::HasSubstr;

// torch.ones(1).expand(2**40): a 4-byte storage claiming 4 TiB. Producing its
// bytes must be refused at once (it used to run for hours, and
// GatherTensorBytes reserved the claimed 4 TiB).
TEST(TensorBytesTest, RefusesExpandedViewFarLargerThanItsStorage) {
  auto s = Floats({1});
  TensorInfo bomb = Make(DType::kFloat32, {int64_t{1} << 40}, {0}, 0);
  bomb.name = "x";
  absl::Status status = CheckViewWorkBounded(bomb, s.size());
  ASSERT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr("tensor \"x\""));
  EXPECT_THAT(status.message(), HasSubstr("claims 4398046511104 bytes"));
  EXPECT_THAT(status.message(), HasSubstr("over a storage of 4 bytes"));
  std::string out;
  EXPECT_EQ(
      GatherTensorBytes(bomb, s.data(), s.size(), ByteOrder::kLittle, &out)
          .message(),
      status.message());
  EXPECT_TRUE(out.empty());
  size_t chunks = 0;
  EXPECT_FALSE(ForEachTensorChunk(bomb, s.data(), s.size(), ByteOrder::kLittle,
                                  [&](absl::string_view) { ++chunks; })
                   .ok());
  EXPECT_EQ(chunks, 0u);
  EXPECT_EQ(TensorSha256(bomb, s.data(), s.size(), ByteOrder::kLittle)
                .status()
                .message(),
            status.message());
  EXPECT_EQ(TensorSha256Hex(bomb, s.data(), s.size(), ByteOrder::kLittle), "");
}

TEST(TensorBytesTest, RefusesOverlappingViewFarLargerThanItsStorage) {
  // as_strided((2**20, 2**20), (1, 1)) over 2**21 floats: 4 TiB from 8 MiB.
  std::vector<float> storage(size_t{1} << 21, 1.0f);
  TensorInfo overlap =
      Make(DType::kFloat32, {int64_t{1} << 20, int64_t{1} << 20}, {1, 1}, 0);
  const auto* bytes = reinterpret_cast<const uint8_t*>(storage.data());
  ASSERT_TRUE(CheckTensorView(overlap, storage.size() * 4).ok());
  std::string out;
  EXPECT_THAT(GatherTensorBytes(overlap, bytes, storage.size() * 4,
                                ByteOrder::kLittle, &out)
                  .message(),
              HasSubstr("expanded or overlapping view"));
}

TEST(TensorBytesTest, RefusesShapesWhoseBytesOverflow) {
  auto s = Floats({1});
  TensorInfo huge =
      Make(DType::kFloat32, {int64_t{1} << 40, int64_t{1} << 40}, {0, 0}, 0);
  EXPECT_FALSE(TensorLogicalBytes(huge).ok());
  std::string out;
  EXPECT_THAT(
      GatherTensorBytes(huge, s.data(), s.size(), ByteOrder::kLittle, &out)
          .message(),
      HasSubstr("more bytes than fit in 64 bits"));
}

TEST(TensorBytesTest, SmallExpansionsStayReadable) {
  std::vector<float> row(1024);
  for (size_t i = 0; i < row.size(); ++i) row[i] = static_cast<float>(i);
  const auto* bytes = reinterpret_cast<const uint8_t*>(row.data());
  const uint64_t storage_len = row.size() * 4;
  // 1025 rows of 4 KiB from a 4 KiB storage: exactly kMaxViewExpansionBytes
  // more than the storage.
  TensorInfo at_limit = Make(DType::kFloat32, {1025, 1024}, {0, 1}, 0);
  std::string out;
  ASSERT_TRUE(
      GatherTensorBytes(at_limit, bytes, storage_len, ByteOrder::kLittle, &out)
          .ok());
  ASSERT_EQ(out.size(), 1025u * 4096u);
  EXPECT_EQ(memcmp(out.data() + 1024 * 4096, row.data(), 4096), 0);
  TensorInfo over_limit = Make(DType::kFloat32, {1026, 1024}, {0, 1}, 0);
  EXPECT_FALSE(CheckViewWorkBounded(over_limit, storage_len).ok());
  // A view that does not overlap itself never exceeds its storage.
  EXPECT_TRUE(
      CheckViewWorkBounded(Make(DType::kFloat32, {32, 32}, {1, 32}, 0), 4096)
          .ok());
}

TEST(CheckpointHasherTest, HashesIdenticalViewsOnce) {
  auto bytes = Floats({1, 2, 3, 4, 5, 6});
  StorageInfo storage;
  storage.num_bytes = bytes.size();
  TensorInfo a = Make(DType::kFloat32, {2, 3}, {3, 1}, 0);
  TensorInfo b = a;
  b.name = "tied";
  // No budget beyond the base: the same view named twice costs once.
  CheckpointHasher hasher(0);
  auto first = hasher.Sha256Hex(a, storage, bytes.data());
  auto second = hasher.Sha256Hex(b, storage, bytes.data());
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(*first, *second);
  EXPECT_EQ(*first, Sha256Hex(absl::string_view(
                        reinterpret_cast<const char*>(bytes.data()), 24)));
  EXPECT_EQ(hasher.hashed_bytes(), 24u);
  // A different view of the same storage is hashed (and paid for) anew.
  auto transposed = hasher.Sha256Hex(Make(DType::kFloat32, {3, 2}, {1, 3}, 0),
                                     storage, bytes.data());
  ASSERT_TRUE(transposed.ok());
  EXPECT_NE(*transposed, *first);
  EXPECT_EQ(hasher.hashed_bytes(), 48u);
}

TEST(CheckpointHasherTest, RefusesViewsBeyondTheBudget) {
  // 2 MiB storage; distinct views x[i:] each claim about the whole storage.
  std::vector<float> values(size_t{1} << 19, 0.5f);
  StorageInfo storage;
  storage.num_bytes = values.size() * 4;
  const auto* bytes = reinterpret_cast<const uint8_t*>(values.data());
  CheckpointHasher hasher(storage.num_bytes);
  EXPECT_EQ(hasher.budget_bytes(),
            CheckpointHasher::kBudgetMultiple * storage.num_bytes +
                CheckpointHasher::kBudgetBaseBytes);
  absl::Status refused;
  int64_t hashed = 0;
  for (int64_t i = 0; i < 8192; ++i) {
    TensorInfo view = Make(DType::kFloat32,
                           {static_cast<int64_t>(values.size()) - i}, {1}, i);
    view.name = absl::StrCat("v", i);
    auto h = hasher.Sha256Hex(view, storage, bytes);
    if (!h.ok()) {
      refused = h.status();
      break;
    }
    ++hashed;
  }
  ASSERT_FALSE(refused.ok());
  EXPECT_LE(hasher.hashed_bytes(), hasher.budget_bytes());
  // 8 x 2 MiB + 16 MiB = 32 MiB: 16 views of about 2 MiB.
  EXPECT_EQ(hashed, 16);
  EXPECT_THAT(refused.message(), HasSubstr("tensor \"v16\""));
  EXPECT_THAT(refused.message(), HasSubstr("budget of 33554432"));
}

TEST(CheckpointHasherTest, HeldBytesCountsInflatedStorages) {
  Checkpoint checkpoint;
  checkpoint.storages.resize(2);
  checkpoint.storages[1].inflated =
      std::make_shared<const std::string>(1000, 'x');
  EXPECT_EQ(CheckpointHasher::HeldBytes(checkpoint, 500), 1500u);
}

}  // namespace
}  // namespace weightd
