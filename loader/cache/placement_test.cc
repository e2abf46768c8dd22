#include "loader/cache/placement.h"

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "loader/cache/device_set.h"
#include "loader/cache/load_plan.h"
#include "loader/cache/shard.h"
#include "loader/cache/shared_region_reads.h"
#include "loader/device/arena_handle.h"
#include "loader/device/device.h"
#include "loader/format/reader.h"
#include "loader/format/tensor_bytes.h"
#include "loader/io/mapped_file.h"

namespace weightd {
namespace {

namespace fs = std::filesystem;

std::string FixturePath(const std::string& name) {
  const std::string path = "tests/fixtures/data/" + name;
  EXPECT_TRUE(fs::exists(path)) << path << " is missing from the runfiles";
  return fs::absolute(path).string();
}

// Each tensor's sha256 as the offline reader computes it (row-major,
// little-endian, saved dtype).
std::map<std::string, std::string> OfflineHashes(const LoadSource& source) {
  std::map<std::string, std::string> hashes;
  for (const TensorInfo& tensor : source.checkpoint.tensors) {
    const StorageInfo& storage =
        source.checkpoint.storages[tensor.storage_index];
    const uint8_t* data =
        storage.inflated
            ? reinterpret_cast<const uint8_t*>(storage.inflated->data())
            : source.file->data() + storage.file_offset;
    hashes[tensor.name] =
        TensorSha256Hex(tensor, data, storage.num_bytes, storage.byte_order);
  }
  return hashes;
}

// Each tensor's sha256 over ReadTensorRange, read in odd-sized pieces of
// whole elements.
std::map<std::string, std::string> PlacedHashes(const LoadedModel& model) {
  std::map<std::string, std::string> hashes;
  for (size_t i = 0; i < model.tensors.size(); ++i) {
    const PlacedTensor& tensor = model.tensors[i];
    const uint64_t element = DTypeSize(tensor.info.dtype);
    const uint64_t piece = 7 * element;
    std::string bytes(tensor.byte_size, '\0');
    for (uint64_t offset = 0; offset < tensor.byte_size; offset += piece) {
      const uint64_t length = std::min(piece, tensor.byte_size - offset);
      absl::Status status = model.ReadTensorRange(
          i, offset, length, reinterpret_cast<uint8_t*>(&bytes[offset]));
      EXPECT_TRUE(status.ok()) << tensor.info.name << ": " << status;
    }
    TensorInfo contiguous = tensor.info;
    contiguous.storage_offset = 0;
    int64_t stride = 1;
    for (size_t d = contiguous.shape.size(); d-- > 0;) {
      contiguous.stride[d] = stride;
      stride *= std::max<int64_t>(contiguous.shape[d], 1);
    }
    hashes[tensor.info.name] = TensorSha256Hex(
        contiguous, reinterpret_cast<const uint8_t*>(bytes.data()),
        bytes.size(), ByteOrder::kLittle);
  }
  return hashes;
}

class PlacementTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DeviceSet::Options options;
    options.fake_gpus = 1;
    options.staging_chunk_bytes = 4099;  // storages span many chunks
    options.staging_buffers = 3;
    auto devices = DeviceSet::Create(options);
    ASSERT_TRUE(devices.ok()) << devices.status();
    devices_ = *std::move(devices);
    auto pool = ThreadPool::Create("test workers", 2, 0);
    ASSERT_TRUE(pool.ok());
    workers_ = *std::move(pool);
  }

  LoadSource Source(const std::string& name) {
    LoadSource source;
    source.path = FixturePath(name);
    auto file = MappedFile::Open(source.path);
    EXPECT_TRUE(file.ok()) << file.status();
    if (!file.ok()) return source;
    source.file = *std::move(file);
    ReadOptions options;
    options.file_name = source.path;
    auto checkpoint = ReadCheckpoint(
        absl::string_view(reinterpret_cast<const char*>(source.file->data()),
                          source.file->size()),
        options);
    EXPECT_TRUE(checkpoint.ok()) << checkpoint.status();
    if (checkpoint.ok()) source.checkpoint = *std::move(checkpoint);
    return source;
  }

