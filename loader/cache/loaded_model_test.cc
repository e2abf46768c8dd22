#include "loader/cache/loaded_model.h"

#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace weightd {
namespace {

PlacedTensor Tensor(std::string name, std::vector<int64_t> shape,
                    std::vector<int64_t> stride) {
  PlacedTensor t;
  t.info.name = std::move(name);
  t.info.dtype = DType::kFloat32;
  t.info.shape = std::move(shape);
  t.info.stride = std::move(stride);
  t.saved_location = "cpu";
  t.placed_location = "cpu";
  t.buffer_index = 0;
  t.byte_size = 4;
  for (int64_t size : t.info.shape) t.byte_size *= size;
  return t;
}

std::vector<PlacedTensor> ManyTensors(int count) {
  std::vector<PlacedTensor> tensors;
  for (int i = 0; i < count; ++i) {
    tensors.push_back(
        Tensor("layers." + std::to_string(i) + ".weight", {i + 1, 2}, {2, 1}));
    tensors.back().storage_byte_offset = 64 * i;
    if (i % 3 == 0) tensors.back().placed_location = "cuda:0";
  }
  return tensors;
}

void ExpectSameTable(const PackedTensorTable& a, const PackedTensorTable& b) {
  EXPECT_EQ(a.records, b.records);
  EXPECT_EQ(a.names, b.names);
  EXPECT_EQ(a.strings, b.strings);
}

TEST(LoadedModelTest, PackedTableIsBuiltOnceAndEqualsAFreshOne) {
  LoadedModel model;
  model.tensors = ManyTensors(100);
  const PackedTensorTable* first = model.PackedTable();
  ASSERT_NE(first, nullptr);
  EXPECT_EQ(model.PackedTable(), first);  // the same bytes, not a rebuild
  std::optional<PackedTensorTable> fresh = PackTensorTable(model.tensors);
  ASSERT_TRUE(fresh.has_value());
  ExpectSameTable(*first, *fresh);
  // Header {version 1, record 48, count, dims}, records, sizes, strides.
  EXPECT_EQ(first->records.size(), 16u + 100 * 48 + 2 * 100 * 2 * 8);
  EXPECT_EQ(first->records.substr(0, 12),
            std::string("\1\0\0\0\x30\0\0\0\x64\0\0\0", 12));
  EXPECT_EQ(first->strings,
            (std::vector<std::string>{"float32", "cpu", "cuda:0"}));
}

TEST(LoadedModelTest, ConcurrentFirstCallersShareOneTable) {
  LoadedModel model;
  model.tensors = ManyTensors(2000);
  constexpr int kThreads = 8;
  std::vector<const PackedTensorTable*> seen(kThreads, nullptr);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i)
    threads.emplace_back([&, i] { seen[i] = model.PackedTable(); });
  for (std::thread& thread : threads) thread.join();
  ASSERT_NE(seen[0], nullptr);
  for (const PackedTensorTable* table : seen) EXPECT_EQ(table, seen[0]);
  ExpectSameTable(*seen[0], *PackTensorTable(model.tensors));
}

TEST(LoadedModelTest, NoTensorsPackToAHeader) {
  LoadedModel model;
  const PackedTensorTable* table = model.PackedTable();
  ASSERT_NE(table, nullptr);
  EXPECT_EQ(table->records,
            std::string("\1\0\0\0\x30\0\0\0\0\0\0\0\0\0\0\0", 16));
  EXPECT_TRUE(table->names.empty());
  EXPECT_TRUE(table->strings.empty());
}

TEST(LoadedModelTest, UnicodeNamesJoinedByNul) {
  LoadedModel model;
  model.tensors.push_back(Tensor("блок.0.вес", {2}, {1}));
  model.tensors.push_back(Tensor("层.权重", {}, {}));
  model.tensors.push_back(Tensor("emoji.\xF0\x9F\x98\x80", {1}, {1}));
  model.tensors.push_back(Tensor("", {1}, {1}));
  const PackedTensorTable* table = model.PackedTable();
  ASSERT_NE(table, nullptr);
  std::string expected = "блок.0.вес";
  for (const char* name : {"层.权重", "emoji.\xF0\x9F\x98\x80", ""}) {
    expected.push_back('\0');
    expected += name;
  }
  EXPECT_EQ(table->names, expected);
}

TEST(LoadedModelTest, UnpackableTablesStayNull) {
  LoadedModel nul;
  nul.tensors.push_back(Tensor(std::string("a\0b", 3), {1}, {1}));
  EXPECT_EQ(nul.PackedTable(), nullptr);
  EXPECT_EQ(nul.PackedTable(), nullptr);
  LoadedModel odd;
  odd.tensors.push_back(Tensor("w", {2, 2}, {1}));
  EXPECT_EQ(odd.PackedTable(), nullptr);
}

TEST(LoadedModelTest, AnAssignedModelBuildsItsOwnTable) {
  LoadedModel model;
  model.tensors = ManyTensors(3);
  ASSERT_NE(model.PackedTable(), nullptr);
  LoadedModel other;
  other.tensors = ManyTensors(5);
  model = std::move(other);
  const PackedTensorTable* table = model.PackedTable();
  ASSERT_NE(table, nullptr);
  ExpectSameTable(*table, *PackTensorTable(ManyTensors(5)));

  LoadedModel moved(std::move(model));
  moved.tensors.pop_back();
  ExpectSameTable(*moved.PackedTable(), *PackTensorTable(ManyTensors(4)));
}

}  // namespace
}  // namespace weightd
