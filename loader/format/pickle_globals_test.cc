#include "loader/format/pickle_globals.h"

#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "loader/format/pickle_value.h"

namespace weightd {
namespace {

using ::testing::HasSubstr;

// The unpickling a global runs in, without the pickle machine: values on a
// heap, dict items appended as they come.
class FakeContext final : public GlobalContext {
 public:
  PyValue* NewValue(PyKind kind) override {
    PyValue* v = heap_.New();
    v->kind = kind;
    return v;
  }
  absl::Status SetItem(PyValue* dict, PyValue* key, PyValue* value) override {
    dict->pairs.emplace_back(key, value);
    return absl::OkStatus();
  }
  std::vector<PickledTensor>& tensors() override { return tensors_; }
  size_t max_dims() const override { return 3; }
  size_t opcode_offset() const override { return 42; }

  PyValue* Int(int64_t i) {
    PyValue* v = NewValue(PyKind::kInt);
    v->i = i;
    return v;
  }
  PyValue* Str(std::string s) {
    PyValue* v = NewValue(PyKind::kStr);
    v->s = std::move(s);
    return v;
  }
  PyValue* Tuple(std::vector<PyValue*> items) {
    PyValue* v = NewValue(PyKind::kTuple);
    v->items = std::move(items);
    return v;
  }
  PyValue* Storage(DType dtype) {
    PyValue* v = NewValue(PyKind::kStorage);
    v->dtype = dtype;
    v->index = 7;
    return v;
  }
  // GLOBAL module\nname\n, which must be allowed.
  PyValue* Global(absl::string_view module, absl::string_view name,
                  bool torchscript = false) {
    auto g = LoadGlobal(*this, module, name, torchscript);
    EXPECT_TRUE(g.ok()) << g.status();
    return g.ok() ? *g : NewValue(PyKind::kNone);
  }
  absl::StatusOr<PyValue*> Call(absl::string_view module,
                                absl::string_view name,
                                std::vector<PyValue*> args) {
    return CallGlobal(*this, Global(module, name), Tuple(std::move(args)));
  }

