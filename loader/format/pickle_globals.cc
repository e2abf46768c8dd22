#include "loader/format/pickle_globals.h"

#include <cstdint>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "loader/common/status_macros.h"
#include "loader/format/dtype.h"
#include "loader/format/pickle_repr.h"

namespace weightd {
namespace {

using Args = std::vector<PyValue*>;

absl::Status Invalid(absl::string_view what) {
  return absl::InvalidArgumentError(what);
}

absl::Status UnexpectedArguments(const std::string& fn) {
  return Invalid(absl::StrCat("unexpected arguments to ", fn));
}

bool IsInt(const PyValue* v) {
  return v->kind == PyKind::kInt || v->kind == PyKind::kBool;
}
bool IsSeq(const PyValue* v) {
  return v->kind == PyKind::kTuple || v->kind == PyKind::kList;
}

// "_rebuild_tensor_v2" of "torch._utils._rebuild_tensor_v2".
absl::string_view ShortName(absl::string_view fn) {
  size_t dot = fn.rfind('.');
  return dot == absl::string_view::npos ? fn : fn.substr(dot + 1);
}

// Decodes UTF-8 into code points; false on bytes that are not UTF-8.
bool Utf8ToCodePoints(absl::string_view s, std::vector<uint32_t>* out) {
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    int len = c < 0x80             ? 1
              : (c & 0xE0) == 0xC0 ? 2
              : (c & 0xF0) == 0xE0 ? 3
              : (c & 0xF8) == 0xF0 ? 4
                                   : 0;
    if (len == 0 || i + len > s.size()) return false;
    uint32_t cp = len == 1 ? c : c & (0x7F >> len);
    for (int k = 1; k < len; ++k) {
      unsigned char cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    out->push_back(cp);
    i += len;
  }
  return true;
}

// Globals that are values, never functions: layouts, qschemes, storage
// classes, dtypes.
absl::StatusOr<PyValue*> RefuseCall(GlobalContext&, const std::string& fn,
                                    const Args&) {
  return Invalid(absl::StrCat(fn, " is not callable"));
}

PyValue* NewTensor(GlobalContext& context, PickledTensor tensor) {
  PyValue* v = context.NewValue(PyKind::kTensor);
  v->index = static_cast<int64_t>(context.tensors().size());
  v->b = tensor.is_parameter;  // torch.load gives a torch.nn.Parameter
  context.tensors().push_back(std::move(tensor));
  return v;
}

enum class RebuildVersion { kV1, kV2, kV3 };

// _rebuild_tensor(storage, offset, size, stride)
// _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks
//                    [, metadata])
// _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks,
//                    dtype [, metadata])
absl::StatusOr<PyValue*> RebuildTensor(GlobalContext& context,
                                       absl::string_view fn,
                                       RebuildVersion version,
                                       const Args& args) {
  size_t min_args = version == RebuildVersion::kV1   ? 4
                    : version == RebuildVersion::kV2 ? 6
                                                     : 7;
  size_t max_args = version == RebuildVersion::kV1 ? 4 : min_args + 1;
  if (args.size() < min_args || args.size() > max_args) {
    return Invalid(
        absl::StrCat(fn, " called with ", args.size(), " arguments"));
  }
  const PyValue* storage = args[0];
  if (storage->kind != PyKind::kStorage) {
    return Invalid(absl::StrCat(fn, ": first argument is a ",
                                PyTypeName(storage), ", not a storage"));
  }
  PickledTensor t;
  t.pickle_offset = context.opcode_offset();
  t.storage = storage->index;
  t.dtype = storage->dtype;
  if (version == RebuildVersion::kV3) {
    if (args[6]->kind != PyKind::kDType) {
      return Invalid("_rebuild_tensor_v3: dtype argument is not a dtype");
    }
    t.dtype = args[6]->dtype;
  }
  if (args[1]->kind != PyKind::kInt || args[1]->i < 0) {
    return Invalid(
        absl::StrCat(fn, ": storage offset is not a non-negative int"));
  }
  t.storage_offset = args[1]->i;
  const PyValue* size = args[2];
  const PyValue* stride = args[3];
  if (!IsSeq(size) || !IsSeq(stride)) {
    return Invalid(absl::StrCat(fn, ": size and stride must be tuples"));
  }
  if (size->items.size() != stride->items.size()) {
    return Invalid(absl::StrCat(fn, ": size has ", size->items.size(),
                                " dims, stride ", stride->items.size()));
  }
  if (size->items.size() > context.max_dims()) {
    return Invalid(absl::StrCat(fn, ": ", size->items.size(),
                                " dims, limit is ", context.max_dims()));
  }
  uint64_t last = 0;  // element index of the last element touched
  bool empty = false;
  for (size_t d = 0; d < size->items.size(); ++d) {
    const PyValue* n = size->items[d];
    const PyValue* s = stride->items[d];
    if (n->kind != PyKind::kInt || s->kind != PyKind::kInt || n->i < 0 ||
        s->i < 0) {
      return Invalid(
          absl::StrCat(fn, ": size/stride entries must be non-negative ints"));
    }
    t.shape.push_back(n->i);
    t.stride.push_back(s->i);
    if (n->i == 0) empty = true;
  }
  // Overflow checks on numel and on the extent of the view.
  uint64_t numel = 1;
  for (int64_t n : t.shape) {
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(n), &numel) ||
        numel > static_cast<uint64_t>(INT64_MAX)) {
      return Invalid(absl::StrCat(fn, ": number of elements overflows"));
    }
  }
  if (!empty) {
    for (size_t d = 0; d < t.shape.size(); ++d) {
      uint64_t span;
      if (__builtin_mul_overflow(static_cast<uint64_t>(t.shape[d] - 1),
                                 static_cast<uint64_t>(t.stride[d]), &span) ||
          __builtin_add_overflow(last, span, &last)) {
        return Invalid(absl::StrCat(fn, ": tensor extent overflows"));
      }
    }
    uint64_t end;
    if (__builtin_add_overflow(last, static_cast<uint64_t>(t.storage_offset),
                               &end) ||
        __builtin_add_overflow(end, uint64_t{1}, &end) ||
        __builtin_mul_overflow(end, static_cast<uint64_t>(DTypeSize(t.dtype)),
                               &t.extent_bytes)) {
      return Invalid(absl::StrCat(fn, ": tensor extent overflows"));
    }
  }
  if (version != RebuildVersion::kV1) {
    t.requires_grad = args[4]->kind == PyKind::kBool  ? args[4]->b
                      : args[4]->kind == PyKind::kInt ? args[4]->i != 0
                                                      : false;
    // args[5], backward hooks: torch ignores them on load ("Don't serialize
    // hooks").
    size_t meta_index = version == RebuildVersion::kV2 ? 6 : 7;
    if (args.size() > meta_index) {
      const PyValue* meta = args[meta_index];
      if (meta->kind == PyKind::kDict) {
        for (const auto& kv : meta->pairs) {
          bool on = kv.second->kind == PyKind::kBool  ? kv.second->b
                    : kv.second->kind == PyKind::kInt ? kv.second->i != 0
                                                      : false;
          if (kv.first->kind == PyKind::kStr && kv.first->s == "conj") {
            t.is_conj = on;
          } else if (kv.first->kind == PyKind::kStr && kv.first->s == "neg") {
            t.is_neg = on;
          }
        }
      } else if (meta->kind != PyKind::kNone) {
        return Invalid(absl::StrCat(fn, ": metadata is a ", PyTypeName(meta)));
      }
    }
  }
  return NewTensor(context, std::move(t));
}

