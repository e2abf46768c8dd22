// The daemon end to end, in process: gRPC over a Unix socket and TCP, the C++
// client, leases, the cache's single flight, the fake GPU, errors, metrics. The
// Python client and real PyTorch are covered by python_client_test.
#include "server/daemon.h"

#include <httplib.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/weightd_client.h"
#include "gtest/gtest.h"
#include "loader/common/json.h"
#include "loader/common/sha256.h"
#include "loader/common/test_dir.h"
#include "loader/format/reader.h"
#include "loader/format/tensor_bytes.h"
#include "tests/bench/bench_util.h"

extern char** environ;

namespace weightd {
namespace {

namespace fs = std::filesystem;
namespace v1 = ::weightd::v1;

using testing::TestTempDir;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in),
                     std::istreambuf_iterator<char>());
}

// A small safetensors file: float32 matrix, bfloat16 vector, int64 scalar,
// empty tensor.
void WriteSafetensors(const std::string& path, int seed) {
  std::string data;
  Json header = Json::MakeObject();
  auto add = [&](const std::string& name, const std::string& dtype,
                 std::vector<int64_t> shape, const std::string& bytes) {
    Json entry = Json::MakeObject();
    entry.Set("dtype", Json(dtype));
    Json shape_json = Json::MakeArray();
    for (int64_t dim : shape) shape_json.Append(Json(dim));
    entry.Set("shape", std::move(shape_json));
    Json offsets = Json::MakeArray();
    offsets.Append(Json(static_cast<uint64_t>(data.size())));
    offsets.Append(Json(static_cast<uint64_t>(data.size() + bytes.size())));
    entry.Set("data_offsets", std::move(offsets));
    header.Set(name, std::move(entry));
    data += bytes;
  };
  std::string matrix(4 * 3 * 5, '\0');
  for (size_t i = 0; i < 15; ++i) {
    float value = static_cast<float>(i * seed) * 0.5f;
    std::memcpy(&matrix[i * 4], &value, 4);
  }
  add("layers.0.weight", "F32", {3, 5}, matrix);
  std::string vector(2 * 7, '\0');
  for (size_t i = 0; i < vector.size(); ++i)
    vector[i] = static_cast<char>(i + seed);
  add("layers.0.bias", "BF16", {7}, vector);
  std::string scalar(8, '\0');
  scalar[0] = static_cast<char>(seed);
  add("step", "I64", {}, scalar);
  add("empty", "F32", {0, 4}, "");
  std::string header_text = header.Dump();
  while (header_text.size() % 8) header_text += ' ';
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  uint64_t size = header_text.size();
  out.write(reinterpret_cast<const char*>(&size), 8);
  out << header_text << data;
}

