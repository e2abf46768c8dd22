#include "loader/format/storage_ref.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "loader/format/pickle_value.h"

namespace weightd {
namespace {

// Persistent ids as torch writes them, built by hand.
class StorageRefTest : public ::testing::Test {
 protected:
  PyValue* New(PyKind kind) {
    PyValue* v = heap_.New();
    v->kind = kind;
    return v;
  }
  PyValue* Str(std::string s, PyKind kind = PyKind::kStr) {
    PyValue* v = New(kind);
    v->s = std::move(s);
    return v;
  }
  PyValue* Int(int64_t i) {
    PyValue* v = New(PyKind::kInt);
    v->i = i;
    return v;
  }
  PyValue* Tuple(std::vector<PyValue*> items) {
    PyValue* v = New(PyKind::kTuple);
    v->items = std::move(items);
    return v;
  }
  PyValue* Class(std::string name) { return Str(name, PyKind::kGlobal); }
  // ('storage', torch.HalfStorage, '0', 'cuda:0', 6)
  PyValue* ZipId() {
    return Tuple({Str("storage"), Class("torch.HalfStorage"), Str("0"),
                  Str("cuda:0"), Int(6)});
  }
  std::string Error(const PyValue* pid,
                    StorageRefLayout layout = StorageRefLayout::kZip) {
    auto ref = ParseStorageRef(pid, layout);
    EXPECT_FALSE(ref.ok());
    return ref.ok() ? "" : std::string(ref.status().message());
  }