template <RebuildVersion kVersion>
absl::StatusOr<PyValue*> CallRebuildTensor(GlobalContext& context,
                                           const std::string& fn,
                                           const Args& args) {
  return RebuildTensor(context, ShortName(fn), kVersion, args);
}

// _rebuild_parameter(tensor, requires_grad, hooks)
// _rebuild_parameter_with_state(tensor, requires_grad, hooks, state)
template <bool kWithState>
absl::StatusOr<PyValue*> CallRebuildParameter(GlobalContext& context,
                                              const std::string& fn,
                                              const Args& args) {
  const size_t want = kWithState ? 4 : 3;
  if (args.size() != want || args[0]->kind != PyKind::kTensor ||
      !IsInt(args[1])) {
    return Invalid(absl::StrCat(ShortName(fn),
                                " expects (tensor, requires_grad, hooks",
                                kWithState ? ", state)" : ")"));
  }
  PickledTensor t = context.tensors()[args[0]->index];
  t.is_parameter = true;
  t.requires_grad = args[1]->kind == PyKind::kBool ? args[1]->b : args[1]->i;
  return NewTensor(context, std::move(t));
}

// Rebuild functions of tensors weightd cannot describe as views of a storage.
template <const char* kWhat>
absl::StatusOr<PyValue*> RefuseTensorKind(GlobalContext&, const std::string& fn,
                                          const Args&) {
  return Invalid(
      absl::StrCat("unsupported: ", kWhat, " (", ShortName(fn), ")"));
}
constexpr char kQuantized[] = "quantized tensor";
constexpr char kSparse[] = "sparse tensor";
constexpr char kMetaNoStorage[] = "meta tensor without storage";
constexpr char kNested[] = "nested tensor";
constexpr char kWrapperSubclass[] = "tensor wrapper subclass";
constexpr char kStoragelessDevice[] =
    "tensor on a storage-less device (xla/mtia/numpy)";

