#include "loader/format/safetensors.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace weightd {
namespace {

using ::testing::HasSubstr;

std::string File(const std::string& header, size_t data_bytes) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return out + header + std::string(data_bytes, '\x01');
}

absl::StatusOr<Checkpoint> Read(const std::string& bytes) {
  ReadOptions o;
  o.file_name = "m.safetensors";
  return ReadSafetensors(bytes, o);
}

TEST(SafetensorsTest, ReadsTensorsAndMetadata) {
  auto c = Read(File(
      R"({"__metadata__":{"format":"pt"},"b":{"dtype":"BF16","shape":[2],"data_offsets":[16,20]},)"
      R"("a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
      R"("f8":{"dtype":"F8_E4M3","shape":[3],"data_offsets":[20,23]}}   )",
      23));
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->tensors.size(), 3u);
  EXPECT_EQ(c->tensors[0].name, "a");
  EXPECT_EQ(c->tensors[0].stride, (std::vector<int64_t>{2, 1}));
  EXPECT_EQ(c->tensors[2].dtype, DType::kFloat8E4M3FN);
  const StorageInfo& s = c->storages[c->tensors[1].storage_index];
  EXPECT_EQ(s.num_bytes, 4u);
  EXPECT_EQ(c->metadata.Find("__metadata__")->Find("format")->string_value(),
            "pt");
}

struct Bad {
  std::string header;
  size_t data;
  const char* message;
};

TEST(SafetensorsTest, RefusesBadHeaders) {
  const Bad cases[] = {
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", 4,
       "is 4 bytes, its dtype and shape need 8"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 8,
       "data section is 8 bytes, tensors cover 4"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8,
       "leaving a gap"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,8]}})", 4,
       "ends at byte 8"},
      {R"({"a":{"dtype":"X9","shape":[1],"data_offsets":[0,1]}})", 1,
       "unsupported safetensors dtype \"X9\""},
      {R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}})", 0,
       "bad shape entry"},
      {R"({"a":{"dtype":"U8","shape":[4611686018427387904,8],"data_offsets":[0,0]}})",
       0, "element count overflows"},
      {R"({"a":1})", 0, "is not an object"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{}})", 4,
       "duplicate key"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},})", 4,
       "invalid JSON"},
      {R"({"__metadata__":{"x":1}})", 0, "is not a string"},
  };
  for (const Bad& b : cases) {
    auto c = Read(File(b.header, b.data));
    ASSERT_FALSE(c.ok()) << b.header;
    EXPECT_THAT(c.status().message(), HasSubstr(b.message)) << b.header;
    EXPECT_THAT(c.status().message(), HasSubstr("m.safetensors"));
  }
}

TEST(SafetensorsTest, RefusesHeaderPastEnd) {
  std::string f = File("{}", 0);
  f[0] = 100;
  auto c = Read(f);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("runs past the end"));
  EXPECT_FALSE(Read("abc").ok());
}

}  // namespace
}  // namespace weightd
