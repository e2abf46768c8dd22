// Hugging Face-style model directories through the ModelManager: one model,
// one progress total and one cache entry over every shard; the index checked;
// every file of the directory part of its identity.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "loader/cache/device_set.h"
#include "loader/cache/model_manager.h"
#include "loader/common/json.h"
#include "loader/common/mutex.h"
#include "loader/common/sha256.h"
#include "loader/common/test_dir.h"
#include "loader/io/fake_file_watcher.h"

namespace weightd {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string ReadText(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteText(const fs::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
}

// name -> sha256 from the fixture's expectation (what torch reported).
std::map<std::string, std::string> ExpectedHashes(const std::string& name) {
  std::map<std::string, std::string> hashes;
  absl::StatusOr<Json> expected =
      ParseJson(ReadText("tests/fixtures/hf/" + name + ".expected.json"));
  EXPECT_TRUE(expected.ok()) << expected.status();
  if (!expected.ok()) return hashes;
  for (const Json& tensor : expected->Find("tensors")->array()) {
    hashes[tensor.Find("name")->string_value()] =
        tensor.Find("sha256")->string_value();
  }
  return hashes;
}

std::vector<std::string> ExpectedOrder(const std::string& name) {
  std::vector<std::string> names;
  absl::StatusOr<Json> expected =
      ParseJson(ReadText("tests/fixtures/hf/" + name + ".expected.json"));
  if (!expected.ok()) return names;
  for (const Json& tensor : expected->Find("tensors")->array())
    names.push_back(tensor.Find("name")->string_value());
  return names;
}

class ModelDirectoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = testing::FreshTestDir("hf");
    // Runfiles are symlinks into the source tree: copy from there, keeping
    // the hub snapshot's own symlinks into its blobs/.
    const fs::path fixtures =
        fs::canonical("tests/fixtures/hf/hub.expected.json").parent_path();
    for (const char* name :
         {"sharded_safetensors", "sharded_torch", "single_both", "hub"}) {
      fs::copy(fixtures / name, root_ / name,
               fs::copy_options::recursive | fs::copy_options::copy_symlinks);
    }
    Start();
  }
  void TearDown() override {
    manager_.reset();
    fs::remove_all(root_);
  }

  void Start() {
    DeviceSet::Options device_options;
    device_options.fake_gpus = 1;
    auto devices = DeviceSet::Create(device_options);
    ASSERT_TRUE(devices.ok()) << devices.status();
    ModelManager::Options options;
    options.model_roots = {root_.string()};
    auto manager = ModelManager::Create(
        options, *std::move(devices),
        [this](FileWatcher::ChangeCallback on_change) {
          auto fake = std::make_unique<FakeFileWatcher>(std::move(on_change));
          watcher_ = fake.get();
          return fake;
        });
    ASSERT_TRUE(manager.ok()) << manager.status();
    manager_ = *std::move(manager);
  }

  LoadSpec Spec(const std::string& name, const std::string& target = "cpu") {
    LoadSpec spec;
    spec.path = (root_ / name).string();
    spec.target = target;
    return spec;
  }

  absl::StatusOr<ModelManager::LoadResult> Load(const LoadSpec& spec) {
    return manager_->Load(spec, nullptr);
  }

  // A cache hit goes through LoadAsync's RPC-thread path.
  absl::StatusOr<ModelManager::LoadResult> LoadAsync(const LoadSpec& spec) {
    Mutex mu;
    CondVar done_cv;
    bool done = false;
    absl::StatusOr<ModelManager::LoadResult> result =
        absl::InternalError("not answered");
    manager_->LoadAsync(spec, nullptr, nullptr,
                        [&](absl::StatusOr<ModelManager::LoadResult> r) {
                          MutexLock lock(&mu);
                          result = std::move(r);
                          done = true;
                          done_cv.SignalAll();
                        });
    MutexLock lock(&mu);
    while (!done) done_cv.Wait(&mu);
    return result;
  }

  // Every tensor's bytes as the daemon serves them, hashed.
  std::map<std::string, std::string> Hashes(const LoadedModel& model) {
    std::map<std::string, std::string> hashes;
    for (size_t i = 0; i < model.tensors.size(); ++i) {
      std::string bytes(model.tensors[i].byte_size, '\0');
      absl::Status read = model.ReadTensorRange(
          i, 0, bytes.size(), reinterpret_cast<uint8_t*>(bytes.data()));
      EXPECT_TRUE(read.ok()) << read;
      hashes[model.tensors[i].info.name] = Sha256Hex(bytes);
    }
    return hashes;
  }