// _rebuild_from_type_v2(func, type, args, state): func(*args) as a `type`.
absl::StatusOr<PyValue*> CallRebuildFromType(GlobalContext& context,
                                             const std::string& fn,
                                             const Args& a) {
  if (a.size() != 4 || a[1]->kind != PyKind::kGlobal || !IsSeq(a[2])) {
    return UnexpectedArguments(fn);
  }
  const std::string& type = a[1]->s;
  if (type != "torch.Tensor" && type != "torch.nn.parameter.Parameter") {
    return Invalid(absl::StrCat("unsupported: tensor subclass ", type));
  }
  // torch only ever wraps a tensor rebuild; a wrapped _rebuild_from_type
  // could name its own arguments (a list holding itself) and never end.
  if (a[0]->kind == PyKind::kGlobal &&
      absl::StartsWith(a[0]->s, "torch._tensor._rebuild_from_type")) {
    return UnexpectedArguments(fn);
  }
  ASSIGN_OR_RETURN(PyValue * r, CallGlobal(context, a[0], a[2]));
  if (r->kind != PyKind::kTensor) return UnexpectedArguments(fn);
  if (type == "torch.nn.parameter.Parameter") {
    context.tensors()[r->index].is_parameter = true;
    r->b = true;
  }
  return r;
}

// torch.nn.parameter.Parameter(tensor[, requires_grad=True])
absl::StatusOr<PyValue*> CallParameter(GlobalContext& context,
                                       const std::string& fn, const Args& a) {
  if (a.empty() || a.size() > 2 || a[0]->kind != PyKind::kTensor) {
    return UnexpectedArguments(fn);
  }
  PickledTensor t = context.tensors()[a[0]->index];
  t.is_parameter = true;
  t.requires_grad = a.size() < 2                  ? true
                    : a[1]->kind == PyKind::kBool ? a[1]->b
                                                  : a[1]->i != 0;
  return NewTensor(context, std::move(t));
}

