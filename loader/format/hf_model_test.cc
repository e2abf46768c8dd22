#include "loader/format/hf_model.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "loader/common/test_dir.h"
#include "loader/format/reader.h"

namespace weightd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A safetensors file of float32 vectors, named and sized as given.
std::string Safetensors(
    const std::vector<std::pair<std::string, int>>& tensors) {
  std::string header = "{";
  std::string data;
  for (const auto& [name, n] : tensors) {
    if (header.size() > 1) header += ",";
    absl::StrAppend(&header, "\"", name, "\":{\"dtype\":\"F32\",\"shape\":[", n,
                    "],\"data_offsets\":[", data.size(), ",",
                    data.size() + 4 * n, "]}");
    data.append(4 * n, static_cast<char>(n));
  }
  header += "}";
  while (header.size() % 8 != 0) header += ' ';
  std::string out(8, '\0');
  uint64_t size = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(size >> (8 * i));
  return out + header + data;
}

HfShard Shard(const std::string& name,
              const std::vector<std::pair<std::string, int>>& tensors) {
  ReadOptions options;
  options.file_name = name;
  absl::StatusOr<Checkpoint> checkpoint =
      ReadCheckpoint(Safetensors(tensors), options);
  EXPECT_TRUE(checkpoint.ok()) << checkpoint.status();
  return HfShard{name, *std::move(checkpoint)};
}

std::vector<HfShard> TwoShards() {
  std::vector<HfShard> shards;
  shards.push_back(Shard("b.safetensors", {{"z", 2}, {"a", 3}}));
  shards.push_back(Shard("a.safetensors", {{"m", 1}}));
  return shards;
}

constexpr char kIndex[] =
    R"({"metadata": {"total_size": 24},
        "weight_map": {"z": "b.safetensors", "m": "a.safetensors",
                       "a": "b.safetensors"}})";

TEST(ParseHfIndexTest, ShardsInTheOrderTheWeightMapFirstNamesThem) {
  absl::StatusOr<HfIndex> index = ParseHfIndex(kIndex, "i.json");
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_THAT(index->shards, ElementsAre("b.safetensors", "a.safetensors"));
  ASSERT_EQ(index->weight_map.size(), 3u);
  EXPECT_EQ(index->weight_map[1], std::make_pair(std::string("m"), size_t{1}));
  EXPECT_EQ(index->total_size, 24u);
}

TEST(ParseHfIndexTest, RefusesMalformedIndexes) {
  const std::pair<const char*, const char*> cases[] = {
      {"{", "invalid JSON"},
      {"[]", "not a JSON object"},
      {R"({"metadata": {}})", "no \"weight_map\""},
      {R"({"weight_map": []})", "not an object"},
      {R"({"weight_map": {}})", "lists no tensors"},
      {R"({"weight_map": {"a": 1}})", "\"a\" is not a string"},
      {R"({"weight_map": {"a": "x", "a": "y"}})", "duplicate"},
      {R"({"weight_map": {"a": "../x.safetensors"}})", "plain file name"},
      {R"({"weight_map": {"a": "/etc/passwd"}})", "plain file name"},
      {R"({"weight_map": {"a": ".."}})", "not a file name"},
      {R"({"weight_map": {"a": ""}})", "is empty"},
      {R"({"weight_map": {"a": "x\u0000y"}})", "NUL"},
      {R"({"metadata": 3, "weight_map": {"a": "x"}})", "not an object"},
      {R"({"metadata": {"total_size": -1}, "weight_map": {"a": "x"}})",
       "total_size"},
      {R"({"metadata": {"total_size": "8"}, "weight_map": {"a": "x"}})",
       "total_size"},
  };
  for (const auto& [text, why] : cases) {
    absl::StatusOr<HfIndex> index = ParseHfIndex(text, "dir/i.json");
    ASSERT_FALSE(index.ok()) << text;
    EXPECT_EQ(index.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(index.status().message(), HasSubstr("dir/i.json")) << text;
    EXPECT_THAT(index.status().message(), HasSubstr(why)) << text;
  }
}

TEST(ParseHfIndexTest, BoundsTheShardCount) {
  std::string text = R"({"weight_map": {)";
  for (size_t i = 0; i <= kMaxHfShards; ++i)
    absl::StrAppend(&text, i ? "," : "", "\"t", i, "\":\"s", i, "\"");
  text += "}}";
  absl::StatusOr<HfIndex> index = ParseHfIndex(text, "i.json");
  ASSERT_FALSE(index.ok());
  EXPECT_THAT(index.status().message(), HasSubstr("more than"));
}

TEST(AssembleHfModelTest, MergesShardsInIndexOrder) {
  absl::StatusOr<HfIndex> index = ParseHfIndex(kIndex, "i.json");
  ASSERT_TRUE(index.ok());
  absl::StatusOr<HfModel> model =
      AssembleHfModel(HfFormat::kSafetensors, &*index, TwoShards(), "dir");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_THAT(model->shards, ElementsAre("b.safetensors", "a.safetensors"));
  std::vector<std::string> names;
  for (const TensorInfo& t : model->checkpoint.tensors) names.push_back(t.name);
  // Shard order, then each shard's own (safetensors: sorted) order.
  EXPECT_THAT(names, ElementsAre("a", "z", "m"));
  ASSERT_EQ(model->checkpoint.storages.size(), 3u);
  EXPECT_THAT(model->storage_shard, ElementsAre(0, 0, 1));
  const TensorInfo& m = model->checkpoint.tensors[2];
  EXPECT_EQ(model->storage_shard[m.storage_index], 1u);
  EXPECT_EQ(model->checkpoint.storages[m.storage_index].num_bytes, 4u);
  EXPECT_EQ(model->checkpoint.metadata.Find("total_size")->int_value(), 24);
}

TEST(AssembleHfModelTest, SingleFileKeepsItsOwnMetadata) {
  std::vector<HfShard> shards;
  shards.push_back(Shard("model.safetensors", {{"w", 2}}));
  absl::StatusOr<HfModel> model =
      AssembleHfModel(HfFormat::kSafetensors, nullptr, std::move(shards), "d");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_THAT(model->shards, ElementsAre("model.safetensors"));
  EXPECT_EQ(model->checkpoint.tensors.size(), 1u);
}

absl::Status Assemble(const std::string& index_text) {
  absl::StatusOr<HfIndex> index = ParseHfIndex(index_text, "i.json");
  if (!index.ok()) return index.status();
  return AssembleHfModel(HfFormat::kSafetensors, &*index, TwoShards(), "dir")
      .status();
}

TEST(AssembleHfModelTest, RefusesAnIndexThatDisagreesWithTheShards) {
  // A tensor of a shard the index does not list.
  absl::Status status = Assemble(
      R"({"weight_map": {"z": "b.safetensors", "m": "a.safetensors"}})");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("tensor \"a\" of shard b.safetensors"
                                          " is not in the index"));
  // A tensor listed in the wrong shard.
  status = Assemble(R"({"weight_map": {"z": "b.safetensors",
      "m": "a.safetensors", "a": "a.safetensors"}})");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(),
              HasSubstr("\"a\" is in shard b.safetensors but the index lists "
                        "it in a.safetensors"));
  // A tensor listed that no shard has.
  status = Assemble(R"({"weight_map": {"z": "b.safetensors",
      "m": "a.safetensors", "a": "b.safetensors", "q": "a.safetensors"}})");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("tensor \"q\" in shard "
                                          "a.safetensors, which does not"));
  // A total_size that is not the tensors' bytes.
  status = Assemble(R"({"metadata": {"total_size": 25}, "weight_map": {
      "z": "b.safetensors", "m": "a.safetensors", "a": "b.safetensors"}})");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("total_size is 25 bytes but the "
                                          "shards hold 24"));
}

