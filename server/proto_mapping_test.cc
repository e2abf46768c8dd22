#include "server/proto_mapping.h"

#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

namespace weightd {
namespace {

uint64_t LoadLe(const std::string& bytes, size_t at, int width) {
  uint64_t value = 0;
  for (int i = width - 1; i >= 0; --i)
    value = (value << 8) | static_cast<uint8_t>(bytes.at(at + i));
  return value;
}

// The proto's documented layout, decoded independently of the writer.
std::vector<v1::Tensor> Unpack(const v1::ModelDescription& d) {
  const std::string& p = d.packed_tensors();
  EXPECT_GE(p.size(), 16u);
  EXPECT_EQ(LoadLe(p, 0, 4), 1u);
  const uint64_t record = LoadLe(p, 4, 4);
  const uint64_t count = LoadLe(p, 8, 4);
  const uint64_t dims = LoadLe(p, 12, 4);
  EXPECT_EQ(record, 48u);
  EXPECT_EQ(p.size(), 16 + count * record + dims * 16);
  std::vector<std::string> names = absl::StrSplit(d.packed_names(), '\0');
  if (count == 0) names.clear();
  EXPECT_EQ(names.size(), count);
  std::vector<v1::Tensor> out(count);
  size_t dim_at = 16 + count * record;
  for (size_t i = 0; i < count; ++i) {
    const size_t at = 16 + i * record;
    v1::Tensor& t = out[i];
    t.set_name(names.at(i));
    t.set_dtype(d.packed_strings(LoadLe(p, at, 4)));
    t.set_saved_location(d.packed_strings(LoadLe(p, at + 4, 4)));
    t.set_placed_location(d.packed_strings(LoadLe(p, at + 8, 4)));
    t.set_buffer_index(static_cast<int32_t>(LoadLe(p, at + 12, 4)));
    const uint64_t ndim = LoadLe(p, at + 16, 4);
    t.set_requires_grad(LoadLe(p, at + 20, 4) & 1);
    t.set_storage_offset(static_cast<int64_t>(LoadLe(p, at + 24, 8)));
    t.set_storage_byte_offset(LoadLe(p, at + 32, 8));
    t.set_byte_size(LoadLe(p, at + 40, 8));
    for (uint64_t k = 0; k < ndim; ++k) {
      t.add_shape(static_cast<int64_t>(LoadLe(p, dim_at + 8 * k, 8)));
      t.add_stride(static_cast<int64_t>(LoadLe(p, dim_at + 8 * (dims + k), 8)));
    }
    dim_at += 8 * ndim;
  }
  return out;
}

PlacedTensor Make(std::string name, DType dtype, std::vector<int64_t> shape,
                  std::vector<int64_t> stride, int buffer, uint64_t offset) {
  PlacedTensor t;
  t.info.name = std::move(name);
  t.info.dtype = dtype;
  t.info.shape = std::move(shape);
  t.info.stride = std::move(stride);
  t.saved_location = "cuda:1";
  t.placed_location = buffer < 0 ? "meta" : "cpu";
  t.buffer_index = buffer;
  t.storage_byte_offset = offset;
  t.byte_size = 2 * 3 * 4;
  return t;
}

LoadedModel Model() {
  LoadedModel model;
  model.path = "/m/model.pt";
  model.tensors.push_back(
      Make("layers.0.weight", DType::kFloat32, {2, 3}, {3, 1}, 0, 64));
  model.tensors.push_back(
      Make("layers.0.weight.T", DType::kFloat32, {3, 2}, {1, 3}, 0, 64));
  model.tensors.back().info.storage_offset = 1;
  model.tensors.push_back(Make("scalar", DType::kBFloat16, {}, {}, 1, 0));
  model.tensors.back().info.requires_grad = true;
  model.tensors.push_back(
      Make("meta.é", DType::kInt64, {1LL << 40, 0}, {0, 1}, -1, 0));
  model.tensors.back().saved_location = "cpu";
  model.tensors.push_back(Make("", DType::kUInt8, {5}, {1}, 1, 1ULL << 40));
  PlacedBuffer file;
  file.path = "/m/model.pt";
  model.buffers.push_back(file);
  PlacedBuffer segment;
  segment.kind = PlacedBuffer::Kind::kSharedMemory;
  segment.shm_name = "/weightd-x";
  segment.size = 4096;
  model.buffers.push_back(segment);
  return model;
}

// The serialized compact description of `model`.
std::string Compact(const LoadedModel& model) {
  v1::ModelDescription d;
  FillModelDescription("m1", model, nullptr, TensorListForm::kCompact, &d);
  return d.SerializeAsString();
}

TEST(ProtoMappingTest, PackedTableEqualsTheRepeatedTensors) {
  LoadedModel model = Model();
  v1::ModelDescription repeated, compact;
  FillModelDescription("m1", model, nullptr, TensorListForm::kRepeated,
                       &repeated);
  FillModelDescription("m1", model, nullptr, TensorListForm::kCompact,
                       &compact);
  EXPECT_TRUE(repeated.packed_tensors().empty());
  ASSERT_EQ(repeated.tensors_size(), 5);
  EXPECT_EQ(compact.tensors_size(), 0);
  std::vector<v1::Tensor> unpacked = Unpack(compact);
  ASSERT_EQ(unpacked.size(), 5u);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(unpacked[i].SerializeAsString(),
              repeated.tensors(i).SerializeAsString())
        << unpacked[i].DebugString() << " vs "
        << repeated.tensors(i).DebugString();
  }
  // Distinct strings once each: float32, cuda:1, cpu, bfloat16, int64, meta,
  // uint8.
  EXPECT_EQ(compact.packed_strings_size(), 7);
  // Everything else is the same message.
  compact.clear_packed_tensors();
  compact.clear_packed_names();
  compact.clear_packed_strings();
  repeated.clear_tensors();
  EXPECT_EQ(compact.SerializeAsString(), repeated.SerializeAsString());
}

TEST(ProtoMappingTest, PackedTableOfNoTensors) {
  LoadedModel model;
  v1::ModelDescription compact;
  FillModelDescription("m1", model, nullptr, TensorListForm::kCompact,
                       &compact);
  EXPECT_EQ(compact.packed_tensors().size(), 16u);
  EXPECT_TRUE(Unpack(compact).empty());
  EXPECT_EQ(Compact(model), compact.SerializeAsString());
}

TEST(ProtoMappingTest, NamesWithNulAndOddStridesStayRepeated) {
  LoadedModel model = Model();
  model.tensors[2].info.name = std::string("a\0b", 3);
  v1::ModelDescription d;
  FillModelDescription("m1", model, nullptr, TensorListForm::kCompact, &d);
  EXPECT_TRUE(d.packed_tensors().empty());
  EXPECT_TRUE(d.packed_names().empty());
  EXPECT_EQ(d.packed_strings_size(), 0);
  ASSERT_EQ(d.tensors_size(), 5);
  EXPECT_EQ(d.tensors(2).name(), std::string("a\0b", 3));

  model = Model();
  model.tensors[0].info.stride = {1};
  v1::ModelDescription odd;
  FillModelDescription("m1", model, nullptr, TensorListForm::kCompact, &odd);
  EXPECT_TRUE(odd.packed_tensors().empty());
  EXPECT_EQ(odd.tensors_size(), 5);
}

TEST(ProtoMappingTest, KeptTableDescribesAsAFreshlyBuiltOne) {
  LoadedModel model = Model();
  const std::string first = Compact(model);
  EXPECT_EQ(Compact(model), first);  // answered from the kept table
  // A model never described before encodes its table for this call.
  const LoadedModel fresh = Model();
  EXPECT_EQ(Compact(fresh), first);
  v1::ModelDescription direct;
  FillPackedTable(*PackTensorTable(fresh.tensors), &direct);
  v1::ModelDescription d;
  ASSERT_TRUE(d.ParseFromString(first));
  EXPECT_EQ(d.packed_tensors(), direct.packed_tensors());
  EXPECT_EQ(d.packed_names(), direct.packed_names());
  ASSERT_EQ(d.packed_strings_size(), direct.packed_strings_size());
  for (int i = 0; i < d.packed_strings_size(); ++i)
    EXPECT_EQ(d.packed_strings(i), direct.packed_strings(i));
  // The per-call fields stay per call.
  v1::ModelDescription other;
  CacheEntryInfo info;
  info.lease_count = 3;
  FillModelDescription("m2", model, &info, TensorListForm::kCompact, &other);
  EXPECT_EQ(other.model_id(), "m2");
  EXPECT_EQ(other.lease_count(), 3);
  EXPECT_EQ(other.packed_tensors(), d.packed_tensors());
}

TEST(ProtoMappingTest, ConcurrentDescribersGetTheSameBytes) {
  LoadedModel model = Model();
  for (int i = 0; i < 3000; ++i) {
    model.tensors.push_back(Make("blocks." + std::to_string(i) + ".w",
                                 DType::kFloat16, {i % 7 + 1, 4}, {4, 1}, i % 2,
                                 8 * i));
  }
  constexpr int kThreads = 8;
  std::vector<std::string> seen(kThreads);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i)
    threads.emplace_back([&, i] { seen[i] = Compact(model); });
  for (std::thread& thread : threads) thread.join();
  LoadedModel fresh = Model();
  fresh.tensors = model.tensors;
  const std::string expected = Compact(fresh);
  for (const std::string& bytes : seen) EXPECT_EQ(bytes, expected);
  v1::ModelDescription d;
  ASSERT_TRUE(d.ParseFromString(expected));
  EXPECT_EQ(Unpack(d).size(), model.tensors.size());
}