// OrderedDict() / OrderedDict(dict) / OrderedDict([(k, v), ...]); Counter
// alike.
absl::StatusOr<PyValue*> CallDict(GlobalContext& context, const std::string& fn,
                                  const Args& a) {
  PyValue* d = context.NewValue(PyKind::kDict);
  d->s = fn;  // not a plain dict: torch.load gives this class
  if (a.empty()) return d;
  if (a.size() != 1) return UnexpectedArguments(fn);
  if (a[0]->kind == PyKind::kDict) {
    for (auto& kv : a[0]->pairs) {
      RETURN_IF_ERROR(context.SetItem(d, kv.first, kv.second));
    }
    return d;
  }
  if (!IsSeq(a[0])) return UnexpectedArguments(fn);
  for (PyValue* pair : a[0]->items) {
    if (!IsSeq(pair) || pair->items.size() != 2) return UnexpectedArguments(fn);
    RETURN_IF_ERROR(context.SetItem(d, pair->items[0], pair->items[1]));
  }
  return d;
}

template <PyKind kKind>
absl::StatusOr<PyValue*> CallSet(GlobalContext& context, const std::string& fn,
                                 const Args& a) {
  PyValue* s = context.NewValue(kKind);
  if (a.empty()) return s;
  if (a.size() != 1 || !(IsSeq(a[0]) || a[0]->kind == PyKind::kSet ||
                         a[0]->kind == PyKind::kFrozenSet)) {
    return UnexpectedArguments(fn);
  }
  s->items = a[0]->items;
  return s;
}

absl::StatusOr<PyValue*> CallComplex(GlobalContext& context,
                                     const std::string& fn, const Args& a) {
  PyValue* c = context.NewValue(PyKind::kComplex);
  auto num = [](const PyValue* v, double* out) {
    if (v->kind == PyKind::kFloat) {
      *out = v->f;
    } else if (v->kind == PyKind::kInt) {
      *out = static_cast<double>(v->i);
    } else if (v->kind == PyKind::kBool) {
      *out = v->b;
    } else {
      return false;
    }
    return true;
  };
  if (a.size() > 2 || (a.size() >= 1 && !num(a[0], &c->f)) ||
      (a.size() == 2 && !num(a[1], &c->f2))) {
    return UnexpectedArguments(fn);
  }
  return c;
}

absl::StatusOr<PyValue*> CallSlice(GlobalContext& context,
                                   const std::string& fn, const Args& a) {
  if (a.empty() || a.size() > 3) return UnexpectedArguments(fn);
  PyValue* s = context.NewValue(PyKind::kSlice);
  s->items = a;
  return s;
}

// bytearray(bytes) / bytearray(str, encoding) / _codecs.encode(str,
// encoding): how protocols 0-2 write bytes. kKind: what the call yields.
template <PyKind kKind>
absl::StatusOr<PyValue*> CallEncode(GlobalContext& context,
                                    const std::string& fn, const Args& a) {
  PyValue* b = context.NewValue(kKind);
  if (a.empty() && kKind == PyKind::kByteArray) return b;
  if (a.size() == 1 &&
      (a[0]->kind == PyKind::kBytes || a[0]->kind == PyKind::kByteArray)) {
    b->s = a[0]->s;
    return b;
  }
  if (a.size() < 1 || a.size() > 2 || a[0]->kind != PyKind::kStr ||
      (a.size() == 2 && a[1]->kind != PyKind::kStr)) {
    return UnexpectedArguments(fn);
  }
  std::string enc = a.size() == 2 ? absl::AsciiStrToLower(a[1]->s) : "utf-8";
  if (enc == "utf-8" || enc == "utf8") {
    b->s = a[0]->s;
    return b;
  }
  if (enc != "latin1" && enc != "latin-1" && enc != "iso-8859-1") {
    return Invalid(absl::StrCat(fn, ": unsupported encoding \"", enc, "\""));
  }
  std::vector<uint32_t> cps;
  if (!Utf8ToCodePoints(a[0]->s, &cps)) return UnexpectedArguments(fn);
  b->s.reserve(cps.size());
  for (uint32_t cp : cps) {
    if (cp > 0xFF) return Invalid("latin-1 encode of a code point > 255");
    b->s.push_back(static_cast<char>(cp));
  }
  return b;
}