TEST(AssembleHfModelTest, RefusesAShardOfTheWrongFormat) {
  std::vector<HfShard> shards;
  shards.push_back(Shard("pytorch_model.bin", {{"w", 2}}));
  absl::StatusOr<HfModel> model =
      AssembleHfModel(HfFormat::kTorch, nullptr, std::move(shards), "d");
  ASSERT_FALSE(model.ok());
  EXPECT_THAT(model.status().message(),
              HasSubstr("d/pytorch_model.bin: a safetensors file in an "
                        "hf-torch model"));
}

class DetectHfLayoutTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = testing::FreshTestDir("hf-layout"); }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void Touch(const std::string& name) {
    std::ofstream(absl::StrCat(dir_, "/", name)) << "x";
  }
  std::string dir_;
};

TEST_F(DetectHfLayoutTest, TransformersOrder) {
  EXPECT_EQ(DetectHfLayout(dir_, "").status().code(),
            absl::StatusCode::kNotFound);
  Touch("pytorch_model.bin.index.json");
  absl::StatusOr<HfLayout> layout = DetectHfLayout(dir_, "");
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->format, HfFormat::kTorch);
  EXPECT_EQ(layout->index_file, "pytorch_model.bin.index.json");
  Touch("pytorch_model.bin");
  layout = DetectHfLayout(dir_, "");
  EXPECT_EQ(layout->single_file, "pytorch_model.bin");
  EXPECT_EQ(layout->index_file, "");
  Touch("model.safetensors.index.json");
  layout = DetectHfLayout(dir_, "");
  EXPECT_EQ(layout->format, HfFormat::kSafetensors);
  EXPECT_EQ(layout->index_file, "model.safetensors.index.json");
  Touch("model.safetensors");
  layout = DetectHfLayout(dir_, "");
  EXPECT_EQ(layout->single_file, "model.safetensors");
  // The hint picks the format.
  layout = DetectHfLayout(dir_, "hf-torch");
  ASSERT_TRUE(layout.ok());
  EXPECT_EQ(layout->single_file, "pytorch_model.bin");
  absl::Status bad = DetectHfLayout(dir_, "safetensors").status();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.message(), HasSubstr("hf-safetensors, hf-torch"));
}

TEST_F(DetectHfLayoutTest, HintWithoutItsFilesIsNotFound) {
  Touch("model.safetensors");
  absl::Status status = DetectHfLayout(dir_, "hf-torch").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(status.message(), HasSubstr("pytorch_model.bin.index.json"));
}

TEST(CheckJsonObjectFileTest, OnlyObjects) {
  EXPECT_TRUE(CheckJsonObjectFile(R"({"a": [1]})", "config.json").ok());
  EXPECT_THAT(CheckJsonObjectFile("[1]", "d/config.json").message(),
              HasSubstr("d/config.json: not a JSON object"));
  EXPECT_THAT(CheckJsonObjectFile(R"({"a": 1, "a": 2})", "c").message(),
              HasSubstr("c: invalid JSON"));
  EXPECT_FALSE(CheckJsonObjectFile("", "c").ok());
}

}  // namespace
}  // namespace weightd
