#include "loader/cache/shard.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace weightd {
namespace {

TensorInfo Tensor(const std::string& name, std::vector<int64_t> shape) {
  TensorInfo t;
  t.name = name;
  t.shape = shape;
  t.stride.assign(shape.size(), 1);
  for (size_t d = shape.size(); d-- > 1;)
    t.stride[d - 1] = t.stride[d] * shape[d];
  return t;
}

CanonicalShard Shard(int rank, int world,
                     std::vector<std::pair<std::string, int>> rules) {
  ShardSpec spec;
  spec.rank = rank;
  spec.world_size = world;
  spec.rules = std::move(rules);
  auto shard = CanonicalShardSpec(spec, "/m");
  EXPECT_TRUE(shard.ok()) << shard.status();
  return shard.ok() ? *shard : CanonicalShard{};
}

TEST(GlobMatchTest, StarsAndQuestionMarks) {
  EXPECT_TRUE(
      GlobMatch("*.q_proj.weight", "model.layers.0.self_attn.q_proj.weight"));
  EXPECT_FALSE(
      GlobMatch("*.q_proj.weight", "model.layers.0.self_attn.q_proj.bias"));
  EXPECT_TRUE(GlobMatch("layer?.w", "layer1.w"));
  EXPECT_FALSE(GlobMatch("layer?.w", "layer12.w"));
  EXPECT_TRUE(GlobMatch("*", ""));
  EXPECT_TRUE(GlobMatch("a*b*c", "aXXbYYc"));
  EXPECT_FALSE(GlobMatch("a*b*c", "aXXbYY"));
  EXPECT_TRUE(GlobMatch("exact", "exact"));
  EXPECT_FALSE(GlobMatch("exact", "exactly"));
}

TEST(GlobMatchTest, HostilePatternsStopAtTheBudget) {
  const std::string pattern(200, '*');
  const std::string name(100000, 'a');
  uint64_t budget = 1000;
  EXPECT_FALSE(GlobMatch(pattern + "b", name, &budget));
  EXPECT_EQ(budget, 0u);
}

TEST(CanonicalShardSpecTest, ChecksRankWorldAndRules) {
  ShardSpec spec;
  EXPECT_TRUE(CanonicalShardSpec(spec, "/m").ok());
  EXPECT_FALSE(CanonicalShardSpec(spec, "/m")->enabled());
  spec.rules = {{"*", 0}};
  EXPECT_EQ(CanonicalShardSpec(spec, "/m").status().code(),
            absl::StatusCode::kInvalidArgument);  // rules without a world
  spec.world_size = 2;
  spec.rank = 2;
  auto bad = CanonicalShardSpec(spec, "/m");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("rank 2"), std::string::npos);
  spec.rank = -1;
  EXPECT_FALSE(CanonicalShardSpec(spec, "/m").ok());
  spec.rank = 0;
  spec.world_size = -3;
  EXPECT_FALSE(CanonicalShardSpec(spec, "/m").ok());
  spec.world_size = 2;
  spec.rules = {{"", 0}};
  EXPECT_FALSE(CanonicalShardSpec(spec, "/m").ok());
  spec.rules = {{std::string(kMaxShardPatternLength + 1, 'a'), 0}};
  EXPECT_FALSE(CanonicalShardSpec(spec, "/m").ok());
  spec.rules.assign(kMaxShardRules + 1, {"a", 0});
  EXPECT_FALSE(CanonicalShardSpec(spec, "/m").ok());
  spec.rules.clear();
  spec.rule_set = "nope";
  EXPECT_FALSE(CanonicalShardSpec(spec, "/m").ok());
  spec.rule_set = "llama";
  auto llama = CanonicalShardSpec(spec, "/m");
  ASSERT_TRUE(llama.ok()) << llama.status();
  EXPECT_FALSE(llama->rules.empty());
}