  absl::StatusOr<std::shared_ptr<LoadedModel>> PlaceOn(
      const LoadSource& source, const std::string& target,
      const std::string& cast = "", const CancellationToken* cancel = nullptr,
      LoadPlan* plan_out = nullptr) {
    LoadSpec spec;
    spec.path = source.path;
    spec.target = target;
    spec.cast_dtype = cast;
    auto planned = Plan(spec, source);
    if (!planned.ok()) return planned.status();
    if (plan_out != nullptr) *plan_out = planned->plan;
    CancellationToken never;
    return Place(planned->plan, source, planned->placement.Key(), *devices_,
                 *workers_, cancel != nullptr ? *cancel : never, nullptr);
  }

  // What a Load of `spec` (its path: `source`'s file or a copy of it)
  // places and plans on these devices.
  struct Planned {
    Placement placement;
    LoadPlan plan;
  };
  absl::StatusOr<Planned> Plan(const LoadSpec& spec, const LoadSource& source) {
    auto gpus = devices_->Gpus();
    auto placement = CanonicalPlacement(spec, gpus);
    if (!placement.ok()) return placement.status();
    auto plan = PlanLoad(*placement, source.checkpoint, gpus, spec.path);
    if (!plan.ok()) return plan.status();
    return Planned{*std::move(placement), *std::move(plan)};
  }

  // Rank `rank` of `world` loading `path` onto `target`, sliced by `rules`.
  static LoadSpec RankSpec(const std::string& path, const std::string& target,
                           int rank, int world,
                           std::vector<std::pair<std::string, int>> rules) {
    LoadSpec spec;
    spec.path = path;
    spec.target = target;
    spec.shard.rank = rank;
    spec.shard.world_size = world;
    spec.shard.rules = std::move(rules);
    return spec;
  }

  uint64_t FakeGpuFreeBytes() { return devices_->Gpus()[0].free_bytes; }

  std::unique_ptr<DeviceSet> devices_;
  std::unique_ptr<ThreadPool> workers_;
};

TEST_F(PlacementTest, HostStoragesAreViewsOfTheMappingOrOneSegment) {
  LoadSource little = Source("training.pt");
  auto model = PlaceOn(little, "cpu");
  ASSERT_TRUE(model.ok()) << model.status();
  ASSERT_EQ((*model)->buffers.size(), 1u);
  EXPECT_EQ((*model)->buffers[0].kind, PlacedBuffer::Kind::kFile);
  EXPECT_TRUE((*model)->resident.empty());
  EXPECT_EQ((*model)->bytes_read, 0u);  // nothing copied
  EXPECT_EQ(PlacedHashes(**model), OfflineHashes(little));

  LoadSource big = Source("big_endian_dtypes.pt");
  auto swapped = PlaceOn(big, "cpu");
  ASSERT_TRUE(swapped.ok()) << swapped.status();
  bool has_segment = false;
  for (const PlacedBuffer& buffer : (*swapped)->buffers)
    has_segment |= buffer.kind == PlacedBuffer::Kind::kSharedMemory;
  EXPECT_TRUE(has_segment);
  EXPECT_GT((*swapped)->resident.at("host"), 0u);
  EXPECT_EQ(PlacedHashes(**swapped), OfflineHashes(big));
}

