#include "loader/format/legacy.h"

#include <string>

#include "absl/strings/escaping.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace weightd {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// The legacy layout written by CPython's pickle, protocol 2: magic number,
// 1001, {}, then {'w': _rebuild_tensor_v2(<view>, 0, (2,), (1,), False,
// OrderedDict()), 'base': _rebuild_tensor_v2(<root>, 0, (4,), (1,), ...)}
// where <root> is ('storage', torch.FloatStorage, '0', 'cpu', 4, None) and
// <view> the same storage with view metadata ('1', 1, 2); then ['0'] and the
// root's bytes: numel 4, floats 1 2 3 4 (from file byte 280).
constexpr char kLegacyWithView[] =
    "80028a0a6cfc9c46f9206aa850192e80024de9032e80027d71002e80027d710028580100"
    "000077710163746f7263682e5f7574696c730a5f72656275696c645f74656e736f725f76"
    "320a71022828580700000073746f72616765710363746f7263680a466c6f617453746f72"
    "6167650a71045801000000307105580300000063707571064b0458010000003171074b01"
    "4b02877108747109514b004b0285710a4b0185710b8963636f6c6c656374696f6e730a4f"
    "726465726564446963740a710c2952710d74710e52710f58040000006261736571106802"
    "282868036804680568064b044e747111514b004b04857112680b89680c29527113747114"
    "527115752e80025d71005801000000307101612e04000000000000000000803f00000040"
    "0000404000008040";

TEST(LegacyTest, StorageViewsAreRangesOfTheirRoot) {
  const std::string bytes = absl::HexStringToBytes(kLegacyWithView);
  ReadOptions options;
  options.file_name = "view.pt";
  auto ckpt = ReadTorchLegacy(bytes, options);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  ASSERT_EQ(ckpt->tensors.size(), 2u);
  const TensorInfo& w = ckpt->tensors[0];
  const TensorInfo& base = ckpt->tensors[1];
  EXPECT_EQ(w.name, "w");
  EXPECT_EQ(base.name, "base");
  const StorageInfo& root = ckpt->storages[base.storage_index];
  const StorageInfo& view = ckpt->storages[w.storage_index];
  EXPECT_EQ(root.key, "0");
  EXPECT_EQ(root.location, "cpu");
  EXPECT_EQ(root.dtype, DType::kFloat32);
  EXPECT_EQ(root.file_offset, 280u);
  EXPECT_EQ(root.num_bytes, 16u);
  EXPECT_EQ(view.key, "1");
  EXPECT_EQ(view.file_offset, 284u);  // one float into the root
  EXPECT_EQ(view.num_bytes, 8u);
  EXPECT_EQ(w.shape, (std::vector<int64_t>{2}));
}

TEST(LegacyTest, ViewOutsideItsRootIsRefused) {
  std::string bytes = absl::HexStringToBytes(kLegacyWithView);
  // ('1', 1, 2) -> ('1', 1, 4): the view reaches one float past the root.
  const std::string view_size = absl::HexStringToBytes("4b014b0287");
  size_t at = bytes.find(view_size);
  ASSERT_NE(at, std::string::npos);
  bytes[at + 3] = 4;
  ReadOptions options;
  options.file_name = "view.pt";
  auto ckpt = ReadTorchLegacy(bytes, options);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_EQ(ckpt.status().message(),
            "view.pt: storage view \"1\" lies outside storage \"0\"");
}

// The protocol version pickle may be any value; naming it in the error must
// not recurse once per level of a million nested tuples.
TEST(LegacyTest, DeeplyNestedProtocolVersionIsNamedSafely) {
  std::string bytes = absl::HexStringToBytes(kLegacyWithView).substr(0, 15);
  bytes += "\x80\x02N";
  bytes += std::string(1000000, '\x85');  // TUPLE1
  bytes += ".";
  ReadOptions options;
  options.file_name = "deep.pt";
  auto ckpt = ReadTorchLegacy(bytes, options);
  ASSERT_FALSE(ckpt.ok());
  const std::string message(ckpt.status().message());
  EXPECT_THAT(message,
              StartsWith("deep.pt: unsupported legacy protocol version (((("));
  EXPECT_THAT(message, HasSubstr("(...)"));
}

}  // namespace
}  // namespace weightd
