#include "loader/cache/load_plan.h"

#include <vector>

#include "gtest/gtest.h"

namespace weightd {
namespace {

std::vector<GpuDescription> TwoGpus() {
  std::vector<GpuDescription> gpus(2);
  gpus[0].index = 0;
  gpus[0].uuid = "GPU-aaaa";
  gpus[1].index = 1;
  gpus[1].uuid = "GPU-bbbb";
  return gpus;
}

std::string KeyOf(const LoadSpec& spec) {
  auto placement = CanonicalPlacement(spec, TwoGpus());
  EXPECT_TRUE(placement.ok()) << placement.status();
  return placement.ok() ? placement->Key() : "";
}

LoadSpec Target(const std::string& target) {
  LoadSpec spec;
  spec.path = "/models/a.pt";
  spec.target = target;
  return spec;
}

TEST(CanonicalPlacementTest, OneGpuHasOneName) {
  const std::string key = KeyOf(Target("cuda:1"));
  EXPECT_EQ(key, "cuda:1");
  EXPECT_EQ(KeyOf(Target("cuda:01")), key);
  EXPECT_EQ(KeyOf(Target("cuda:GPU-bbbb")), key);
  EXPECT_EQ(KeyOf(Target(" cuda:1 ")), key);
  EXPECT_EQ(KeyOf(Target("cuda")), "cuda:0");
  EXPECT_EQ(KeyOf(Target("cuda:GPU-aaaa")), "cuda:0");
  EXPECT_EQ(KeyOf(Target("")), "saved");
  EXPECT_EQ(KeyOf(Target("meta")), "meta");
}

TEST(CanonicalPlacementTest, DtypesFiltersAndRemapsAreCanonical) {
  LoadSpec a = Target("cpu"), b = Target("cpu");
  a.cast_dtype = "torch.bfloat16";
  b.cast_dtype = "bfloat16";
  a.filter = {"model.b", "model.a", "model.b"};
  b.filter = {"model.a", "model.b"};
  EXPECT_EQ(KeyOf(a), KeyOf(b));
  EXPECT_EQ(KeyOf(a), "cpu as bfloat16 only{model.a,model.b}");

  LoadSpec r1, r2;
  r1.path = r2.path = "/models/a.pt";
  r1.remap = {{"cuda:1", "cuda:GPU-aaaa"}, {"cuda", "cpu"}};
  r2.remap = {{"cuda:0", "cpu"}, {"cuda:01", "cuda"}};
  EXPECT_EQ(KeyOf(r1), "saved map{cuda:0->cpu,cuda:1->cuda:0}");
  EXPECT_EQ(KeyOf(r1), KeyOf(r2));
}

TEST(CanonicalPlacementTest, BadRequestsNameTheFileAndTheReason) {
  struct Case {
    LoadSpec spec;
    std::string expected;
  };
  LoadSpec both = Target("cpu");
  both.remap = {{"cuda:0", "cpu"}};
  LoadSpec bad_cast = Target("cpu");
  bad_cast.cast_dtype = "int8";
  LoadSpec f64 = Target("cpu");
  f64.cast_dtype = "float64";
  LoadSpec twice;
  twice.path = "/models/a.pt";
  twice.remap = {{"cuda", "cpu"}, {"cuda:0", "meta"}};
  LoadSpec bad_remap;
  bad_remap.path = "/models/a.pt";
  bad_remap.remap = {{"cuda:0", "tpu"}};
  std::vector<Case> cases = {
      {Target("cuda:2"), "the daemon has 2 GPU(s)"},
      {Target("cuda:GPU-cccc"), "no GPU with UUID GPU-cccc"},
      {Target("tpu:0"), "unknown device"},
      {Target("cuda:-1"), "unknown device"},
      {both, "not both"},
      {bad_cast, "cannot cast on load to \"int8\""},
      {f64, "cannot cast on load"},
      {twice, "maps \"cuda:0\" twice"},
      {bad_remap, "unknown device"},
  };
  for (const Case& c : cases) {
    auto placement = CanonicalPlacement(c.spec, TwoGpus());
    ASSERT_FALSE(placement.ok()) << c.expected;
    EXPECT_EQ(placement.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(placement.status().message().find("/models/a.pt"),
              std::string::npos)
        << placement.status();
    EXPECT_NE(placement.status().message().find(c.expected), std::string::npos)
        << placement.status();
  }
}

// Three storages: float32 saved on cuda:1 (two tensors), int64 on cpu, a
// big-endian float32 on cpu; tensor "head.w" views a float32 storage as int32
// bits and is never cast.
Checkpoint Sample() {
  Checkpoint c;
  auto storage = [&](std::string location, DType dtype, uint64_t bytes,
                     ByteOrder order = ByteOrder::kLittle) {
    StorageInfo s;
    s.key = std::to_string(c.storages.size());
    s.location = std::move(location);
    s.dtype = dtype;
    s.num_bytes = bytes;
    s.byte_order = order;
    c.storages.push_back(s);
  };
  storage("cuda:1", DType::kFloat32, 400);
  storage("cpu", DType::kInt64, 80);
  storage("cpu", DType::kFloat32, 40, ByteOrder::kBig);
  storage("cpu", DType::kFloat32, 16);
  auto tensor = [&](std::string name, size_t s, DType dtype) {
    TensorInfo t;
    t.name = std::move(name);
    t.storage_index = s;
    t.dtype = dtype;
    c.tensors.push_back(t);
  };
  tensor("layer.0.weight", 0, DType::kFloat32);
  tensor("layer.0.bias", 0, DType::kFloat32);
  tensor("steps", 1, DType::kInt64);
  tensor("layer.1.weight", 2, DType::kFloat32);
  tensor("head.w", 3, DType::kInt32);
  return c;
}

absl::StatusOr<LoadPlan> Plan(const LoadSpec& spec) {
  auto gpus = TwoGpus();
  auto placement = CanonicalPlacement(spec, gpus);
  if (!placement.ok()) return placement.status();
  return PlanLoad(*placement, Sample(), gpus, spec.path);
}

TEST(PlanLoadTest, SavedLocationsAndZeroCopyHostStorages) {
  auto plan = Plan(Target(""));
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->tensors, (std::vector<size_t>{0, 1, 2, 3, 4}));
  ASSERT_EQ(plan->storages.size(), 4u);
  EXPECT_EQ(plan->ForStorage(0)->target.Name(), "cuda:1");
  EXPECT_EQ(plan->ForStorage(1)->target.Name(), "cpu");
  EXPECT_FALSE(plan->ForStorage(1)->changes_bytes);
  EXPECT_TRUE(plan->ForStorage(2)->changes_bytes);  // big-endian: swapped
  // Host holds only the swapped copy; the GPU its aligned storage.
  EXPECT_EQ(plan->expected, (TierBytes{{"host", 64}, {"GPU-bbbb", 512}}));
  EXPECT_EQ(plan->bytes_total, 400u + 80 + 40 + 16);
}

TEST(PlanLoadTest, CastsOnlyFloatStoragesViewedAsTheirOwnDtype) {
  LoadSpec spec = Target("cpu");
  spec.cast_dtype = "bfloat16";
  auto plan = Plan(spec);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->ForStorage(0)->placed_dtype, DType::kBFloat16);
  EXPECT_EQ(plan->ForStorage(0)->placed_bytes, 200u);
  EXPECT_EQ(plan->ForStorage(1)->placed_dtype, DType::kInt64);
  EXPECT_EQ(plan->ForStorage(2)->placed_dtype, DType::kBFloat16);
  EXPECT_EQ(plan->ForStorage(3)->placed_dtype, DType::kFloat32);  // int32 view
  EXPECT_FALSE(plan->ForStorage(3)->changes_bytes);
  EXPECT_EQ(plan->expected, (TierBytes{{"host", 256 + 64}}));
}

TEST(PlanLoadTest, HostCopyPutsEveryHostStorageInSharedMemory) {
  LoadSpec spec = Target("cpu");
  spec.host_copy = true;
  EXPECT_EQ(KeyOf(spec), "cpu copy");
  EXPECT_NE(KeyOf(spec), KeyOf(Target("cpu")));
  auto plan = Plan(spec);
  ASSERT_TRUE(plan.ok()) << plan.status();
  for (const PlannedStorage& storage : plan->storages)
    EXPECT_TRUE(storage.changes_bytes) << storage.index;
  EXPECT_EQ(plan->expected, (TierBytes{{"host", 448 + 128 + 64 + 64}}));
  spec.target = "cuda:0";  // GPU storages are copies anyway
  auto gpu = Plan(spec);
  ASSERT_TRUE(gpu.ok());
  EXPECT_EQ(gpu->expected, (TierBytes{{"GPU-aaaa", 512 + 256 + 256 + 256}}));
}

TEST(PlanLoadTest, FiltersRemapsAndMeta) {
  LoadSpec spec;
  spec.path = "/models/a.pt";
  spec.filter = {"layer.0"};
  spec.remap = {{"cuda:1", "cuda:0"}};
  auto plan = Plan(spec);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->tensors, (std::vector<size_t>{0, 1}));
  ASSERT_EQ(plan->storages.size(), 1u);
  EXPECT_EQ(plan->storages[0].target.Name(), "cuda:0");
  EXPECT_EQ(plan->ForStorage(1), nullptr);
  EXPECT_EQ(plan->expected, (TierBytes{{"GPU-aaaa", 512}}));