 private:
  PyHeap heap_;
  std::vector<PickledTensor> tensors_;
};

using ModuleNames = std::vector<std::pair<std::string, std::string>>;

std::string Refusal(absl::string_view full) {
  return absl::StrCat("refusing global \"", full,
                      "\": not in the weights-only allowlist");
}

TEST(PickleGlobalsTest, EveryRowIsReachableAndHasBehaviour) {
  absl::flat_hash_set<absl::string_view> names;
  for (const TorchGlobal& row : TorchGlobals()) {
    SCOPED_TRACE(row.name);
    EXPECT_TRUE(names.insert(row.name).second) << "listed twice";
    EXPECT_NE(row.call, nullptr);
    if (row.family != nullptr) continue;
    // An exact row is found by its own module.name, and no family claims it
    // (so the order families are tried in never shadows an exact row).
    size_t dot = row.name.rfind('.');
    ASSERT_NE(dot, absl::string_view::npos);
    absl::string_view module = row.name.substr(0, dot);
    absl::string_view name = row.name.substr(dot + 1);
    EXPECT_EQ(FindTorchGlobal(module, name), &row);
    for (const TorchGlobal& family : TorchGlobals()) {
      if (family.family != nullptr) {
        EXPECT_FALSE(family.family(module, name)) << family.name;
      }
    }
  }
}

TEST(PickleGlobalsTest, RefusesGlobalsWithoutARow) {
  FakeContext c;
  for (const auto& [module, name] : ModuleNames{
           {"os", "system"},
           {"builtins", "eval"},
           {"torch", "load"},
           {"torch._utils", "_rebuild_evil"},
           {"torch", "FooStorage"},
           {"torch.cuda", "Storage"},
           {"torch", "FloatTensorX"},
           {"torch.nn", "FloatTensor"},
           {"numpy.core.multiarray", "_reconstruct"},
       }) {
    auto g = LoadGlobal(c, module, name, /*torchscript=*/true);
    ASSERT_FALSE(g.ok()) << module << "." << name;
    EXPECT_EQ(g.status().message(), Refusal(absl::StrCat(module, ".", name)));
  }
}

TEST(PickleGlobalsTest, Python2ModuleNamesAreMappedFirst) {
  FakeContext c;
  auto set = LoadGlobal(c, "__builtin__", "set", false);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ((*set)->kind, PyKind::kGlobal);
  EXPECT_EQ((*set)->s, "builtins.set");
  auto tensor = LoadGlobal(c, "torch.tensor", "_rebuild_from_type_v2", false);
  ASSERT_TRUE(tensor.ok()) << tensor.status();
  EXPECT_EQ((*tensor)->s, "torch._tensor._rebuild_from_type_v2");
  EXPECT_EQ(
      LoadGlobal(c, "copy_reg", "_reconstructor", false).status().message(),
      Refusal("copyreg._reconstructor"));
  EXPECT_EQ(LoadGlobal(c, "__builtin__", "unicode", false).status().message(),
            Refusal("builtins.str"));
}

TEST(PickleGlobalsTest, TorchScriptClassesOnlyInTorchScriptArchives) {
  FakeContext c;
  EXPECT_EQ(LoadGlobal(c, "__torch__.m", "M", false).status().message(),
            Refusal("__torch__.m.M"));
  PyValue* cls = c.Global("__torch__.m", "M", /*torchscript=*/true);
  EXPECT_EQ(cls->s, "__torch__.m.M");
  // An instance gets its attribute dict from BUILD.
  auto object = CallGlobal(c, cls, c.Tuple({}));
  ASSERT_TRUE(object.ok()) << object.status();
  ASSERT_EQ((*object)->kind, PyKind::kObject);
  PyValue* state = c.NewValue(PyKind::kDict);
  state->pairs.emplace_back(c.Str("a"), c.Int(1));
  ASSERT_TRUE(BuildObject(c, *object, state).ok());
  ASSERT_EQ((*object)->pairs.size(), 1u);
  EXPECT_EQ((*object)->state, state);
  // A __getstate__ state is kept, never taken for attributes.
  auto other = CallGlobal(c, cls, c.Tuple({}));
  ASSERT_TRUE(other.ok());
  PyValue* tuple_state = c.Tuple({state, c.NewValue(PyKind::kNone)});
  ASSERT_TRUE(BuildObject(c, *other, tuple_state).ok());
  EXPECT_TRUE((*other)->pairs.empty());
  EXPECT_EQ((*other)->state, tuple_state);
}

TEST(PickleGlobalsTest, DTypesAreValuesNotCallables) {
  FakeContext c;
  PyValue* half = c.Global("torch", "half");
  ASSERT_EQ(half->kind, PyKind::kDType);
  EXPECT_EQ(half->dtype, DType::kFloat16);
  EXPECT_EQ(half->s, "torch.half");
  PyValue* bf16 = c.Global("torch", "bfloat16");
  EXPECT_EQ(bf16->dtype, DType::kBFloat16);
  auto call = CallGlobal(c, half, c.Tuple({}));
  ASSERT_FALSE(call.ok());
  EXPECT_EQ(call.status().message(), "cannot call a torch.dtype");
}

TEST(PickleGlobalsTest, NamesOnlyRefuseToBeCalled) {
  FakeContext c;
  for (const auto& [module, name] : ModuleNames{
           {"torch", "FloatStorage"},
           {"torch.cuda", "HalfStorage"},
           {"torch.storage", "UntypedStorage"},
           {"torch", "TypedStorage"},
           {"torch", "strided"},
           {"torch", "per_channel_affine"},
       }) {
    auto r = c.Call(module, name, {});
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().message(),
              absl::StrCat(module, ".", name, " is not callable"));
  }
  auto args = CallGlobal(c, c.Global("torch", "Size"), c.Int(3));
  EXPECT_EQ(args.status().message(),
            "arguments of torch.Size are a int, not a tuple");
}

TEST(PickleGlobalsTest, RebuildTensorV2MakesATensorRecord) {
  FakeContext c;
  PyValue* meta = c.NewValue(PyKind::kDict);
  PyValue* on = c.NewValue(PyKind::kBool);
  on->b = true;
  meta->pairs.emplace_back(c.Str("neg"), on);
  auto t = c.Call(
      "torch._utils", "_rebuild_tensor_v2",
      {c.Storage(DType::kFloat16), c.Int(3), c.Tuple({c.Int(2), c.Int(5)}),
       c.Tuple({c.Int(5), c.Int(1)}), on, c.NewValue(PyKind::kDict), meta});
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ((*t)->kind, PyKind::kTensor);
  const PickledTensor& record = c.tensors()[(*t)->index];
  EXPECT_EQ(record.storage, 7);
  EXPECT_EQ(record.dtype, DType::kFloat16);
  EXPECT_EQ(record.shape, (std::vector<int64_t>{2, 5}));
  EXPECT_EQ(record.stride, (std::vector<int64_t>{5, 1}));
  EXPECT_EQ(record.storage_offset, 3);
  EXPECT_EQ(record.extent_bytes, (3 + 5 + 4 + 1) * 2u);
  EXPECT_TRUE(record.requires_grad);
  EXPECT_TRUE(record.is_neg);
  EXPECT_FALSE(record.is_conj);
  EXPECT_EQ(record.pickle_offset, 42u);
}

TEST(PickleGlobalsTest, RebuildTensorBounds) {
  FakeContext c;
  auto too_many_dims =
      c.Call("torch._utils", "_rebuild_tensor",
             {c.Storage(DType::kFloat32), c.Int(0),
              c.Tuple({c.Int(1), c.Int(1), c.Int(1), c.Int(1)}),
              c.Tuple({c.Int(1), c.Int(1), c.Int(1), c.Int(1)})});
  EXPECT_EQ(too_many_dims.status().message(),
            "_rebuild_tensor: 4 dims, limit is 3");
  auto overflow = c.Call(
      "torch._utils", "_rebuild_tensor",
      {c.Storage(DType::kFloat32), c.Int(0), c.Tuple({c.Int(int64_t{1} << 62)}),
       c.Tuple({c.Int(int64_t{1} << 62)})});
  EXPECT_EQ(overflow.status().message(),
            "_rebuild_tensor: tensor extent overflows");
  auto not_storage = c.Call("torch._utils", "_rebuild_tensor_v3",
                            {c.Int(0), c.Int(0), c.Tuple({}), c.Tuple({}),
                             c.Int(0), c.Int(0), c.Global("torch", "float32")});
  EXPECT_EQ(not_storage.status().message(),
            "_rebuild_tensor_v3: first argument is a int, not a storage");
  auto arity = c.Call("torch._utils", "_rebuild_tensor_v2",
                      {c.Storage(DType::kFloat32)});
  EXPECT_EQ(arity.status().message(),
            "_rebuild_tensor_v2 called with 1 arguments");
}

TEST(PickleGlobalsTest, UnsupportedTensorKindsAreNamed) {
  FakeContext c;
  EXPECT_EQ(c.Call("torch._utils", "_rebuild_sparse_csr_tensor", {})
                .status()
                .message(),
            "unsupported: sparse tensor (_rebuild_sparse_csr_tensor)");
  EXPECT_EQ(c.Call("torch._utils", "_rebuild_wrapper_subclass", {})
                .status()
                .message(),
            "unsupported: tensor wrapper subclass (_rebuild_wrapper_subclass)");
  EXPECT_EQ(c.Call("torch._utils", "_rebuild_device_tensor_from_numpy", {})
                .status()
                .message(),
            "unsupported: tensor on a storage-less device (xla/mtia/numpy) "
            "(_rebuild_device_tensor_from_numpy)");
  EXPECT_EQ(c.Call("torch.jit._pickle", "build_tensor_from_id", {c.Int(0)})
                .status()
                .message(),
            "unsupported: tensor table references (RPC pickles)");
}

TEST(PickleGlobalsTest, ParametersAndSubclassRebuilds) {
  FakeContext c;
  PyValue* rebuild = c.Global("torch._utils", "_rebuild_tensor_v2");
  PyValue* rebuild_args =
      c.Tuple({c.Storage(DType::kFloat32), c.Int(0), c.Tuple({c.Int(2)}),
               c.Tuple({c.Int(1)}), c.Int(0), c.NewValue(PyKind::kDict)});
  auto tensor = CallGlobal(c, rebuild, rebuild_args);
  ASSERT_TRUE(tensor.ok()) << tensor.status();
  auto parameter =
      c.Call("torch.nn.parameter", "Parameter", {*tensor});  // requires_grad
  ASSERT_TRUE(parameter.ok()) << parameter.status();
  EXPECT_TRUE(c.tensors()[(*parameter)->index].is_parameter);
  EXPECT_TRUE(c.tensors()[(*parameter)->index].requires_grad);
  EXPECT_FALSE(c.tensors()[(*tensor)->index].is_parameter);

  auto subclass = c.Call("torch._tensor", "_rebuild_from_type_v2",
                         {rebuild, c.Global("torch.nn.parameter", "Parameter"),
                          rebuild_args, c.NewValue(PyKind::kDict)});
  ASSERT_TRUE(subclass.ok()) << subclass.status();
  EXPECT_TRUE(c.tensors()[(*subclass)->index].is_parameter);
  EXPECT_EQ(c.Call("torch._tensor", "_rebuild_from_type_v2",
                   {rebuild, c.Global("torch", "FloatStorage"), rebuild_args,
                    c.NewValue(PyKind::kDict)})
                .status()
                .message(),
            "unsupported: tensor subclass torch.FloatStorage");
}

// A rebuild_from_type whose argument list holds itself would recurse until
// the stack ran out.
TEST(PickleGlobalsTest, NestedRebuildFromTypeIsRefused) {
  FakeContext c;
  PyValue* from_type = c.Global("torch._tensor", "_rebuild_from_type_v2");
  PyValue* args = c.NewValue(PyKind::kList);
  args->items = {from_type, c.Global("torch", "Tensor"), args,
                 c.NewValue(PyKind::kDict)};
  auto r = CallGlobal(c, from_type, args);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(),
            "unexpected arguments to torch._tensor._rebuild_from_type_v2");
}