// torch.Size([d0, d1, ...]): a tuple of ints.
absl::StatusOr<PyValue*> CallSize(GlobalContext& context, const std::string& fn,
                                  const Args& a) {
  PyValue* t = context.NewValue(PyKind::kTuple);
  t->s = fn;
  if (a.empty()) return t;
  if (a.size() != 1 || !IsSeq(a[0])) return UnexpectedArguments(fn);
  for (const PyValue* d : a[0]->items) {
    if (d->kind != PyKind::kInt) return UnexpectedArguments(fn);
  }
  t->items = a[0]->items;
  return t;
}

// torch.device("cuda:0") / torch.device("cuda", 0) / torch.device("cpu",
// None).
absl::StatusOr<PyValue*> CallDevice(GlobalContext& context,
                                    const std::string& fn, const Args& a) {
  PyValue* d = context.NewValue(PyKind::kDevice);
  if (a.size() == 1 && a[0]->kind == PyKind::kStr) {
    d->s = a[0]->s;
  } else if (a.size() == 2 && a[0]->kind == PyKind::kStr &&
             a[1]->kind == PyKind::kInt) {
    d->s = absl::StrCat(a[0]->s, ":", a[1]->i);
  } else if (a.size() == 2 && a[0]->kind == PyKind::kStr &&
             a[1]->kind == PyKind::kNone) {
    d->s = a[0]->s;
  } else {
    return UnexpectedArguments(fn);
  }
  return d;
}

// torch.serialization._get_layout("torch.sparse_coo"): the layout by name.
absl::StatusOr<PyValue*> CallGetLayout(GlobalContext& context,
                                       const std::string& fn, const Args& a) {
  if (a.size() != 1 || a[0]->kind != PyKind::kStr) {
    return UnexpectedArguments(fn);
  }
  PyValue* g = context.NewValue(PyKind::kGlobal);
  g->s = a[0]->s;
  return g;
}

// torch.jit._pickle.build_intlist([...]) and its double/bool/tensor kin.
absl::StatusOr<PyValue*> CallBuildList(GlobalContext& context,
                                       const std::string& fn, const Args& a) {
  if (a.size() != 1 || !IsSeq(a[0])) return UnexpectedArguments(fn);
  PyValue* l = context.NewValue(PyKind::kList);
  l->items = a[0]->items;
  return l;
}

// torch.jit._pickle.restore_type_tag(value, type_string): the value.
absl::StatusOr<PyValue*> CallRestoreTypeTag(GlobalContext&,
                                            const std::string& fn,
                                            const Args& a) {
  if (a.size() != 2) return UnexpectedArguments(fn);
  return a[0];
}

absl::StatusOr<PyValue*> RefuseTensorTable(GlobalContext&, const std::string&,
                                           const Args&) {
  return Invalid("unsupported: tensor table references (RPC pickles)");
}

// torch.FloatTensor() and torch.Tensor(): an object BUILD turns into a
// tensor (the pre-1.0 way of pickling tensors).
absl::StatusOr<PyValue*> CallLegacyTensorClass(GlobalContext& context,
                                               const std::string& fn,
                                               const Args& a) {
  if (!a.empty()) {
    return Invalid(absl::StrCat("unsupported: legacy constructor ", fn,
                                " with arguments"));
  }
  PyValue* o = context.NewValue(PyKind::kObject);
  o->s = fn;
  return o;
}

// Legacy tensor: state = (storage, offset, size, stride[, ...]).
absl::Status BuildLegacyTensor(GlobalContext& context, PyValue* object,
                               PyValue* state) {
  object->state = state;
  if (!IsSeq(state) || state->items.size() < 4) {
    return Invalid(absl::StrCat("unexpected state for ", object->s));
  }
  Args args(state->items.begin(), state->items.begin() + 4);
  ASSIGN_OR_RETURN(PyValue * t, RebuildTensor(context, "_rebuild_tensor",
                                              RebuildVersion::kV1, args));
  object->kind = PyKind::kTensor;
  object->index = t->index;
  return absl::OkStatus();
}