TEST(CanonicalShardSpecTest, KeyPartTellsRanksAndRulesApart) {
  const std::string a = Shard(0, 2, {{"*.w", 0}}).KeyPart();
  EXPECT_NE(a, Shard(1, 2, {{"*.w", 0}}).KeyPart());
  EXPECT_NE(a, Shard(0, 4, {{"*.w", 0}}).KeyPart());
  EXPECT_NE(a, Shard(0, 2, {{"*.w", 1}}).KeyPart());
  EXPECT_NE(a, Shard(0, 2, {{"*.w", 0}, {"x", 0}}).KeyPart());
  EXPECT_EQ(a, Shard(0, 2, {{"*.w", 0}}).KeyPart());
  EXPECT_EQ(CanonicalShard{}.KeyPart(), "");
}

TEST(SliceForTest, NarrowsTheMatchedDimFirstRuleWins) {
  const TensorInfo t = Tensor("layers.0.w", {8, 6});
  uint64_t budget = kShardMatchBudget;
  auto dim1 = SliceFor(Shard(1, 2, {{"*.w", 1}, {"*", 0}}), t, "/m", &budget);
  ASSERT_TRUE(dim1.ok()) << dim1.status();
  ASSERT_TRUE(dim1->has_value());
  EXPECT_EQ((*dim1)->dim, 1);
  EXPECT_EQ((*dim1)->view.shape, (std::vector<int64_t>{8, 3}));
  EXPECT_EQ((*dim1)->view.stride, (std::vector<int64_t>{6, 1}));
  EXPECT_EQ((*dim1)->view.storage_offset, 3);

  auto dim0 = SliceFor(Shard(3, 4, {{"layers.*", 0}}), t, "/m", &budget);
  ASSERT_TRUE(dim0.ok() && dim0->has_value());
  EXPECT_EQ((*dim0)->view.shape, (std::vector<int64_t>{2, 6}));
  EXPECT_EQ((*dim0)->view.storage_offset, 36);  // rows 6..7
  EXPECT_TRUE(IsRowMajorContiguous((*dim0)->view));
  EXPECT_FALSE(IsRowMajorContiguous((*dim1)->view));

  auto negative = SliceFor(Shard(0, 2, {{"*", -1}}), t, "/m", &budget);
  ASSERT_TRUE(negative.ok() && negative->has_value());
  EXPECT_EQ((*negative)->dim, 1);

  auto none = SliceFor(Shard(0, 2, {{"other", 0}}), t, "/m", &budget);
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
}

TEST(SliceForTest, RefusesNonDividingAndPastTheRank) {
  uint64_t budget = kShardMatchBudget;
  auto uneven =
      SliceFor(Shard(0, 4, {{"*", 1}}), Tensor("a.w", {8, 6}), "/m", &budget);
  EXPECT_EQ(uneven.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(uneven.status().message().find("a.w"), std::string::npos);
  EXPECT_NE(uneven.status().message().find("[8, 6]"), std::string::npos);
  EXPECT_NE(uneven.status().message().find("dim 1"), std::string::npos);
  auto past =
      SliceFor(Shard(0, 2, {{"*", 2}}), Tensor("a.w", {8, 6}), "/m", &budget);
  EXPECT_EQ(past.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(past.status().message().find("dim 2"), std::string::npos);
  auto scalar =
      SliceFor(Shard(0, 2, {{"*", 0}}), Tensor("s", {}), "/m", &budget);
  EXPECT_EQ(scalar.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ForEachStorageRunTest, WalksRowMajorRuns) {
  TensorInfo view = Tensor("t", {3, 4});
  view.shape = {3, 2};
  view.storage_offset = 2;  // columns 2..3 of a 3x4
  std::vector<uint64_t> elements;
  ASSERT_TRUE(
      ForEachStorageRun(view, 1, 4, [&](uint64_t e, uint64_t n, uint64_t out) {
        for (uint64_t i = 0; i < n; ++i) {
          EXPECT_EQ(out + i, elements.size());
          elements.push_back(e + i);
        }
        return absl::OkStatus();
      }).ok());
  EXPECT_EQ(elements, (std::vector<uint64_t>{3, 6, 7, 10}));
}

}  // namespace
}  // namespace weightd