  auto meta = Plan(Target("meta"));
  ASSERT_TRUE(meta.ok());
  EXPECT_TRUE(meta->expected.empty());
  EXPECT_EQ(meta->bytes_total, 0u);

  spec.filter = {"lay"};  // a prefix matches whole path components only
  spec.remap.clear();
  auto none = Plan(spec);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);
}

TEST(PlanLoadTest, SavedLocationsThatCannotBePlaced) {
  auto gpus = TwoGpus();
  Checkpoint c = Sample();
  c.storages[0].location = "cuda:5";
  auto placement = CanonicalPlacement(Target(""), gpus);
  ASSERT_TRUE(placement.ok());
  auto plan = PlanLoad(*placement, c, gpus, "/models/a.pt");
  ASSERT_FALSE(plan.ok());
  EXPECT_NE(plan.status().message().find("saved on \"cuda:5\""),
            std::string::npos)
      << plan.status();
  c.storages[0].location = "mps";
  plan = PlanLoad(*placement, c, gpus, "/models/a.pt");
  ASSERT_FALSE(plan.ok());
  EXPECT_NE(plan.status().message().find("mps"), std::string::npos);
  // A map_location for the tag places it.
  LoadSpec remap;
  remap.path = "/models/a.pt";
  remap.remap = {{"mps", "cpu"}};
  placement = CanonicalPlacement(remap, gpus);
  ASSERT_TRUE(placement.ok()) << placement.status();
  plan = PlanLoad(*placement, c, gpus, "/models/a.pt");
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->ForStorage(0)->target.Name(), "cpu");
}

