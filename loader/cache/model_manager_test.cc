#include "loader/cache/model_manager.h"

#include <dirent.h>
#include <unistd.h>

#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "loader/cache/device_set.h"
#include "loader/common/mutex.h"
#include "loader/common/test_dir.h"
#include "loader/io/fake_file_watcher.h"

namespace weightd {
namespace {

namespace fs = std::filesystem;

int OpenDescriptors() {
  int count = 0;
  for (const auto& entry : fs::directory_iterator("/proc/self/fd")) {
    (void)entry;
    ++count;
  }
  return count;
}

class ModelManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = testing::FreshTestDir("manager");
    for (const char* name : {"training.pt", "many.pt", "model.safetensors"}) {
      const fs::path fixture = fs::path("tests/fixtures/data") / name;
      ASSERT_TRUE(fs::exists(fixture)) << fixture << " missing from runfiles";
      fs::copy_file(fixture, root_ / name);
    }
  }
  void TearDown() override {
    manager_.reset();
    fs::remove_all(root_);
  }

  void Start(ModelManager::Options options,
             DeviceSet::Options device_options = {}) {
    device_options.fake_gpus = 1;
    auto devices = DeviceSet::Create(device_options);
    ASSERT_TRUE(devices.ok()) << devices.status();
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

  LoadSpec Spec(const std::string& name, const std::string& target) {
    LoadSpec spec;
    spec.path = (root_ / name).string();
    spec.target = target;
    return spec;
  }

  absl::StatusOr<ModelManager::LoadResult> Load(const LoadSpec& spec) {
    return manager_->Load(spec, nullptr);
  }

  fs::path root_;
  FakeFileWatcher* watcher_ = nullptr;  // owned by manager_
  std::unique_ptr<ModelManager> manager_;
};

TEST_F(ModelManagerTest, AFileThatChangesOnDiskIsNeverHandedOutAgain) {
  Start({});
  manager_->OpenSession("holder");
  LoadSpec spec = Spec("training.pt", "cpu");
  spec.lease_session = "holder";
  auto first = Load(spec);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(watcher_->watches().size(), 1u);  // one per mapped file
  ASSERT_TRUE(Load(Spec("training.pt", "meta")).ok());
  EXPECT_EQ(watcher_->watches().size(), 1u);
  // Rewritten with the same identity as far as stat can tell (a coarse
  // clock): only the watcher knows.
  EXPECT_EQ(watcher_->FireChange(spec.path, FileChangeKind::kModified), 1);
  auto described = manager_->Describe(first->model_id);
  ASSERT_TRUE(described.ok());  // kept for its lease holder...
  EXPECT_TRUE(described->stale);
  auto again = Load(Spec("training.pt", "cpu"));  // ...but not handed out
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(again->cache_hit);
  EXPECT_NE(again->model_id, first->model_id);
  EXPECT_EQ(manager_->Stats().models, 2);  // the stale leased one, the new
  manager_->ReleaseSession("holder");
  EXPECT_FALSE(manager_->Describe(first->model_id).ok());
}

TEST_F(ModelManagerTest, WatchesEndWithTheLastModelOfAFile) {
  Start({});
  auto model = Load(Spec("many.pt", "cpu"));
  ASSERT_TRUE(model.ok());
  EXPECT_EQ(watcher_->active_watches(), 1u);
  ASSERT_TRUE(manager_->Unload(model->model_id, false).ok());
  model->model.reset();
  EXPECT_EQ(watcher_->active_watches(), 0u);
  watcher_->SetWatchError(absl::ResourceExhaustedError("too many watches"));
  EXPECT_TRUE(Load(Spec("many.pt", "cpu")).ok());  // loads without a watch
}

TEST_F(ModelManagerTest, FileTruncatedUnderItsMappingIsDataLoss) {
  Start({});
  const std::string path = (root_ / "many.pt").string();
  auto model = Load(Spec("many.pt", "meta"));
  ASSERT_TRUE(model.ok()) << model.status();
  const PlacedTensor& tensor = model->model->tensors.back();
  std::string out(tensor.byte_size, '\0');
  ASSERT_TRUE(model->model
                  ->ReadTensorRange(model->model->tensors.size() - 1, 0,
                                    tensor.byte_size,
                                    reinterpret_cast<uint8_t*>(out.data()))
                  .ok());
  ASSERT_EQ(truncate(path.c_str(), 4096), 0);
  absl::Status read = model->model->ReadTensorRange(
      model->model->tensors.size() - 1, 0, tensor.byte_size,
      reinterpret_cast<uint8_t*>(out.data()));
  EXPECT_EQ(read.code(), absl::StatusCode::kDataLoss) << read;
  EXPECT_NE(read.message().find(path), std::string::npos) << read;
  // A new load sees the new (bad) file, not the damaged mapping.
  auto reload = Load(Spec("many.pt", "meta"));
  EXPECT_EQ(reload.status().code(), absl::StatusCode::kInvalidArgument)
      << reload.status();
}

TEST_F(ModelManagerTest, EveryNameOfOneGpuIsOneCopy) {
  Start({});
  const std::string uuid = manager_->Info().gpus.at(0).uuid;
  auto first = Load(Spec("training.pt", "cuda:0"));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_FALSE(first->cache_hit);
  for (const std::string& name :
       std::vector<std::string>{"cuda", "cuda:00", " cuda:0", "cuda:" + uuid}) {
    auto again = Load(Spec("training.pt", name));
    ASSERT_TRUE(again.ok()) << name << ": " << again.status();
    EXPECT_TRUE(again->cache_hit) << name;
    EXPECT_EQ(again->model_id, first->model_id) << name;
  }
  LoadSpec a = Spec("training.pt", "cpu"), b = Spec("training.pt", "cpu");
  a.cast_dtype = "torch.bfloat16";
  b.cast_dtype = "bfloat16";
  auto cast_a = Load(a);
  auto cast_b = Load(b);
  ASSERT_TRUE(cast_a.ok() && cast_b.ok());
  EXPECT_EQ(cast_a->model_id, cast_b->model_id);
  EXPECT_EQ(manager_->Stats().models, 2);
  EXPECT_EQ(manager_->Stats().used.at(uuid),
            first->model->resident.at(uuid));  // one arena on the GPU
}

TEST_F(ModelManagerTest, FormatHintIsCheckedOnHitsToo) {
  Start({});
  manager_->OpenSession("s1");
  LoadSpec spec = Spec("training.pt", "cpu");
  spec.format_hint = "safetensors";
  spec.lease_session = "s1";
  auto miss = Load(spec);
  EXPECT_EQ(miss.status().code(), absl::StatusCode::kInvalidArgument);
  spec.format_hint = "";
  ASSERT_TRUE(Load(spec).ok());
  EXPECT_EQ(manager_->Stats().active_leases, 1);
  spec.format_hint = "safetensors";
  auto hit = Load(spec);
  EXPECT_EQ(hit.status().code(), absl::StatusCode::kInvalidArgument)
      << hit.status();
  EXPECT_NE(hit.status().message().find("torch-zip"), std::string::npos);
  EXPECT_EQ(manager_->Stats().active_leases, 1);  // the refused hit kept none
  spec.format_hint = "torch-zip";
  EXPECT_TRUE(Load(spec).ok());
}

TEST_F(ModelManagerTest, ModelsOfOneFileShareOneMapping) {
  Start({});
  auto whole = Load(Spec("many.pt", "cpu"));
  ASSERT_TRUE(whole.ok()) << whole.status();
  const int descriptors = OpenDescriptors();
  std::vector<ModelManager::LoadResult> results;
  for (size_t i = 0; i < whole->model->tensors.size() && i < 120; ++i) {
    LoadSpec spec = Spec("many.pt", "cpu");
    spec.filter = {whole->model->tensors[i].info.name};
    auto one = Load(spec);
    ASSERT_TRUE(one.ok()) << one.status();
    EXPECT_EQ(one->model->file.get(), whole->model->file.get());
    results.push_back(*std::move(one));
  }
  EXPECT_GT(results.size(), 50u);
  EXPECT_LE(OpenDescriptors(), descriptors + 2);
}

TEST_F(ModelManagerTest, EntriesAreBoundedAndLeasedOnesStay) {
  ModelManager::Options options;
  options.max_models = 3;
  Start(options);
  manager_->OpenSession("s");
  const std::vector<std::string> names = {"training.pt", "many.pt",
                                          "model.safetensors"};
  for (const std::string& name : names) {
    LoadSpec spec = Spec(name, "cpu");
    spec.lease_session = "s";
    ASSERT_TRUE(Load(spec).ok()) << name;
  }
  auto full = Load(Spec("training.pt", "meta"));
  EXPECT_EQ(full.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(full.status().message().find("--max_models"), std::string::npos)
      << full.status();
  manager_->ReleaseSession("s");
  // Unleased now: new entries evict the least recently used.
  for (const char* target : {"meta", "cuda:0", "cpu"}) {
    ASSERT_TRUE(Load(Spec("many.pt", target)).ok()) << target;
    EXPECT_LE(manager_->Stats().models, 3);
  }
  EXPECT_GE(manager_->Stats().evictions, 2u);
}

TEST_F(ModelManagerTest, PathsOutsideTheRootsAreRefused) {
  Start({});
  LoadSpec spec = Spec("training.pt", "cpu");
  spec.path = "/etc/passwd";
  EXPECT_EQ(Load(spec).status().code(), absl::StatusCode::kPermissionDenied);
  spec.path = (root_ / "missing.pt").string();
  EXPECT_EQ(Load(spec).status().code(), absl::StatusCode::kNotFound);
  fs::create_symlink("/etc/passwd", root_ / "escape.pt");
  spec.path = (root_ / "escape.pt").string();
  EXPECT_EQ(Load(spec).status().code(), absl::StatusCode::kPermissionDenied);
}

// Collects LoadAsync answers.
struct Answers {
  Mutex mu;
  CondVar changed;
  std::vector<absl::StatusOr<ModelManager::LoadResult>> results
      ABSL_GUARDED_BY(mu);
  ModelManager::LoadDone Add() {
    return [this](absl::StatusOr<ModelManager::LoadResult> result) {
      MutexLock lock(&mu);
      results.push_back(std::move(result));
      changed.SignalAll();
    };
  }
  void WaitFor(size_t count) {
    MutexLock lock(&mu);
    while (results.size() < count) changed.Wait(&mu);
  }
};

TEST_F(ModelManagerTest, AsyncLoadsAreBoundedHitsDoNotWaitAndShutdownAnswers) {
  ModelManager::Options options;
  options.max_concurrent_loads = 1;
  options.max_queued_loads = 1;
  DeviceSet::Options device_options;
  device_options.staging_chunk_bytes = 4096;
  device_options.fake_gpu_copy_delay = absl::Milliseconds(20);
  Start(options, device_options);
  ASSERT_TRUE(Load(Spec("training.pt", "cpu")).ok());  // ready: a hit later

  Answers answers;
  CancellationToken slow_cancel;
  Notification progressed;
  // Occupies the only load thread for a while (many delayed chunks).
  manager_->LoadAsync(
      Spec("many.pt", "cuda:0"),
      [&](uint64_t done, uint64_t) {
        if (done > 0 && !progressed.HasBeenNotified()) progressed.Notify();
      },
      &slow_cancel, answers.Add());
  progressed.WaitForNotification();
  manager_->LoadAsync(Spec("model.safetensors", "cuda:0"), nullptr, nullptr,
                      answers.Add());  // queued
  EXPECT_EQ(manager_->queued_loads(), 1);
  manager_->LoadAsync(Spec("model.safetensors", "meta"), nullptr, nullptr,
                      answers.Add());  // the queue is full
  manager_->LoadAsync(Spec("training.pt", "cpu"), nullptr, nullptr,
                      answers.Add());  // a hit, answered at once
  {
    MutexLock lock(&answers.mu);
    ASSERT_EQ(answers.results.size(), 2u);
    EXPECT_EQ(answers.results[0].status().code(),
              absl::StatusCode::kResourceExhausted);
    EXPECT_NE(answers.results[0].status().message().find("load queue is full"),
              std::string::npos)
        << answers.results[0].status();
    ASSERT_TRUE(answers.results[1].ok()) << answers.results[1].status();
    EXPECT_TRUE(answers.results[1]->cache_hit);
  }
  manager_->Shutdown();  // the queued load is answered; the running one stops
  slow_cancel.Cancel();
  answers.WaitFor(4);
  MutexLock lock(&answers.mu);
  std::multiset<absl::StatusCode> codes;
  for (size_t i = 2; i < 4; ++i)
    codes.insert(answers.results[i].status().code());
  EXPECT_EQ(codes,
            (std::multiset<absl::StatusCode>{absl::StatusCode::kCancelled,
                                             absl::StatusCode::kUnavailable}));
  manager_->LoadAsync(Spec("many.pt", "meta"), nullptr, nullptr,
                      [](absl::StatusOr<ModelManager::LoadResult> result) {
                        EXPECT_EQ(result.status().code(),
                                  absl::StatusCode::kUnavailable);
                      });
}

}  // namespace
}  // namespace weightd