  PyHeap heap_;
};

TEST_F(StorageRefTest, ZipLayout) {
  auto ref = ParseStorageRef(ZipId(), StorageRefLayout::kZip);
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(ref->key, "0");
  EXPECT_EQ(ref->location, "cuda:0");
  EXPECT_EQ(ref->dtype, DType::kFloat16);
  EXPECT_FALSE(ref->untyped);
  EXPECT_EQ(ref->numel, 6u);
  EXPECT_EQ(ref->num_bytes, 12u);
  EXPECT_FALSE(ref->view.has_value());
}

TEST_F(StorageRefTest, UntypedStoragesHoldBytes) {
  auto ref =
      ParseStorageRef(Tuple({Str("storage"), Class("torch.UntypedStorage"),
                             Str("3"), Str("cpu"), Int(10)}),
                      StorageRefLayout::kZip);
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_TRUE(ref->untyped);
  EXPECT_EQ(ref->dtype, DType::kUInt8);
  EXPECT_EQ(ref->num_bytes, 10u);
  // torch's legacy loader types every storage.
  EXPECT_EQ(Error(Tuple({Str("storage"), Class("torch.UntypedStorage"),
                         Str("3"), Str("cpu"), Int(10), New(PyKind::kNone)}),
                  StorageRefLayout::kLegacy),
            "unknown storage class \"UntypedStorage\"");
}

TEST_F(StorageRefTest, LegacyLayoutWithAndWithoutView) {
  // Legacy ids name keys as ints and dtype-typed storages as well.
  PyValue* float64 = New(PyKind::kDType);
  float64->dtype = DType::kFloat64;
  auto root =
      ParseStorageRef(Tuple({Str("storage", PyKind::kBytes), float64, Int(140),
                             Str("cpu"), Int(4), New(PyKind::kNone)}),
                      StorageRefLayout::kLegacy);
  ASSERT_TRUE(root.ok()) << root.status();
  EXPECT_EQ(root->key, "140");
  EXPECT_EQ(root->dtype, DType::kFloat64);
  EXPECT_EQ(root->num_bytes, 32u);
  EXPECT_FALSE(root->view.has_value());

  auto view = ParseStorageRef(
      Tuple({Str("storage"), Class("torch.cuda.LongStorage"), Str("140"),
             Str("cuda:1"), Int(4), Tuple({Str("141"), Int(1), Int(2)})}),
      StorageRefLayout::kLegacy);
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ(view->dtype, DType::kInt64);
  ASSERT_TRUE(view->view.has_value());
  EXPECT_EQ(view->view->key, "141");
  EXPECT_EQ(view->view->offset, 1u);
  EXPECT_EQ(view->view->numel, 2u);

  EXPECT_EQ(
      Error(Tuple({Str("storage"), Class("torch.LongStorage"), Str("140"),
                   Str("cpu"), Int(4), Tuple({Str("141"), Int(-1), Int(2)})}),
            StorageRefLayout::kLegacy),
      "bad storage view metadata");
}

TEST_F(StorageRefTest, LocationsMayBeDevices) {
  PyValue* device = Str("cuda:3", PyKind::kDevice);
  auto ref = ParseStorageRef(Tuple({Str("storage"), Class("torch.FloatStorage"),
                                    Str("k"), device, Int(1)}),
                             StorageRefLayout::kZip);
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(ref->location, "cuda:3");
}

TEST_F(StorageRefTest, RefusalsSayWhatIsWrong) {
  EXPECT_EQ(Error(Str("storage")),
            "persistent id is a str, expected ('storage', type, key, "
            "location, numel)");
  EXPECT_EQ(Error(Tuple({}), StorageRefLayout::kLegacy),
            "persistent id is a tuple, expected ('storage', type, key, "
            "location, numel, view)");
  EXPECT_EQ(Error(Tuple({Str("module"), Class("torch.nn.Linear")}),
                  StorageRefLayout::kLegacy),
            "unsupported: pickled nn.Module (legacy 'module' persistent id); "
            "save a state_dict instead");
  EXPECT_EQ(Error(Tuple({Str("tensor"), Int(0)})),
            "unsupported persistent id type \"tensor\"");
  EXPECT_EQ(Error(Tuple({Int(5), Int(0)})),
            "unsupported persistent id type \"5\"");
  // The zip layout has no view field; the legacy layout needs one.
  EXPECT_EQ(Error(ZipId(), StorageRefLayout::kLegacy),
            "storage persistent id has 5 fields, not 6");
  EXPECT_EQ(Error(Tuple({Str("storage"), Class("torch.FloatStorage"), Str("0"),
                         Str("cpu"), Int(1), New(PyKind::kNone)})),
            "storage persistent id has 6 fields, not 5");
  EXPECT_EQ(Error(Tuple({Str("storage"), Class("torch.FloatStorage"),
                         New(PyKind::kNone), Str("cpu"), Int(1)})),
            "storage key is not a string");
  EXPECT_EQ(Error(Tuple({Str("storage"), Class("torch.FloatStorage"), Str("0"),
                         New(PyKind::kList), Int(1)})),
            "storage location is not a string");
  EXPECT_EQ(Error(Tuple({Str("storage"), Class("torch.FloatStorage"), Str("0"),
                         Str("cpu"), Int(-1)})),
            "storage numel is not a non-negative int");
  EXPECT_EQ(Error(Tuple({Str("storage"), Class("torch.FooStorage"), Str("0"),
                         Str("cpu"), Int(1)})),
            "unknown storage class \"FooStorage\"");
  EXPECT_EQ(Error(Tuple({Str("storage"), Str("torch.FloatStorage"), Str("0"),
                         Str("cpu"), Int(1)})),
            "storage type is a str, not a storage class");
}

TEST_F(StorageRefTest, SizeOverflowIsRefused) {
  EXPECT_EQ(Error(Tuple({Str("storage"), Class("torch.DoubleStorage"), Str("0"),
                         Str("cpu"), Int(int64_t{1} << 62)})),
            "storage \"0\" size overflows (numel 4611686018427387904)");
}

TEST_F(StorageRefTest, KeysAsText) {
  std::string text;
  ASSERT_TRUE(StorageKeyText(Int(-3), &text));
  EXPECT_EQ(text, "-3");
  ASSERT_TRUE(StorageKeyText(Str("ab", PyKind::kBytes), &text));
  EXPECT_EQ(text, "ab");
  EXPECT_FALSE(StorageKeyText(New(PyKind::kFloat), &text));
}

}  // namespace
}  // namespace weightd