// One float32 tensor of `count` elements.
void WriteBigSafetensors(const std::string& path, uint64_t count) {
  std::string header =
      absl::StrCat("{\"w\":{\"dtype\":\"F32\",\"shape\":[", count,
                   "],\"data_offsets\":[0,", count * 4, "]}}");
  while (header.size() % 8) header += ' ';
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  uint64_t size = header.size();
  out.write(reinterpret_cast<const char*>(&size), 8);
  out << header;
  std::vector<float> block(1 << 16);
  for (uint64_t done = 0; done < count; done += block.size()) {
    for (size_t i = 0; i < block.size(); ++i)
      block[i] = static_cast<float>(done + i) * 0.25f;
    out.write(reinterpret_cast<const char*>(block.data()),
              std::min<uint64_t>(block.size(), count - done) * 4);
  }
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif

// Every fixture file the offline reader accepts (canonical paths; the
// bad-input fixtures and metadata files left out).
std::vector<std::string> ReadableFixtures() {
  std::vector<std::string> paths;
  for (const auto& entry : fs::recursive_directory_iterator("tests/fixtures")) {
    if (!entry.is_regular_file()) continue;
    std::string path = fs::canonical(entry.path()).string();
    ReadOptions options;
    options.file_name = path;
    if (ReadCheckpoint(ReadFile(path), options).ok()) paths.push_back(path);
  }
  return paths;
}

// The offline answer: every tensor's sha256 as `weightctl inspect --hash`
// computes it.
std::map<std::string, std::string> OfflineHashes(const std::string& path) {
  std::string bytes = ReadFile(path);
  ReadOptions options;
  options.file_name = path;
  auto checkpoint = ReadCheckpoint(bytes, options);
  EXPECT_TRUE(checkpoint.ok()) << checkpoint.status();
  std::map<std::string, std::string> hashes;
  if (!checkpoint.ok()) return hashes;
  for (const TensorInfo& tensor : checkpoint->tensors) {
    const StorageInfo& storage = checkpoint->storages[tensor.storage_index];
    const uint8_t* data =
        storage.inflated
            ? reinterpret_cast<const uint8_t*>(storage.inflated->data())
            : reinterpret_cast<const uint8_t*>(bytes.data()) +
                  storage.file_offset;
    hashes[tensor.name] =
        TensorSha256Hex(tensor, data, storage.num_bytes, storage.byte_order);
  }
  return hashes;
}

class DaemonTest : public ::testing::Test {
 protected:
  static constexpr uint64_t kStagingChunk = 65539;

  void SetUp() override {
    root_ = testing::FreshTestDir("models");
    model_path_ = (root_ / "model.safetensors").string();
    WriteSafetensors(model_path_, 3);
    ServerConfig config;
    // Unix socket paths are limited to 107 bytes; the sandbox's TEST_TMPDIR is
    // longer.
    static int counter = 0;
    socket_dir_ = absl::StrCat("/tmp/weightd-test-", getpid(), "-", counter++);
    socket_path_ = socket_dir_ + "/w.sock";
    config.listen = {"unix:" + socket_path_, "127.0.0.1:0"};
    config.insecure_tcp = true;  // TLS is access_test's
    config.manager.model_roots = {root_.string()};
    // Runfiles are symlinks into the source tree; the daemon (rightly) refuses
    // symlinks that leave a root, so the root is the fixtures' real directory.
    if (fs::exists("tests/fixtures/data/many.pt")) {
      config.manager.model_roots.push_back(
          fs::canonical("tests/fixtures/data/many.pt").parent_path().string());
    }
    config.metrics_address = "127.0.0.1:0";
    config.devices.fake_gpus = 1;
    // A small odd-sized ring: storages span many chunks, and generated
    // (converted) chunks must round down to whole elements.
    config.devices.staging_chunk_bytes = kStagingChunk;
    config.devices.staging_buffers = 4;
    auto daemon = Daemon::Create(config);
    ASSERT_TRUE(daemon.ok()) << daemon.status();
    daemon_ = *std::move(daemon);
    address_ = "unix:" + socket_path_;
  }

  void TearDown() override {
    daemon_.reset();
    fs::remove_all(root_);
    fs::remove_all(socket_dir_);
  }

  // Replaces the daemon with one on the same socket and model root, without a
  // metrics endpoint, configured further by `adjust`. Call through
  // ASSERT_NO_FATAL_FAILURE.
  void RestartDaemon(
      const std::function<void(ServerConfig&)>& adjust = nullptr) {
    daemon_.reset();
    ServerConfig config;
    config.listen = {address_};
    config.manager.model_roots = {root_.string()};
    config.metrics_address = "";
    if (adjust) adjust(config);
    auto daemon = Daemon::Create(config);
    ASSERT_TRUE(daemon.ok()) << daemon.status();
    daemon_ = *std::move(daemon);
  }

  std::unique_ptr<WeightdClient> Connect(const std::string& address = "") {
    auto client = WeightdClient::Connect(address.empty() ? address_ : address);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  std::map<std::string, std::string> ClientHashes(ClientModel& model) {
    std::map<std::string, std::string> hashes;
    for (const v1::Tensor& tensor : model.description().tensors()) {
      auto bytes = model.ReadTensorBytes(tensor);
      EXPECT_TRUE(bytes.ok()) << tensor.name() << ": " << bytes.status();
      if (bytes.ok()) hashes[tensor.name()] = Sha256Hex(*bytes);
    }
    return hashes;
  }

  v1::StatsResponse Stats() {
    auto stats = Connect()->Stats();
    EXPECT_TRUE(stats.ok());
    return stats.ok() ? *stats : v1::StatsResponse();
  }

  fs::path root_;
  std::string model_path_;
  std::string socket_dir_;
  std::string socket_path_;
  std::string address_;
  std::unique_ptr<Daemon> daemon_;
};

TEST_F(DaemonTest, HostLoadIsZeroCopyAndMatchesTheOfflineReader) {
  auto client = Connect();
  ClientLoadOptions options{model_path_, "cpu"};
  auto model = client->Load(options);
  ASSERT_TRUE(model.ok()) << model.status();
  const v1::ModelDescription& description = (*model)->description();
  EXPECT_EQ(description.format(), "safetensors");
  ASSERT_EQ(description.buffers_size(), 1);
  EXPECT_TRUE(
      description.buffers(0).has_file());  // zero copy: the mapped file itself
  EXPECT_EQ(description.resident_bytes(), 0u);
  EXPECT_EQ(ClientHashes(**model), OfflineHashes(model_path_));
}

TEST_F(DaemonTest, FakeGpuLoadMatchesTheOfflineReader) {
  auto client = Connect();
  ClientLoadOptions options{model_path_, "cuda:0"};
  std::vector<uint64_t> progress;
  auto model = client->Load(options, [&](uint64_t done, uint64_t total) {
    progress.push_back(done);
    EXPECT_LE(done, total);
  });
  ASSERT_TRUE(model.ok()) << model.status();
  const v1::ModelDescription& description = (*model)->description();
  ASSERT_EQ(description.buffers_size(), 1);
  ASSERT_TRUE(description.buffers(0).has_gpu());
  // The fake GPU's arena is opened by its handle kind; the deprecated `fake`
  // is still written for clients from before handle kinds.
  EXPECT_EQ(description.buffers(0).gpu().handle_kind(),
            v1::GpuArena::SHARED_MEMORY);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  EXPECT_TRUE(description.buffers(0).gpu().fake());
#pragma GCC diagnostic pop
  EXPECT_EQ(description.buffers(0).gpu().ipc_handle().size(), 64u);
  for (const v1::Tensor& tensor : description.tensors()) {
    EXPECT_EQ(tensor.placed_location(), "cuda:0");
  }
  EXPECT_EQ(ClientHashes(**model), OfflineHashes(model_path_));
  v1::StatsResponse stats = Stats();
  bool gpu_tier = false;
  for (const auto& tier : stats.tiers()) {
    if (absl::StartsWith(tier.tier(), "GPU-") && tier.used_bytes() > 0)
      gpu_tier = true;
  }
  EXPECT_TRUE(gpu_tier);
}

TEST_F(DaemonTest, MetaLoadReadsNoBytes) {
  auto model = Connect()->Load({model_path_, "meta"});
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->description().buffers_size(), 0);
  for (const auto& tensor : (*model)->description().tensors()) {
    EXPECT_EQ(tensor.buffer_index(), -1);
    EXPECT_EQ(tensor.placed_location(), "meta");
  }
}

TEST_F(DaemonTest, CastOnLoadGoesThroughSharedMemory) {
  ClientLoadOptions options{model_path_, "cpu"};
  options.cast_dtype = "bfloat16";
  auto model = Connect()->Load(options);
  ASSERT_TRUE(model.ok()) << model.status();
  const auto& description = (*model)->description();
  for (const auto& tensor : description.tensors()) {
    if (tensor.name() == "step") {
      EXPECT_EQ(tensor.dtype(),
                "int64");  // only floating-point tensors are cast
    } else {
      EXPECT_EQ(tensor.dtype(), "bfloat16") << tensor.name();
    }
  }
  const v1::Tensor* weight = nullptr;
  for (const auto& tensor : description.tensors()) {
    if (tensor.name() == "layers.0.weight") weight = &tensor;
  }
  ASSERT_NE(weight, nullptr);
  EXPECT_TRUE(description.buffers(weight->buffer_index()).has_shared_memory());
  auto bytes = (*model)->ReadTensorBytes(*weight);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  ASSERT_EQ(bytes->size(), 15u * 2);
  // element 2 = 2 * 3 * 0.5 = 3.0f -> bfloat16 0x4040
  EXPECT_EQ(static_cast<uint8_t>((*bytes)[4]), 0x40);
  EXPECT_EQ(static_cast<uint8_t>((*bytes)[5]), 0x40);
}

TEST_F(DaemonTest, SecondClientIsACacheHit) {
  auto first = Connect()->Load({model_path_, "cpu"});
  auto second = Connect()->Load({model_path_, "cpu"});
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_EQ((*first)->model_id(), (*second)->model_id());
  EXPECT_TRUE((*second)->description().cache_hit());
  v1::StatsResponse stats = Stats();
  EXPECT_EQ(stats.loads(), 1u);
  EXPECT_EQ(stats.cache_hits(), 1u);
  EXPECT_EQ(stats.active_leases(), 2);
}

TEST_F(DaemonTest, ConcurrentIdenticalLoadsReadTheFileOnce) {
  std::vector<std::thread> threads;
  std::vector<std::string> ids(6);
  for (int i = 0; i < 6; ++i) {
    threads.emplace_back([&, i] {
      auto client = Connect();
      auto model = client->Load({model_path_, "cuda:0"});
      ASSERT_TRUE(model.ok()) << model.status();
      ids[i] = (*model)->model_id();
    });
  }
  for (auto& thread : threads) thread.join();
  for (const auto& id : ids) EXPECT_EQ(id, ids[0]);
  v1::StatsResponse stats = Stats();
  EXPECT_EQ(stats.loads(), 1u);
  EXPECT_EQ(stats.cache_hits(), 5u);
}

TEST_F(DaemonTest, UnloadIsRefusedWhileLeased) {
  auto client = Connect();
  auto model = client->Load({model_path_, "cpu"});
  ASSERT_TRUE(model.ok());
  std::string id = (*model)->model_id();
  auto refused = client->Unload(id, false);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "leased"))
      << refused.status();
  model->reset();  // releases the lease on the stream
  absl::Status unloaded;
  for (int i = 0; i < 100; ++i) {
    unloaded = client->Unload(id, false).status();
    if (unloaded.ok()) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_TRUE(unloaded.ok()) << unloaded;
}