  std::vector<std::string> Names(const LoadedModel& model) {
    std::vector<std::string> names;
    for (const PlacedTensor& t : model.tensors) names.push_back(t.info.name);
    return names;
  }

  void ExpectRefused(const std::string& name, absl::StatusCode code,
                     const std::string& why) {
    auto result = Load(Spec(name));
    ASSERT_FALSE(result.ok()) << name;
    EXPECT_EQ(result.status().code(), code) << result.status();
    EXPECT_THAT(result.status().message(), HasSubstr(why));
    EXPECT_EQ(manager_->Stats().models, 0) << "half-loaded: " << name;
  }

  fs::path root_;
  FakeFileWatcher* watcher_ = nullptr;
  std::unique_ptr<ModelManager> manager_;
};

TEST_F(ModelDirectoryTest, ShardedSafetensorsIsOneModel) {
  std::vector<std::pair<uint64_t, uint64_t>> progress;
  auto result = manager_->Load(Spec("sharded_safetensors"),
                               [&](uint64_t done, uint64_t total) {
                                 progress.emplace_back(done, total);
                               });
  ASSERT_TRUE(result.ok()) << result.status();
  const LoadedModel& model = *result->model;
  EXPECT_EQ(model.FormatName(), "hf-safetensors");
  ASSERT_NE(model.directory, nullptr);
  EXPECT_THAT(model.directory->shards,
              ElementsAre("model-00002-of-00002.safetensors",
                          "model-00001-of-00002.safetensors"));
  EXPECT_EQ(Names(model), ExpectedOrder("sharded_safetensors"));
  EXPECT_EQ(Hashes(model), ExpectedHashes("sharded_safetensors"));
  // Zero-copy: one file view per shard.
  ASSERT_EQ(model.buffers.size(), 2u);
  for (const PlacedBuffer& buffer : model.buffers)
    EXPECT_EQ(buffer.kind, PlacedBuffer::Kind::kFile);
  EXPECT_THAT(model.directory->config_json, HasSubstr("TinyForCausalLM"));
  EXPECT_THAT(model.directory->generation_config_json,
              HasSubstr("bos_token_id"));
  // One progress total over every shard.
  ASSERT_FALSE(progress.empty());
  EXPECT_EQ(progress.back().first, progress.back().second);
  EXPECT_EQ(progress.back().second, 883u);
  for (const auto& [done, total] : progress) EXPECT_EQ(total, 883u);

  auto again = LoadAsync(Spec("sharded_safetensors"));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->cache_hit);
  EXPECT_EQ(again->model_id, result->model_id);
  EXPECT_EQ(manager_->Stats().loads, 1u);
}

TEST_F(ModelDirectoryTest, ShardsGoToGpuArenasAndCasts) {
  auto gpu = Load(Spec("sharded_torch", "cuda:0"));
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  EXPECT_EQ(gpu->model->FormatName(), "hf-torch");
  // One arena on the GPU, filled from every shard in one staging run.
  ASSERT_EQ(gpu->model->buffers.size(), 1u);
  for (const PlacedBuffer& buffer : gpu->model->buffers)
    EXPECT_EQ(buffer.kind, PlacedBuffer::Kind::kGpu);
  EXPECT_EQ(Names(*gpu->model), ExpectedOrder("sharded_torch"));
  EXPECT_EQ(Hashes(*gpu->model), ExpectedHashes("sharded_torch"));
  // Casts: one host segment for the changed storages of every shard.
  LoadSpec cast = Spec("sharded_safetensors");
  cast.cast_dtype = "float32";
  auto cast_model = Load(cast);
  ASSERT_TRUE(cast_model.ok()) << cast_model.status();
  int segments = 0;
  for (const PlacedBuffer& buffer : cast_model->model->buffers)
    segments += buffer.kind == PlacedBuffer::Kind::kSharedMemory;
  EXPECT_EQ(segments, 1);
  for (const PlacedTensor& t : cast_model->model->tensors) {
    if (t.info.name == "lm_head.weight") {
      EXPECT_EQ(t.info.dtype, DType::kFloat32);
    }
  }
}

TEST_F(ModelDirectoryTest, HubSnapshotOfSymlinksIntoBlobs) {
  const std::string snapshot =
      "hub/models--tiny--model/snapshots/"
      "0123456789abcdef";
  auto result = Load(Spec(snapshot));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(Hashes(*result->model), ExpectedHashes("hub"));
  for (const PlacedBuffer& buffer : result->model->buffers)
    EXPECT_THAT(buffer.path, HasSubstr("/blobs/"));
  // A hit needs only stats.
  auto again = LoadAsync(Spec(snapshot));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->cache_hit);
}

