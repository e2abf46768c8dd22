#include "loader/cache/placement.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "loader/cache/device_set.h"
#include "loader/cache/load_plan.h"
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
    auto gpus = devices_->Gpus();
    auto placement = CanonicalPlacement(spec, gpus);
    if (!placement.ok()) return placement.status();
    auto plan = PlanLoad(*placement, source.checkpoint, gpus, source.path);
    if (!plan.ok()) return plan.status();
    if (plan_out != nullptr) *plan_out = *plan;
    CancellationToken never;
    return Place(*plan, source, placement->Key(), *devices_, *workers_,
                 cancel != nullptr ? *cancel : never, nullptr);
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

}  // namespace
}  // namespace weightd