TEST_F(DaemonTest, KilledClientLosesItsLeaseWithinSeconds) {
  int out_pipe[2];
  ASSERT_EQ(pipe(out_pipe), 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, out_pipe[0]);
  std::string binary = "tests/integration/lease_holder";
  std::vector<std::string> args = {binary, address_, model_path_, "cuda:0"};
  std::vector<char*> argv;
  for (auto& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  pid_t child = 0;
  int spawned = posix_spawn(&child, binary.c_str(), &actions, nullptr,
                            argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ASSERT_EQ(spawned, 0);
  close(out_pipe[1]);
  char line[256] = {0};
  ssize_t got = read(out_pipe[0], line, sizeof(line) - 1);
  close(out_pipe[0]);
  ASSERT_GT(got, 0);
  EXPECT_TRUE(absl::StartsWith(line, "leased ")) << line;
  EXPECT_EQ(Stats().active_leases(), 1);
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  int leases = -1;
  for (int i = 0; i < 100 && leases != 0; ++i) {
    absl::SleepFor(absl::Milliseconds(50));
    leases = Stats().active_leases();
  }
  EXPECT_EQ(leases, 0);
}

TEST_F(DaemonTest, LoadNamingAnUnopenedLeaseSessionIsRefused) {
  // Leases belong to Lease streams: a made-up (or ended) session must not pin
  // a model forever.
  auto client = Connect();
  grpc::ClientContext context;
  v1::LoadRequest request;
  request.set_path(model_path_);
  request.mutable_placement()->set_target("cpu");
  request.set_lease_session("session-made-up");
  auto reader = client->stub()->Load(&context, request);
  v1::LoadEvent event;
  while (reader->Read(&event)) {
  }
  grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
      << status.error_message();
  EXPECT_NE(status.error_message().find("session-made-up"), std::string::npos)
      << status.error_message();
  EXPECT_EQ(Stats().active_leases(), 0);
  EXPECT_TRUE(client->Load({model_path_, "cpu"}).ok());
}

TEST_F(DaemonTest, ClientKeepsWorkingAcrossADaemonRestart) {
  // The client's lease session dies with the daemon; its next load must open
  // a new one rather than name the dead session.
  auto client = Connect();
  ASSERT_TRUE(client->Load({model_path_, "cpu"}).ok());
  ASSERT_NO_FATAL_FAILURE(RestartDaemon());
  absl::StatusOr<std::unique_ptr<ClientModel>> model =
      absl::UnavailableError("not tried");
  // The channel reconnects and the old stream's end is noticed: allow a moment.
  for (int i = 0; i < 100; ++i) {
    model = client->Load({model_path_, "cpu"});
    if (model.ok()) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(Stats().active_leases(), 1);
}

TEST_F(DaemonTest, ReadTensorsOverTcpEqualsTheFile) {
  ASSERT_EQ(daemon_->tcp_ports().size(), 1u);
  auto client = Connect(absl::StrCat("127.0.0.1:", daemon_->tcp_ports()[0]));
  auto model = client->Load({model_path_, "cpu"});
  ASSERT_TRUE(model.ok()) << model.status();
  std::map<std::string, std::string> hashes;
  absl::Status status =
      client->ReadTensors((*model)->model_id(), {},
                          [&](const v1::Tensor& tensor, std::string bytes) {
                            EXPECT_EQ(bytes.size(), tensor.byte_size());
                            hashes[tensor.name()] = Sha256Hex(bytes);
                            return absl::OkStatus();
                          });
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(hashes, OfflineHashes(model_path_));
}

TEST_F(DaemonTest, ErrorsNameTheFileAndTheDaemonKeepsServing) {
  auto client = Connect();
  auto outside = client->Load({"/etc/passwd", "cpu"});
  EXPECT_EQ(outside.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(absl::StrContains(outside.status().message(), "/etc/passwd"));
  // A missing file outside the roots says nothing about what exists there.
  EXPECT_EQ(client->Load({"/nonexistent/dir/x.pt", "cpu"}).status().code(),
            absl::StatusCode::kPermissionDenied);
  auto missing = client->Load({(root_ / "nope.pt").string(), "cpu"});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  std::string garbage = (root_ / "garbage.pt").string();
  std::ofstream(garbage) << "this is not a checkpoint at all";
  auto bad = client->Load({garbage, "cpu"});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "garbage.pt"))
      << bad.status();
  auto bad_device = client->Load({model_path_, "cuda:7"});
  EXPECT_EQ(bad_device.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(client->Load({model_path_, "cpu"}).ok());
  // Only the garbage file was parsed and failed; the rest (the GPU the
  // daemon lacks included) were refused before any file was opened.
  EXPECT_EQ(Stats().load_failures(), 1u);
}

TEST_F(DaemonTest, ClientThatGoesAwayMidLoadStopsItAndLeavesNothing) {
  // A slow fake GPU: 16 MiB in 64 KiB chunks at 2 ms each takes over half a
  // second, so the load is still running when the client cancels.
  ASSERT_NO_FATAL_FAILURE(RestartDaemon([](ServerConfig& config) {
    config.devices.fake_gpus = 1;
    config.devices.fake_gpu_copy_delay = absl::Microseconds(2000);
    config.devices.staging_chunk_bytes = 64 << 10;
  }));
  const std::string path = (root_ / "slow.safetensors").string();
  WriteBigSafetensors(path, 4u << 20);
  auto client = Connect();
  grpc::ClientContext context;
  v1::LoadRequest request;
  request.set_path(path);
  request.mutable_placement()->set_target("cuda:0");
  auto reader = client->stub()->Load(&context, request);
  v1::LoadEvent event;
  ASSERT_TRUE(reader->Read(&event));  // the load has started
  context.TryCancel();
  while (reader->Read(&event)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  // The daemon notices, stops between chunks and frees the arena.
  v1::StatsResponse stats;
  for (int i = 0; i < 500; ++i) {
    stats = Stats();
    if (stats.load_failures() == 1) break;
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(stats.load_failures(), 1u);
  EXPECT_EQ(stats.models(), 0);
  for (const auto& tier : stats.tiers())
    EXPECT_EQ(tier.used_bytes(), 0u) << tier.tier();
  // And serves the next request for the same file in full.
  auto model = client->Load({path, "cuda:0"});
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_FALSE((*model)->description().cache_hit());
  EXPECT_EQ(Stats().models(), 1);
}

TEST_F(DaemonTest, OverBudgetIsResourceExhaustedAndLeavesNothingBehind) {
  ASSERT_NO_FATAL_FAILURE(RestartDaemon([](ServerConfig& config) {
    config.devices.fake_gpus = 1;
    config.manager.gpu_budget_bytes =
        512;  // the model needs three 256-byte-aligned storages
  }));
  auto client = Connect();
  auto refused = client->Load({model_path_, "cuda:0"});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(
      absl::StrContains(refused.status().message(), "model.safetensors"))
      << refused.status();
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "budget"));
  v1::StatsResponse stats = Stats();
  for (const auto& tier : stats.tiers())
    EXPECT_EQ(tier.used_bytes(), 0u) << tier.tier();
  EXPECT_EQ(stats.models(), 0);
  EXPECT_TRUE(
      client->Load({model_path_, "cpu"}).ok());  // host placement still works
}

TEST_F(DaemonTest, ChangedFileIsLoadedAgain) {
  auto client = Connect();
  auto first = client->Load({model_path_, "cpu"});
  ASSERT_TRUE(first.ok());
  std::string before = (*first)->model_id();
  auto first_hashes = ClientHashes(**first);
  first->reset();
  // Rewrite under a new inode (as tools that save atomically do).
  std::string replacement = model_path_ + ".tmp";
  WriteSafetensors(replacement, 5);
  fs::rename(replacement, model_path_);
  auto second = client->Load({model_path_, "cpu"});
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_NE((*second)->model_id(), before);
  EXPECT_NE(ClientHashes(**second), first_hashes);
  EXPECT_EQ(ClientHashes(**second), OfflineHashes(model_path_));
}

TEST_F(DaemonTest, EveryFixtureLoadsThroughTheDaemonAsOffline) {
  if (!fs::exists("tests/fixtures")) GTEST_SKIP() << "no fixtures";
  auto client = Connect();
  int loaded = 0;
  for (const std::string& path : ReadableFixtures()) {
    for (const char* device : {"cpu", "cuda:0"}) {
      auto model = client->Load({path, device});
      ASSERT_TRUE(model.ok())
          << path << " on " << device << ": " << model.status();
      EXPECT_EQ(ClientHashes(**model), OfflineHashes(path))
          << path << " on " << device;
    }
    ++loaded;
  }
  EXPECT_GT(loaded, 5);
}

TEST_F(DaemonTest, CastAndByteSwapOntoTheGpuEqualTheHostPlacement) {
  // Host placements convert whole storages into shared memory; GPU placements
  // convert chunk by chunk inside the staging ring. Same bytes either way.
  if (!fs::exists("tests/fixtures")) GTEST_SKIP() << "no fixtures";
  auto client = Connect();
  int compared = 0;
  for (const std::string& path : ReadableFixtures()) {
    for (const char* cast : {"", "bfloat16", "float16", "float32"}) {
      std::map<std::string, std::string> on[2];
      const char* devices[2] = {"cpu", "cuda:0"};
      for (int d = 0; d < 2; ++d) {
        ClientLoadOptions load{path, devices[d]};
        load.cast_dtype = cast;
        auto model = client->Load(load);
        ASSERT_TRUE(model.ok()) << path << " as " << cast << " on "
                                << devices[d] << ": " << model.status();
        on[d] = ClientHashes(**model);
      }
      EXPECT_EQ(on[0], on[1]) << path << " cast to \"" << cast << "\"";
      ++compared;
    }
  }
  EXPECT_GT(compared, 20);
}

TEST_F(DaemonTest, GpuCastUsesTheStagingRingNotAHostCopy) {
  if (kSanitized) GTEST_SKIP() << "sanitizer allocators hold freed memory";
  // 64 MiB of float32 cast to 32 MiB of bfloat16 on the (fake) GPU: the
  // converted bytes pass through the 4 x 64 KiB ring, never a whole host copy.
  const std::string path = (root_ / "big.safetensors").string();
  constexpr uint64_t kCount = 16u << 20;
  WriteBigSafetensors(path, kCount);
  auto client = Connect();
  // Warm up: the first GPU load creates the ring and the gRPC machinery.
  ASSERT_TRUE(client->Load({model_path_, "cuda:0"}).ok());
  bench::PeakAnonSampler sampler;
  ClientLoadOptions load{path, "cuda:0"};
  load.cast_dtype = "bfloat16";
  auto model = client->Load(load);
  const uint64_t growth = sampler.PeakGrowth();
  ASSERT_TRUE(model.ok()) << model.status();
  const v1::Tensor& tensor = (*model)->description().tensors(0);
  EXPECT_EQ(tensor.dtype(), "bfloat16");
  auto bytes = (*model)->ReadTensorBytes(tensor);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  ASSERT_EQ(bytes->size(), kCount * 2);
  // Every value i * 0.25 below 2^8 is exact in bfloat16: spot-check a few.
  for (uint64_t i : {0ull, 1ull, 7ull, 1000ull}) {
    float value = static_cast<float>(i) * 0.25f;
    uint32_t f32;
    std::memcpy(&f32, &value, 4);
    uint16_t want = static_cast<uint16_t>(f32 >> 16), got;
    std::memcpy(&got, bytes->data() + i * 2, 2);
    EXPECT_EQ(got, want) << "element " << i;
  }
  // Reading the tensor back above is the client's copy; the load itself must
  // stay far below the 32 MiB a whole converted copy would take.
  EXPECT_LT(growth, 12u << 20)
      << "anonymous memory grew by " << growth << " bytes during the load";
}

TEST_F(DaemonTest, MetricsEndpointServesPrometheusText) {
  ASSERT_TRUE(Connect()->Load({model_path_, "cpu"}).ok());
  httplib::Client http("127.0.0.1", daemon_->metrics_port());
  auto metrics = http.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_EQ(metrics->status, 200);
  EXPECT_TRUE(absl::StrContains(metrics->body, "weightd_cache_loads_total 1"))
      << metrics->body;
  EXPECT_TRUE(
      absl::StrContains(metrics->body, "weightd_load_requests_total 1"));
  auto health = http.Get("/healthz");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(http.Get("/readyz")->status, 200);
}

TEST_F(DaemonTest, ServerInfoReportsFakeGpuAndIoBackend) {
  auto info = Connect()->ServerInfo();
  ASSERT_TRUE(info.ok());
  ASSERT_GE(info->gpus_size(), 1);
  EXPECT_TRUE(info->gpus(info->gpus_size() - 1).fake());
  EXPECT_TRUE(info->io_backend() == "io_uring" || info->io_backend() == "pread")
      << info->io_backend();
  // What the daemon's segments and anonymous memory get, and why.
  EXPECT_TRUE(absl::StartsWith(info->huge_pages(), "shared memory: "))
      << info->huge_pages();
  EXPECT_TRUE(absl::StrContains(info->huge_pages(), "/dev/shm mounted huge="))
      << info->huge_pages();
}

}  // namespace
}  // namespace weightd
