#include "loader/format/pickle_repr.h"

#include <string>

#include "absl/strings/escaping.h"
#include "gtest/gtest.h"
#include "loader/format/pickle_value.h"

namespace weightd {
namespace {

// Expected texts are what CPython 3 prints for the same values.

PyValue* New(PyHeap& heap, PyKind kind) {
  PyValue* v = heap.New();
  v->kind = kind;
  return v;
}

TEST(PickleReprTest, PyStrOfKeys) {
  PyHeap heap;
  PyValue* f = New(heap, PyKind::kFloat);
  f->f = 0.1;
  EXPECT_EQ(PyStr(f), "0.1");
  f->f = 1e16;
  EXPECT_EQ(PyStr(f), "1e+16");
  f->f = 2.0;
  EXPECT_EQ(PyStr(f), "2.0");
  f->f = 1.5e-5;
  EXPECT_EQ(PyStr(f), "1.5e-05");
  PyValue* t = New(heap, PyKind::kTuple);
  PyValue* i = New(heap, PyKind::kInt);
  i->i = 2;
  PyValue* s = New(heap, PyKind::kStr);
  s->s = "x";
  t->items = {i, s};
  EXPECT_EQ(PyStr(t), "(2, 'x')");
  PyValue* b = New(heap, PyKind::kBool);
  b->b = true;
  EXPECT_EQ(PyStr(b), "True");
}

TEST(PickleReprTest, FloatReprIsShortestRoundTrip) {
  EXPECT_EQ(PyFloatRepr(0.1), "0.1");
  EXPECT_EQ(PyFloatRepr(0.3), "0.3");
  EXPECT_EQ(PyFloatRepr(123.456), "123.456");
  EXPECT_EQ(PyFloatRepr(1e-4), "0.0001");
  EXPECT_EQ(PyFloatRepr(-1e-7), "-1e-07");
  EXPECT_EQ(PyFloatRepr(1e15), "1000000000000000.0");
  EXPECT_EQ(PyFloatRepr(1e22), "1e+22");
  EXPECT_EQ(PyFloatRepr(1.2345678901234568e+17), "1.2345678901234568e+17");
  EXPECT_EQ(PyFloatRepr(5e-324), "5e-324");
  EXPECT_EQ(PyFloatRepr(-0.0), "-0.0");
  EXPECT_EQ(PyFloatRepr(__builtin_nan("")), "nan");
  EXPECT_EQ(PyFloatRepr(__builtin_inf()), "inf");
  EXPECT_EQ(PyFloatRepr(-__builtin_inf()), "-inf");
}

TEST(PickleReprTest, QuotesAsPythonRepr) {
  EXPECT_EQ(PyQuote("x", false), "'x'");
  EXPECT_EQ(PyQuote("it's", false), "\"it's\"");
  EXPECT_EQ(PyQuote("a'b\"c", false), "'a\\'b\"c'");
  EXPECT_EQ(PyQuote("t\tn\n\x7f", false), "'t\\tn\\n\\x7f'");
  EXPECT_EQ(PyQuote(std::string("\0\xff\"", 3), true), "b'\\x00\\xff\"'");
  // UTF-8 text stays as it is in str, escaped in bytes.
  EXPECT_EQ(PyQuote("\xc3\xa9", false), "'\xc3\xa9'");
  EXPECT_EQ(PyQuote("\xc3\xa9", true), "b'\\xc3\\xa9'");
}

TEST(PickleReprTest, BigIntDecimalOfLittleEndianTwosComplement) {
  EXPECT_EQ(BigIntDecimal(""), "0");
  EXPECT_EQ(BigIntDecimal(absl::HexStringToBytes("000000000000000040")),
            "1180591620717411303424");  // 2**70
  EXPECT_EQ(BigIntDecimal(absl::HexStringToBytes("0000000000000000c0")),
            "-1180591620717411303424");
  EXPECT_EQ(BigIntDecimal(absl::HexStringToBytes("0000000000000080")),
            "-9223372036854775808");
  EXPECT_EQ(BigIntDecimal(absl::HexStringToBytes("ff00")), "255");
  EXPECT_EQ(BigIntDecimal(absl::HexStringToBytes("ff")), "-1");
}

TEST(PickleReprTest, StrOfScalarsAndContainers) {
  PyHeap heap;
  EXPECT_EQ(PyStr(New(heap, PyKind::kNone)), "None");
  PyValue* c = New(heap, PyKind::kComplex);
  c->f = 1;
  c->f2 = 2;
  EXPECT_EQ(PyStr(c), "(1+2j)");
  c->f = 1.5;
  c->f2 = -2;
  EXPECT_EQ(PyStr(c), "(1.5-2j)");
  c->f = 0;
  c->f2 = 1;
  EXPECT_EQ(PyStr(c), "1j");
  c->f = -0.0;
  EXPECT_EQ(PyStr(c), "(-0+1j)");
  PyValue* bytes = New(heap, PyKind::kBytes);
  bytes->s = "x'";
  EXPECT_EQ(PyStr(bytes), "b\"x'\"");
  PyValue* one = New(heap, PyKind::kTuple);
  PyValue* big = New(heap, PyKind::kBigInt);
  big->s = "1180591620717411303424";
  one->items = {big};
  EXPECT_EQ(PyStr(one), "(1180591620717411303424,)");
  PyValue* dtype = New(heap, PyKind::kDType);
  dtype->dtype = DType::kBFloat16;
  EXPECT_EQ(PyStr(dtype), "torch.bfloat16");
  PyValue* global = New(heap, PyKind::kGlobal);
  global->s = "torch.strided";
  EXPECT_EQ(PyStr(global), "<torch.strided>");
  EXPECT_EQ(PyStr(New(heap, PyKind::kTensor)), "<torch.Tensor>");
}

// Any tuple a pickle can build is printed without running out of stack;
// keys (at most 65 levels, as the unpickler allows) print in full.
TEST(PickleReprTest, DeeplyNestedTuples) {
  PyHeap heap;
  PyValue* v = New(heap, PyKind::kNone);
  for (int depth = 1; depth <= 65; ++depth) {
    PyValue* t = New(heap, PyKind::kTuple);
    t->items = {v};
    v = t;
  }
  std::string closes;
  for (int k = 0; k < 65; ++k) closes += ",)";
  EXPECT_EQ(PyStr(v), std::string(65, '(') + "None" + closes);
  for (int depth = 66; depth <= 1000000; ++depth) {
    PyValue* t = New(heap, PyKind::kTuple);
    t->items = {v};
    v = t;
  }
  const std::string deep = PyStr(v);
  EXPECT_EQ(deep.substr(0, 100), std::string(100, '('));
  EXPECT_NE(deep.find("(...)"), std::string::npos);
}

TEST(PickleReprTest, TypeNames) {
  PyHeap heap;
  EXPECT_EQ(PyTypeName(New(heap, PyKind::kNone)), "NoneType");
  EXPECT_EQ(PyTypeName(New(heap, PyKind::kBigInt)), "int");
  EXPECT_EQ(PyTypeName(New(heap, PyKind::kFrozenSet)), "frozenset");
  EXPECT_EQ(PyTypeName(New(heap, PyKind::kStorage)), "torch.Storage");
  PyValue* object = New(heap, PyKind::kObject);
  object->s = "__torch__.M";
  EXPECT_EQ(PyTypeName(object), "__torch__.M");
}

}  // namespace
}  // namespace weightd