TEST_F(PlacementTest, GpuArenaHoldsThePlannedBytes) {
  for (const char* name : {"training.pt", "big_endian.pt", "model.safetensors",
                           "views.pt", "legacy.pt"}) {
    LoadSource source = Source(name);
    LoadPlan plan;
    auto model = PlaceOn(source, "cuda:0", "", nullptr, &plan);
    ASSERT_TRUE(model.ok()) << name << ": " << model.status();
    EXPECT_EQ((*model)->resident, plan.expected) << name;
    ASSERT_EQ((*model)->buffers.size(), 1u);
    const PlacedBuffer& arena = (*model)->buffers[0];
    EXPECT_EQ(arena.kind, PlacedBuffer::Kind::kGpu);
    EXPECT_EQ(PlacedHashes(**model), OfflineHashes(source)) << name;
    // The arena's own bytes, opened as a client opens them (the fake GPU
    // shares them through a shared-memory handle), are each storage as
    // placed.
    EXPECT_EQ(arena.handle_kind, ArenaHandleKind::kSharedMemory);
    auto bytes = IpcHandle::FromString(arena.ipc_handle);
    ASSERT_TRUE(bytes.ok());
    auto opened = OpenArenaHandle({arena.handle_kind, *bytes}, arena.size,
                                  arena.gpu_uuid);
    ASSERT_TRUE(opened.ok()) << opened.status();
    for (const PlacedTensor& tensor : (*model)->tensors) {
      const StorageInfo& storage =
          source.checkpoint.storages[tensor.info.storage_index];
      if (storage.byte_order == ByteOrder::kBig || storage.inflated) continue;
      ASSERT_LE(tensor.storage_byte_offset + storage.num_bytes,
                (*opened)->size());
      EXPECT_EQ(0,
                std::memcmp((*opened)->host_data() + tensor.storage_byte_offset,
                            source.file->data() + storage.file_offset,
                            storage.num_bytes))
          << name << " " << tensor.info.name;
    }
  }
}

TEST_F(PlacementTest, CastsOnHostAndGpuAgree) {
  LoadSource source = Source("dtypes.pt");
  auto host = PlaceOn(source, "cpu", "bfloat16");
  auto gpu = PlaceOn(source, "cuda:0", "bfloat16");
  ASSERT_TRUE(host.ok()) << host.status();
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  EXPECT_EQ(PlacedHashes(**host), PlacedHashes(**gpu));
  bool cast_any = false;
  for (const PlacedTensor& tensor : (*host)->tensors)
    cast_any |= tensor.info.dtype == DType::kBFloat16;
  EXPECT_TRUE(cast_any);
}

TEST_F(PlacementTest, CancelledLoadKeepsNothing) {
  LoadSource source = Source("training.pt");
  const uint64_t free_before = FakeGpuFreeBytes();
  CancellationToken cancelled;
  cancelled.Cancel();
  auto model = PlaceOn(source, "cuda:0", "", &cancelled);
  EXPECT_EQ(model.status().code(), absl::StatusCode::kCancelled)
      << model.status();
  EXPECT_EQ(FakeGpuFreeBytes(), free_before);
  auto host = PlaceOn(Source("big_endian.pt"), "cpu", "", &cancelled);
  EXPECT_EQ(host.status().code(), absl::StatusCode::kCancelled);
}

TEST_F(PlacementTest, ReadTensorRangeTakesWholeElementsOnly) {
  LoadSource source = Source("training.pt");
  auto model = PlaceOn(source, "meta");
  ASSERT_TRUE(model.ok()) << model.status();
  const PlacedTensor& tensor = (*model)->tensors[0];
  ASSERT_EQ(tensor.buffer_index, -1);  // meta: bytes come from the file
  const uint64_t element = DTypeSize(tensor.info.dtype);
  ASSERT_GT(element, 1u);
  std::string out(tensor.byte_size, '\0');
  auto* data = reinterpret_cast<uint8_t*>(out.data());
  EXPECT_EQ((*model)->ReadTensorRange(0, 1, element, data).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      (*model)->ReadTensorRange(0, 0, tensor.byte_size + element, data).code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*model)->ReadTensorRange(99999, 0, 0, data).code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_TRUE((*model)->ReadTensorRange(0, 0, tensor.byte_size, data).ok());
  EXPECT_EQ(PlacedHashes(**model), OfflineHashes(source));
}