// A column-parallel weight (8x6 float32), its bias (8) and a norm (6), each
// in its own cpu storage.
Checkpoint Layer() {
  Checkpoint c;
  auto add = [&](std::string name, std::vector<int64_t> shape) {
    int64_t numel = 1;
    for (int64_t n : shape) numel *= n;
    StorageInfo s;
    s.key = std::to_string(c.storages.size());
    s.location = "cpu";
    s.dtype = DType::kFloat32;
    s.num_bytes = numel * 4;
    c.storages.push_back(s);
    TensorInfo t;
    t.name = std::move(name);
    t.dtype = DType::kFloat32;
    t.shape = shape;
    t.stride.assign(shape.size(), 1);
    for (size_t d = shape.size(); d-- > 1;)
      t.stride[d - 1] = t.stride[d] * shape[d];
    t.storage_index = c.storages.size() - 1;
    c.tensors.push_back(t);
  };
  add("mlp.w", {8, 6});
  add("mlp.b", {8});
  add("norm", {6});
  return c;
}

absl::StatusOr<LoadPlan> PlanSharded(
    const std::string& target, int rank, int world,
    std::vector<std::pair<std::string, int>> rules,
    const std::string& cast = "") {
  LoadSpec spec = Target(target);
  spec.shard.rank = rank;
  spec.shard.world_size = world;
  spec.shard.rules = std::move(rules);
  spec.cast_dtype = cast;
  auto gpus = TwoGpus();
  auto placement = CanonicalPlacement(spec, gpus);
  if (!placement.ok()) return placement.status();
  return PlanLoad(*placement, Layer(), gpus, spec.path);
}