TEST_F(ModelDirectoryTest, FormatHintPicksTheLayout) {
  auto st = Load(Spec("single_both"));
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->model->FormatName(), "hf-safetensors");
  EXPECT_EQ(Hashes(*st->model), ExpectedHashes("single_both"));
  LoadSpec torch = Spec("single_both");
  torch.format_hint = "hf-torch";
  auto pt = Load(torch);
  ASSERT_TRUE(pt.ok()) << pt.status();
  EXPECT_EQ(pt->model->FormatName(), "hf-torch");
  EXPECT_THAT(pt->model->directory->shards, ElementsAre("pytorch_model.bin"));
  EXPECT_EQ(Hashes(*pt->model), ExpectedHashes("single_both.hf-torch"));
  auto hit = LoadAsync(torch);
  ASSERT_TRUE(hit.ok()) << hit.status();
  EXPECT_TRUE(hit->cache_hit);
  LoadSpec wrong = Spec("single_both");
  wrong.format_hint = "safetensors";
  auto refused = Load(wrong);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(),
              HasSubstr("hf-safetensors, hf-torch"));
  // A file still refuses a directory hint.
  LoadSpec file = Spec("single_both/model.safetensors");
  file.format_hint = "hf-safetensors";
  EXPECT_EQ(Load(file).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ModelDirectoryTest, OneShardOnItsOwnStillLoads) {
  auto shard =
      Load(Spec("sharded_safetensors/model-00001-of-00002.safetensors"));
  ASSERT_TRUE(shard.ok()) << shard.status();
  EXPECT_EQ(shard->model->FormatName(), "safetensors");
  EXPECT_EQ(shard->model->tensors.size(), 3u);
  // The directory shares that shard's mapping and watch.
  ASSERT_TRUE(Load(Spec("sharded_safetensors")).ok());
  EXPECT_EQ(watcher_->watches().size(), 2u);
}

TEST_F(ModelDirectoryTest, AReplacedShardIsANewEntry) {
  manager_->OpenSession("holder");
  LoadSpec spec = Spec("sharded_safetensors");
  spec.lease_session = "holder";
  auto first = Load(spec);
  ASSERT_TRUE(first.ok()) << first.status();
  // Same bytes, a new file (a new inode): the directory is another version.
  const fs::path shard =
      root_ / "sharded_safetensors/model-00001-of-00002.safetensors";
  const std::string bytes = ReadText(shard);
  fs::remove(shard);
  WriteText(shard, bytes);
  auto second = LoadAsync(Spec("sharded_safetensors"));
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_FALSE(second->cache_hit);
  EXPECT_NE(second->model_id, first->model_id);
  EXPECT_EQ(manager_->Stats().loads, 2u);
  auto old = manager_->Describe(first->model_id);
  ASSERT_TRUE(old.ok());
  EXPECT_TRUE(old->stale);
  // config.json is part of the identity too.
  WriteText(root_ / "sharded_safetensors/config.json", R"({"hidden_size": 9})");
  auto third = Load(Spec("sharded_safetensors"));
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_FALSE(third->cache_hit);
  EXPECT_EQ(third->model->directory->config_json, R"({"hidden_size": 9})");
}

TEST_F(ModelDirectoryTest, AShardChangedInPlaceMakesTheModelStale) {
  manager_->OpenSession("holder");
  LoadSpec spec = Spec("sharded_torch");
  spec.lease_session = "holder";
  auto first = Load(spec);
  ASSERT_TRUE(first.ok()) << first.status();
  // Only the watcher knows (same identity as far as stat can tell).
  EXPECT_GE(
      watcher_->FireChange(fs::canonical(root_ / "sharded_torch" /
                                         "pytorch_model-00002-of-00003.bin")
                               .string(),
                           FileChangeKind::kModified),
      1);
  auto described = manager_->Describe(first->model_id);
  ASSERT_TRUE(described.ok());
  EXPECT_TRUE(described->stale);
  auto again = Load(Spec("sharded_torch"));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(again->cache_hit);
}

// A copy of sharded_safetensors named `name` with its index replaced.
void CopyWithIndex(const fs::path& root, const std::string& name,
                   const std::string& index) {
  fs::copy(root / "sharded_safetensors", root / name,
           fs::copy_options::recursive);
  WriteText(root / name / "model.safetensors.index.json", index);
}

constexpr char kShard1[] = "model-00001-of-00002.safetensors";
constexpr char kShard2[] = "model-00002-of-00002.safetensors";