// Rules that split every tensor of `source` that can be split W ways on its
// first (or, with `last`, its last) dim, by exact name.
std::vector<std::pair<std::string, int>> SplittableRules(
    const LoadSource& source, int world, bool last) {
  std::vector<std::pair<std::string, int>> rules;
  for (const TensorInfo& tensor : source.checkpoint.tensors) {
    if (tensor.shape.empty()) continue;
    const int dim = last ? static_cast<int>(tensor.shape.size()) - 1 : 0;
    if (tensor.shape[dim] > 0 && tensor.shape[dim] % world == 0)
      rules.emplace_back(tensor.name, dim);
  }
  return rules;
}

// What torch's t.narrow(dim, rank * n / W, n / W) hashes to, from the file.
std::map<std::string, std::string> OfflineSliceHashes(
    const LoadSource& source, const CanonicalShard& shard) {
  std::map<std::string, std::string> hashes;
  for (const TensorInfo& tensor : source.checkpoint.tensors) {
    const StorageInfo& storage =
        source.checkpoint.storages[tensor.storage_index];
    uint64_t budget = kShardMatchBudget;
    auto slice = SliceFor(shard, tensor, source.path, &budget);
    EXPECT_TRUE(slice.ok()) << slice.status();
    const TensorInfo& view =
        slice.ok() && slice->has_value() ? (*slice)->view : tensor;
    const uint8_t* data =
        storage.inflated
            ? reinterpret_cast<const uint8_t*>(storage.inflated->data())
            : source.file->data() + storage.file_offset;
    hashes[tensor.name] =
        TensorSha256Hex(view, data, storage.num_bytes, storage.byte_order);
  }
  return hashes;
}

TEST_F(PlacementTest, EachRankGetsItsSliceOnHostAndGpu) {
  for (const char* name : {"training.pt", "model.safetensors", "views.pt",
                           "big_endian.pt", "legacy.pt"}) {
    LoadSource source = Source(name);
    for (int world : {1, 2, 4}) {
      for (bool last : {false, true}) {
        for (const char* target : {"cpu", "cuda:0"}) {
          for (int rank = 0; rank < world; ++rank) {
            auto planned = Plan(RankSpec(source.path, target, rank, world,
                                         SplittableRules(source, world, last)),
                                source);
            ASSERT_TRUE(planned.ok()) << planned.status();
            const Placement* placement = &planned->placement;
            const LoadPlan* plan = &planned->plan;
            CancellationToken never;
            auto model = Place(*plan, source, placement->Key(), *devices_,
                               *workers_, never, nullptr);
            ASSERT_TRUE(model.ok()) << name << ": " << model.status();
            const std::string where =
                absl::StrCat(name, " ", target, " rank ", rank, "/", world,
                             last ? " last dim" : " dim 0");
            EXPECT_EQ((*model)->resident, plan->expected) << where;
            EXPECT_EQ(PlacedHashes(**model),
                      OfflineSliceHashes(source, placement->shard))
                << where;
            if (std::string(target) == "cuda:0") {
              // Only the slices' bytes (and whole replicated storages).
              uint64_t held = 0;
              for (const PlannedStorage& s : plan->storages)
                held += AlignUp(s.placed_bytes, kGpuStorageAlignment);
              for (const PlannedSlice& s : plan->slices)
                held += AlignUp(s.placed_bytes, kGpuStorageAlignment);
              EXPECT_EQ((*model)->resident.begin()->second,
                        std::max<uint64_t>(held, 1))
                  << where;
            }
          }
        }
      }
    }
  }
}