// A TorchScript class instance (__torch__.M()): data, its attributes set by
// BUILD.
absl::StatusOr<PyValue*> CallScriptClass(GlobalContext& context,
                                         const std::string& fn, const Args&) {
  PyValue* o = context.NewValue(PyKind::kObject);
  o->s = fn;
  return o;
}

// torch's pickler writes the attribute dict, or for a class with
// __getstate__/__setstate__ whatever __getstate__ returned, which only its
// __setstate__ (code) can interpret. Only the dict becomes attributes; any
// other state stays in `state` for the reader to refuse where it matters.
absl::Status BuildScriptObject(GlobalContext&, PyValue* object,
                               PyValue* state) {
  object->state = state;
  if (state->kind == PyKind::kDict) {
    for (auto& kv : state->pairs) object->pairs.push_back(kv);
  }
  return absl::OkStatus();
}

// Families.

bool IsDTypeGlobal(absl::string_view module, absl::string_view name) {
  return module == "torch" && DTypeFromName(name).ok();
}

bool IsStorageClass(absl::string_view module, absl::string_view name) {
  return (module == "torch" || module == "torch.cuda" ||
          module == "torch.storage") &&
         absl::EndsWith(name, "Storage") &&
         (name == "UntypedStorage" || name == "TypedStorage" ||
          DTypeFromStorageClass(name).ok());
}

constexpr const char* kTensorTypePrefixes[] = {
    "Double", "Float", "Half", "BFloat16", "Long",         "Int",
    "Short",  "Char",  "Byte", "Bool",     "ComplexFloat", "ComplexDouble"};

bool IsTensorClass(absl::string_view module, absl::string_view name) {
  if (module != "torch" && module != "torch.cuda") return false;
  if (!absl::ConsumeSuffix(&name, "Tensor")) return false;
  for (const char* p : kTensorTypePrefixes) {
    if (name == p) return true;
  }
  return false;
}

bool IsScriptClass(absl::string_view module, absl::string_view) {
  return absl::StartsWith(module, "__torch__");
}

// Row makers: each says what kind of global a row is.

// Called, yields a value; never built.
constexpr TorchGlobal Function(absl::string_view name, GlobalCall& call) {
  return TorchGlobal(name, nullptr, false, GlobalPushes::kName, call, nullptr);
}
// A value only (layouts, qschemes): calling it is refused.
constexpr TorchGlobal Value(absl::string_view name) {
  return TorchGlobal(name, nullptr, false, GlobalPushes::kName, RefuseCall,
                     nullptr);
}
// Called with no state, then BUILD gives the object its state.
constexpr TorchGlobal Class(absl::string_view name, GlobalCall& call,
                            GlobalBuild& build) {
  return TorchGlobal(name, nullptr, false, GlobalPushes::kName, call, &build);
}
constexpr TorchGlobal Family(absl::string_view spelling, GlobalFamily& family,
                             bool torchscript_only, GlobalPushes pushes,
                             GlobalCall& call, GlobalBuild* build) {
  return TorchGlobal(spelling, &family, torchscript_only, pushes, call, build);
}