TEST(ProtoMappingTest, UnicodeNamesRoundTrip) {
  LoadedModel model;
  const std::vector<std::string> names = {
      "блок.0.вес", "层.权重", "emoji.\xF0\x9F\x98\x80", "", "e\xCC\x81"};
  for (const std::string& name : names)
    model.tensors.push_back(Make(name, DType::kFloat32, {1}, {1}, 0, 0));
  for (int call = 0; call < 2; ++call) {
    v1::ModelDescription d;
    FillModelDescription("m1", model, nullptr, TensorListForm::kCompact, &d);
    std::vector<v1::Tensor> unpacked = Unpack(d);
    ASSERT_EQ(unpacked.size(), names.size());
    for (size_t i = 0; i < names.size(); ++i)
      EXPECT_EQ(unpacked[i].name(), names[i]);
  }
}

TEST(ProtoMappingTest, UnpackableModelStaysRepeatedOnEveryCall) {
  LoadedModel model = Model();
  model.tensors[1].info.name = std::string("x\0y", 3);
  for (int call = 0; call < 2; ++call) {
    v1::ModelDescription d;
    FillModelDescription("m1", model, nullptr, TensorListForm::kCompact, &d);
    EXPECT_TRUE(d.packed_tensors().empty());
    ASSERT_EQ(d.tensors_size(), 5);
    EXPECT_EQ(d.tensors(1).name(), std::string("x\0y", 3));
  }
}

}  // namespace
}  // namespace weightd