TEST_F(PlacementTest, HostSlicesOfUnchangedBytesAreViewsReadingNothing) {
  LoadSource source = Source("model.safetensors");
  LoadSpec spec =
      RankSpec(source.path, "cpu", 1, 2, SplittableRules(source, 2, true));
  ASSERT_FALSE(spec.shard.rules.empty());
  auto planned = Plan(spec, source);
  ASSERT_TRUE(planned.ok()) << planned.status();
  CancellationToken never;
  auto model = Place(planned->plan, source, planned->placement.Key(), *devices_,
                     *workers_, never, nullptr);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_TRUE((*model)->resident.empty());
  EXPECT_EQ((*model)->bytes_read, 0u);
  for (const PlacedTensor& tensor : (*model)->tensors) {
    EXPECT_FALSE(tensor.source_view.has_value()) << tensor.info.name;
    EXPECT_EQ((*model)->buffers[tensor.buffer_index].kind,
              PlacedBuffer::Kind::kFile);
  }
  // With a cast, slices get their own bytes: only the slices'.
  spec.cast_dtype = "bfloat16";
  planned = Plan(spec, source);
  ASSERT_TRUE(planned.ok()) << planned.status();
  auto cast = Place(planned->plan, source, planned->placement.Key(), *devices_,
                    *workers_, never, nullptr);
  ASSERT_TRUE(cast.ok()) << cast.status();
  EXPECT_EQ((*cast)->resident, planned->plan.expected);
}

TEST_F(PlacementTest, RanksShareReplicatedReadsOnce) {
  LoadSource source = Source("model.safetensors");
  constexpr int kWorld = 4;
  SharedRegionReads shared(SharedRegionReads::Options{});
  uint64_t bytes_read = 0;
  uint64_t checkpoint_bytes = 0;
  for (const StorageInfo& storage : source.checkpoint.storages)
    checkpoint_bytes += storage.num_bytes;
  // Half the tensors split, the rest replicated.
  std::vector<std::pair<std::string, int>> rules =
      SplittableRules(source, kWorld, false);
  ASSERT_GE(rules.size(), 1u);
  rules.resize((rules.size() + 1) / 2);
  for (int rank = 0; rank < kWorld; ++rank) {
    auto planned =
        Plan(RankSpec(source.path, "cuda:0", rank, kWorld, rules), source);
    ASSERT_TRUE(planned.ok()) << planned.status();
    CancellationToken never;
    auto model = Place(planned->plan, source, planned->placement.Key(),
                       *devices_, *workers_, never, nullptr, &shared);
    ASSERT_TRUE(model.ok()) << model.status();
    EXPECT_EQ(PlacedHashes(**model),
              OfflineSliceHashes(source, planned->placement.shard));
    bytes_read += (*model)->bytes_read;
  }
  EXPECT_EQ(bytes_read, checkpoint_bytes);
  EXPECT_EQ(shared.stats().held_bytes, 0u);
  EXPECT_GT(shared.stats().bytes_shared, 0u);
}

// W ranks at once, one of them cancelled part way (its client went away):
// the others finish with the right bytes, and once every load has ended no
// block waits for the cancelled rank.
TEST_F(PlacementTest, ACancelledRankLeavesTheOthersAndNothingHeld) {
  LoadSource source = Source("model.safetensors");
  constexpr int kWorld = 4;
  constexpr int kCancelled = 2;
  std::vector<std::pair<std::string, int>> rules =
      SplittableRules(source, kWorld, false);
  ASSERT_GE(rules.size(), 1u);
  rules.resize((rules.size() + 1) / 2);
  for (bool at_once : {false, true}) {
    SharedRegionReads shared(SharedRegionReads::Options{});
    const uint64_t free_before = FakeGpuFreeBytes();
    std::vector<absl::StatusOr<std::shared_ptr<LoadedModel>>> models(
        kWorld, absl::UnknownError("not run"));
    std::vector<std::map<std::string, std::string>> want(kWorld);
    auto load = [&](int rank) {
      auto planned =
          Plan(RankSpec(source.path, "cuda:0", rank, kWorld, rules), source);
      ASSERT_TRUE(planned.ok()) << planned.status();
      want[rank] = OfflineSliceHashes(source, planned->placement.shard);
      // The cancelled rank sees its cancellation after a few chunks.
      std::atomic<int> checks{0};
      CancellationToken cancel(
          [&checks, rank] { return rank == kCancelled && ++checks > 3; });
      models[rank] = Place(planned->plan, source, planned->placement.Key(),
                           *devices_, *workers_, cancel, nullptr, &shared);
    };
    if (at_once) {
      std::vector<std::thread> ranks;
      for (int rank = 0; rank < kWorld; ++rank) ranks.emplace_back(load, rank);
      for (std::thread& t : ranks) t.join();
    } else {
      for (int rank = 0; rank < kWorld; ++rank) load(rank);
    }
    for (int rank = 0; rank < kWorld; ++rank) {
      if (rank == kCancelled) {
        EXPECT_EQ(models[rank].status().code(), absl::StatusCode::kCancelled)
            << models[rank].status();
        continue;
      }
      ASSERT_TRUE(models[rank].ok()) << models[rank].status();
      EXPECT_EQ(PlacedHashes(**models[rank]), want[rank]) << rank;
    }
    const SharedRegionReads::Stats stats = shared.stats();
    EXPECT_EQ(stats.held_bytes, 0u) << at_once;
    EXPECT_EQ(stats.regions, 0u) << at_once;
    models.clear();
    EXPECT_EQ(FakeGpuFreeBytes(), free_before);
  }
}