constexpr TorchGlobal kRows[] = {
    // Tensor rebuilds (torch/_utils.py).
    Function("torch._utils._rebuild_tensor",
             CallRebuildTensor<RebuildVersion::kV1>),
    Function("torch._utils._rebuild_tensor_v2",
             CallRebuildTensor<RebuildVersion::kV2>),
    Function("torch._utils._rebuild_tensor_v3",
             CallRebuildTensor<RebuildVersion::kV3>),
    Function("torch._utils._rebuild_parameter", CallRebuildParameter<false>),
    Function("torch._utils._rebuild_parameter_with_state",
             CallRebuildParameter<true>),
    Function("torch._utils._rebuild_qtensor", RefuseTensorKind<kQuantized>),
    Function("torch._utils._rebuild_sparse_tensor", RefuseTensorKind<kSparse>),
    Function("torch._utils._rebuild_sparse_csr_tensor",
             RefuseTensorKind<kSparse>),
    Function("torch._utils._rebuild_meta_tensor_no_storage",
             RefuseTensorKind<kMetaNoStorage>),
    Function("torch._utils._rebuild_nested_tensor", RefuseTensorKind<kNested>),
    Function("torch._utils._rebuild_wrapper_subclass",
             RefuseTensorKind<kWrapperSubclass>),
    Function("torch._utils._rebuild_device_tensor_from_numpy",
             RefuseTensorKind<kStoragelessDevice>),
    Function("torch._utils._rebuild_device_tensor_from_cpu_tensor",
             RefuseTensorKind<kStoragelessDevice>),
    Function("torch._tensor._rebuild_from_type_v2", CallRebuildFromType),
    Function("torch._tensor._rebuild_from_type", CallRebuildFromType),
    Function("torch.nn.parameter.Parameter", CallParameter),
    Class("torch.Tensor", CallLegacyTensorClass, BuildLegacyTensor),
    // Containers and scalars.
    Function("collections.OrderedDict", CallDict),
    Function("collections.Counter", CallDict),
    Function("builtins.set", CallSet<PyKind::kSet>),
    Function("builtins.frozenset", CallSet<PyKind::kFrozenSet>),
    Function("builtins.complex", CallComplex),
    Function("builtins.slice", CallSlice),
    Function("builtins.bytearray", CallEncode<PyKind::kByteArray>),
    Function("_codecs.encode", CallEncode<PyKind::kBytes>),
    Function("torch.Size", CallSize),
    Function("torch.device", CallDevice),
    // Layouts and quantization schemes.
    Function("torch.serialization._get_layout", CallGetLayout),
    Value("torch.strided"),
    Value("torch.sparse_coo"),
    Value("torch.sparse_csr"),
    Value("torch.sparse_csc"),
    Value("torch.sparse_bsr"),
    Value("torch.sparse_bsc"),
    Value("torch._mkldnn"),
    Value("torch.per_tensor_affine"),
    Value("torch.per_tensor_symmetric"),
    Value("torch.per_channel_affine"),
    Value("torch.per_channel_symmetric"),
    Value("torch.per_channel_affine_float_qparams"),
    // TorchScript pickle helpers (torch/jit/_pickle.py).
    Function("torch.jit._pickle.build_intlist", CallBuildList),
    Function("torch.jit._pickle.build_tensorlist", CallBuildList),
    Function("torch.jit._pickle.build_doublelist", CallBuildList),
    Function("torch.jit._pickle.build_boollist", CallBuildList),
    Function("torch.jit._pickle.build_tensor_from_id", RefuseTensorTable),
    Function("torch.jit._pickle.restore_type_tag", CallRestoreTypeTag),
    // Families, tried in this order after the exact names (no family claims
    // an exact name: pickle_globals_test).
    Family("torch.<dtype>", IsDTypeGlobal, false, GlobalPushes::kDType,
           RefuseCall, nullptr),
    Family("torch[.cuda|.storage].<Type>Storage", IsStorageClass, false,
           GlobalPushes::kName, RefuseCall, nullptr),
    Family("torch[.cuda].<Type>Tensor", IsTensorClass, false,
           GlobalPushes::kName, CallLegacyTensorClass, &BuildLegacyTensor),
    Family("__torch__.<class>", IsScriptClass, true, GlobalPushes::kName,
           CallScriptClass, &BuildScriptObject),
};