TEST(CanonicalPlacementTest, ShardIsPartOfTheKey) {
  LoadSpec a = Target("cuda:0");
  a.shard.world_size = 2;
  a.shard.rules = {{"*.w", 0}};
  LoadSpec b = a;
  b.shard.rank = 1;
  EXPECT_NE(KeyOf(a), KeyOf(b));
  EXPECT_NE(KeyOf(a), KeyOf(Target("cuda:0")));
  EXPECT_EQ(KeyOf(a).rfind("cuda:0 tp{0/2 rules:", 0), 0u) << KeyOf(a);
  LoadSpec zero = Target("cpu");
  zero.shard.rules = {{"*", 0}};
  EXPECT_EQ(CanonicalPlacement(zero, TwoGpus()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(PlanLoadTest, ShardedGpuPlansHoldOnlyTheSlices) {
  auto plan = PlanSharded("cuda:0", 1, 2, {{"mlp.*", 0}});
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(plan->slices.size(), 2u);
  const PlannedSlice* w = plan->ForTensor(0);
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->slice.view.shape, (std::vector<int64_t>{4, 6}));
  EXPECT_EQ(w->slice.view.storage_offset, 24);
  EXPECT_EQ(w->placed_bytes, 96u);
  EXPECT_TRUE(w->own_bytes);
  EXPECT_TRUE(w->file_range);              // dim 0 of a contiguous tensor
  EXPECT_EQ(plan->ForTensor(2), nullptr);  // norm: whole
  ASSERT_EQ(plan->storages.size(), 1u);
  EXPECT_EQ(plan->storages[0].index, 2u);
  // 96 + 16 of slices and 24 of the norm, each aligned to 256.
  EXPECT_EQ(plan->expected, (TierBytes{{"GPU-aaaa", 3 * 256}}));
  EXPECT_EQ(plan->bytes_total, 96u + 16 + 24);
  EXPECT_EQ(plan->shard_world_size, 2);

  auto columns = PlanSharded("cuda:0", 0, 3, {{"mlp.w", 1}});
  ASSERT_TRUE(columns.ok()) << columns.status();
  EXPECT_FALSE(columns->ForTensor(0)->file_range);  // gathered
  EXPECT_EQ(columns->ForTensor(0)->placed_bytes, 8u * 2 * 4);
}

TEST(PlanLoadTest, ShardedHostSlicesAreViewsUnlessBytesChange) {
  auto plan = PlanSharded("cpu", 1, 2, {{"mlp.w", 1}});
  ASSERT_TRUE(plan.ok()) << plan.status();
  const PlannedSlice* w = plan->ForTensor(0);
  ASSERT_NE(w, nullptr);
  EXPECT_FALSE(w->own_bytes);
  EXPECT_EQ(w->slice.view.stride, (std::vector<int64_t>{6, 1}));
  EXPECT_EQ(w->slice.view.storage_offset, 3);
  EXPECT_TRUE(plan->expected.empty());  // nothing held, nothing counted twice
  EXPECT_EQ(plan->bytes_total, 96u + 32 + 24);

  auto cast = PlanSharded("cpu", 1, 2, {{"mlp.w", 1}}, "bfloat16");
  ASSERT_TRUE(cast.ok()) << cast.status();
  EXPECT_TRUE(cast->ForTensor(0)->own_bytes);
  EXPECT_EQ(cast->ForTensor(0)->placed_bytes, 48u);
  // The slice (48) and the two whole storages cast (16, 12), each aligned.
  EXPECT_EQ(cast->expected, (TierBytes{{"host", 3 * 64}}));
}

TEST(PlanLoadTest, ShardRulesThatCannotSplitAreRefused) {
  auto uneven = PlanSharded("cpu", 0, 4, {{"mlp.w", 1}});
  EXPECT_EQ(uneven.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(uneven.status().message().find("mlp.w of shape [8, 6]"),
            std::string::npos)
      << uneven.status();
  auto past = PlanSharded("cpu", 0, 2, {{"norm", 1}});
  EXPECT_EQ(past.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(past.status().message().find("norm"), std::string::npos);
  auto rank = PlanSharded("cpu", 2, 2, {{"norm", 0}});
  EXPECT_EQ(rank.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace weightd