// The file is truncated under its mapping between the ranks' plans and their
// reads: every rank fails with the file's own error, none hangs, nothing
// stays held.
TEST_F(PlacementTest, ATruncatedFileFailsEveryRankAndHoldsNothing) {
  const std::string copy =
      absl::StrCat(::testing::TempDir(), "/truncated.safetensors");
  fs::copy_file(FixturePath("model.safetensors"), copy,
                fs::copy_options::overwrite_existing);
  LoadSource source;
  source.path = copy;
  auto file = MappedFile::Open(copy);
  ASSERT_TRUE(file.ok()) << file.status();
  source.file = *std::move(file);
  ReadOptions read_options;
  read_options.file_name = copy;
  auto checkpoint = ReadCheckpoint(
      absl::string_view(reinterpret_cast<const char*>(source.file->data()),
                        source.file->size()),
      read_options);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  source.checkpoint = *std::move(checkpoint);
  uint64_t first_data = source.file->size();
  for (const StorageInfo& storage : source.checkpoint.storages)
    first_data = std::min<uint64_t>(first_data, storage.file_offset);
  constexpr int kWorld = 2;
  SharedRegionReads shared(SharedRegionReads::Options{});
  std::vector<LoadPlan> plans;
  std::vector<std::string> keys;
  for (int rank = 0; rank < kWorld; ++rank) {
    // No rules: everything replicated.
    auto planned = Plan(RankSpec(copy, "cuda:0", rank, kWorld, {}), source);
    ASSERT_TRUE(planned.ok()) << planned.status();
    plans.push_back(std::move(planned->plan));
    keys.push_back(planned->placement.Key());
  }
  fs::resize_file(copy, first_data);
  const uint64_t free_before = FakeGpuFreeBytes();
  std::vector<absl::Status> results(kWorld);
  std::vector<std::thread> ranks;
  for (int rank = 0; rank < kWorld; ++rank) {
    ranks.emplace_back([&, rank] {
      CancellationToken never;
      results[rank] = Place(plans[rank], source, keys[rank], *devices_,
                            *workers_, never, nullptr, &shared)
                          .status();
    });
  }
  for (std::thread& t : ranks) t.join();
  for (int rank = 0; rank < kWorld; ++rank) {
    EXPECT_EQ(results[rank].code(), absl::StatusCode::kDataLoss)
        << results[rank];
    EXPECT_NE(results[rank].message().find("truncated.safetensors"),
              std::string::npos)
        << results[rank];
  }
  EXPECT_EQ(shared.stats().held_bytes, 0u);
  EXPECT_EQ(shared.stats().regions, 0u);
  EXPECT_EQ(FakeGpuFreeBytes(), free_before);
}

}  // namespace
}  // namespace weightd