// Python 2 module names (pickle's _compat_pickle.IMPORT_MAPPING, the part
// that matters here).
absl::string_view MapPython2Module(absl::string_view module) {
  if (module == "__builtin__") return "builtins";
  if (module == "copy_reg") return "copyreg";
  if (module == "UserDict") return "collections";
  if (module == "torch.tensor") return "torch._tensor";
  return module;
}

const TorchGlobal* FindRow(absl::string_view full, absl::string_view module,
                           absl::string_view name) {
  static const auto* const kExact = [] {
    auto* index =
        new absl::flat_hash_map<absl::string_view, const TorchGlobal*>;
    for (const TorchGlobal& row : kRows) {
      if (row.family == nullptr) index->emplace(row.name, &row);
    }
    return index;
  }();
  auto it = kExact->find(full);
  if (it != kExact->end()) return it->second;
  for (const TorchGlobal& row : kRows) {
    if (row.family != nullptr && row.family(module, name)) return &row;
  }
  return nullptr;
}

// The row of a value's dotted name ("torch.cuda.FloatTensor"): module and
// name split at the last dot.
const TorchGlobal* FindRowOfDottedName(absl::string_view full) {
  size_t dot = full.rfind('.');
  absl::string_view module = full.substr(0, dot);
  absl::string_view name =
      dot == absl::string_view::npos ? full : full.substr(dot + 1);
  return FindRow(full, module, name);
}

}  // namespace

absl::Span<const TorchGlobal> TorchGlobals() { return kRows; }

const TorchGlobal* FindTorchGlobal(absl::string_view module,
                                   absl::string_view name) {
  return FindRow(absl::StrCat(module, ".", name), module, name);
}

absl::StatusOr<PyValue*> LoadGlobal(GlobalContext& context,
                                    absl::string_view pickled_module,
                                    absl::string_view pickled_name,
                                    bool torchscript) {
  absl::string_view module = MapPython2Module(pickled_module);
  absl::string_view name =
      module == "builtins" && pickled_name == "unicode" ? "str" : pickled_name;
  std::string full = absl::StrCat(module, ".", name);
  const TorchGlobal* row = FindRow(full, module, name);
  if (row == nullptr || (row->torchscript_only && !torchscript)) {
    return Invalid(absl::StrCat("refusing global \"", full,
                                "\": not in the weights-only allowlist"));
  }
  switch (row->pushes) {
    case GlobalPushes::kDType: {
      ASSIGN_OR_RETURN(DType dtype, DTypeFromName(name));
      PyValue* v = context.NewValue(PyKind::kDType);
      v->dtype = dtype;
      v->s = std::move(full);
      return v;
    }
    case GlobalPushes::kName:
      break;
  }
  PyValue* v = context.NewValue(PyKind::kGlobal);
  v->s = std::move(full);
  return v;
}

absl::StatusOr<PyValue*> CallGlobal(GlobalContext& context,
                                    const PyValue* callable,
                                    const PyValue* args) {
  if (callable->kind != PyKind::kGlobal) {
    return Invalid(absl::StrCat("cannot call a ", PyTypeName(callable)));
  }
  if (args->kind != PyKind::kTuple && args->kind != PyKind::kList) {
    return Invalid(absl::StrCat("arguments of ", callable->s, " are a ",
                                PyTypeName(args), ", not a tuple"));
  }
  // A PyKind::kGlobal is an allowed global, or a layout _get_layout named.
  const TorchGlobal* row = FindRowOfDottedName(callable->s);
  if (row == nullptr) return RefuseCall(context, callable->s, args->items);
  return row->call(context, callable->s, args->items);
}

absl::Status BuildObject(GlobalContext& context, PyValue* object,
                         PyValue* state) {
  const TorchGlobal* row = FindRowOfDottedName(object->s);
  if (row == nullptr || row->build == nullptr) {
    return Invalid(
        absl::StrCat("BUILD on a ", PyTypeName(object), " is not allowed"));
  }
  return row->build(context, object, state);
}

}  // namespace weightd