TEST(PickleGlobalsTest, LegacyTensorClassesBuildTensors) {
  FakeContext c;
  auto object = c.Call("torch.cuda", "HalfTensor", {});
  ASSERT_TRUE(object.ok()) << object.status();
  ASSERT_EQ((*object)->kind, PyKind::kObject);
  PyValue* state =
      c.Tuple({c.Storage(DType::kFloat16), c.Int(1), c.Tuple({c.Int(3)}),
               c.Tuple({c.Int(1)}), c.NewValue(PyKind::kNone)});
  ASSERT_TRUE(BuildObject(c, *object, state).ok());
  ASSERT_EQ((*object)->kind, PyKind::kTensor);
  EXPECT_EQ(c.tensors()[(*object)->index].shape, std::vector<int64_t>{3});
  EXPECT_EQ(c.tensors()[(*object)->index].storage_offset, 1);

  auto with_args = c.Call("torch", "FloatTensor", {c.Int(3)});
  EXPECT_EQ(with_args.status().message(),
            "unsupported: legacy constructor torch.FloatTensor with arguments");
  auto plain = c.Call("torch", "Tensor", {});
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(BuildObject(c, *plain, c.Tuple({})).message(),
            "unexpected state for torch.Tensor");
}

TEST(PickleGlobalsTest, ContainersAndScalars) {
  FakeContext c;
  auto dict = c.Call("collections", "OrderedDict",
                     {c.Tuple({c.Tuple({c.Str("k"), c.Int(1)})})});
  ASSERT_TRUE(dict.ok()) << dict.status();
  ASSERT_EQ((*dict)->kind, PyKind::kDict);
  ASSERT_EQ((*dict)->pairs.size(), 1u);
  EXPECT_EQ((*dict)->pairs[0].first->s, "k");

  PyValue* latin1 = c.Str("latin1");
  auto bytes = c.Call("_codecs", "encode", {c.Str("a\xc3\xbf"), latin1});
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_EQ((*bytes)->kind, PyKind::kBytes);
  EXPECT_EQ((*bytes)->s, "a\xff");
  EXPECT_EQ(c.Call("_codecs", "encode", {c.Str("\xc4\x80"), latin1})
                .status()
                .message(),
            "latin-1 encode of a code point > 255");
  EXPECT_EQ(c.Call("_codecs", "encode", {c.Str("x"), c.Str("rot13")})
                .status()
                .message(),
            "_codecs.encode: unsupported encoding \"rot13\"");

  auto device = c.Call("torch", "device", {c.Str("cuda"), c.Int(1)});
  ASSERT_TRUE(device.ok()) << device.status();
  EXPECT_EQ((*device)->kind, PyKind::kDevice);
  EXPECT_EQ((*device)->s, "cuda:1");

  auto size = c.Call("torch", "Size", {c.Tuple({c.Int(2), c.Int(3)})});
  ASSERT_TRUE(size.ok()) << size.status();
  EXPECT_EQ((*size)->kind, PyKind::kTuple);
  EXPECT_EQ((*size)->items.size(), 2u);
  EXPECT_EQ(c.Call("torch", "Size", {c.Tuple({c.Str("x")})}).status().message(),
            "unexpected arguments to torch.Size");

  auto complex = c.Call("builtins", "complex", {c.Int(1), c.Int(2)});
  ASSERT_TRUE(complex.ok()) << complex.status();
  EXPECT_EQ((*complex)->f, 1.0);
  EXPECT_EQ((*complex)->f2, 2.0);

  auto frozen = c.Call("builtins", "frozenset", {c.Tuple({c.Int(5)})});
  ASSERT_TRUE(frozen.ok()) << frozen.status();
  EXPECT_EQ((*frozen)->kind, PyKind::kFrozenSet);

  PyValue* tagged = c.Tuple({});
  auto untagged = c.Call("torch.jit._pickle", "restore_type_tag",
                         {tagged, c.Str("Tuple[]")});
  ASSERT_TRUE(untagged.ok()) << untagged.status();
  EXPECT_EQ(*untagged, tagged);
}

// _get_layout names a layout; what it names is a value, never a callable
// that escaped the table.
TEST(PickleGlobalsTest, GetLayoutYieldsAName) {
  FakeContext c;
  auto layout =
      c.Call("torch.serialization", "_get_layout", {c.Str("torch.sparse_coo")});
  ASSERT_TRUE(layout.ok()) << layout.status();
  ASSERT_EQ((*layout)->kind, PyKind::kGlobal);
  EXPECT_EQ((*layout)->s, "torch.sparse_coo");
  EXPECT_EQ(CallGlobal(c, *layout, c.Tuple({})).status().message(),
            "torch.sparse_coo is not callable");
  auto evil =
      c.Call("torch.serialization", "_get_layout", {c.Str("os.system")});
  ASSERT_TRUE(evil.ok());
  EXPECT_EQ(CallGlobal(c, *evil, c.Tuple({})).status().message(),
            "os.system is not callable");
}

}  // namespace
}  // namespace weightd