std::string Index(const std::string& entries,
                  const std::string& metadata = "") {
  return absl::StrCat("{", metadata, "\"weight_map\": {", entries, "}}");
}

std::string GoodEntries(const std::string& change_last = "") {
  return absl::StrCat(
      "\"lm_head.weight\": \"", kShard2, "\", \"model.embed.weight\": \"",
      kShard1, "\", \"model.layers.0.mask\": \"", kShard1,
      "\", \"model.layers.1.bias\": \"", kShard2,
      "\", \"model.layers.1.weight\": \"", kShard2,
      "\", \"model.norm.weight\": ",
      change_last.empty() ? absl::StrCat("\"", kShard1, "\"") : change_last);
}

TEST_F(ModelDirectoryTest, BadIndexesAreRefusedAndNothingIsKept) {
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  CopyWithIndex(root_, "malformed", "{\"weight_map\": {");
  ExpectRefused("malformed", kInvalid, "invalid JSON");
  CopyWithIndex(root_, "duplicate",
                Index(GoodEntries() + ", \"lm_head.weight\": \"x\""));
  ExpectRefused("duplicate", kInvalid, "duplicate");
  CopyWithIndex(root_, "not_string", Index(GoodEntries("7")));
  ExpectRefused("not_string", kInvalid,
                "\"model.norm.weight\" is not a string");
  CopyWithIndex(root_, "wrong_shard",
                Index(GoodEntries(absl::StrCat("\"", kShard2, "\""))));
  ExpectRefused("wrong_shard", kInvalid,
                "\"model.norm.weight\" is in shard " + std::string(kShard1) +
                    " but the index lists it in " + kShard2);
  CopyWithIndex(
      root_, "unlisted",
      Index(absl::StrCat("\"lm_head.weight\": \"", kShard2,
                         "\", \"model.embed.weight\": \"", kShard1, "\"")));
  ExpectRefused("unlisted", kInvalid, "is not in the index's weight_map");
  CopyWithIndex(
      root_, "extra",
      Index(GoodEntries() + absl::StrCat(", \"ghost\": \"", kShard1, "\"")));
  ExpectRefused("extra", kInvalid,
                "tensor \"ghost\" in shard " + std::string(kShard1) +
                    ", which does not have it");
  CopyWithIndex(root_, "total_size",
                Index(GoodEntries(), "\"metadata\": {\"total_size\": 884}, "));
  ExpectRefused("total_size", kInvalid, "total_size is 884 bytes");
  CopyWithIndex(root_, "traversal",
                Index(GoodEntries("\"../sharded_torch/x.bin\"")));
  ExpectRefused("traversal", kInvalid, "not a plain file name");
  CopyWithIndex(root_, "missing",
                Index(GoodEntries("\"model-00003-of-00003.safetensors\"")));
  ExpectRefused("missing", absl::StatusCode::kNotFound,
                "model-00003-of-00003.safetensors");
  CopyWithIndex(root_, "bad_config", Index(GoodEntries()));
  WriteText(root_ / "bad_config/config.json", "[1, 2]");
  ExpectRefused("bad_config", kInvalid, "config.json: not a JSON object");
  CopyWithIndex(root_, "wrong_format", Index(GoodEntries()));
  fs::copy_file(root_ / "sharded_torch/pytorch_model-00001-of-00003.bin",
                root_ / "wrong_format" / kShard1,
                fs::copy_options::overwrite_existing);
  ExpectRefused("wrong_format", kInvalid,
                "a torch-zip file in an "
                "hf-safetensors model");
  fs::create_directories(root_ / "empty");
  ExpectRefused("empty", absl::StatusCode::kNotFound, "not a model directory");
}

TEST_F(ModelDirectoryTest, AShardThatEscapesTheRootIsRefused) {
  const fs::path outside =
      fs::path(::testing::TempDir()) / absl::StrCat("outside-", getpid());
  fs::create_directories(outside);
  fs::copy_file(root_ / "sharded_safetensors" / kShard1, outside / kShard1,
                fs::copy_options::overwrite_existing);
  CopyWithIndex(root_, "escape", Index(GoodEntries()));
  fs::remove(root_ / "escape" / kShard1);
  fs::create_symlink(outside / kShard1, root_ / "escape" / kShard1);
  ExpectRefused("escape", absl::StatusCode::kPermissionDenied,
                "outside the model roots");
  // The same through LoadAsync (the hit path's stats).
  auto async = LoadAsync(Spec("escape"));
  EXPECT_EQ(async.status().code(), absl::StatusCode::kPermissionDenied);
  fs::remove_all(outside);
}

}  // namespace
}  // namespace weightd
