#include "loader/format/storage_ref.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "loader/format/pickle_repr.h"

namespace weightd {
namespace {

absl::Status Invalid(absl::string_view what) {
  return absl::InvalidArgumentError(what);
}

// Storage classes (torch.FloatStorage, torch.cuda.HalfStorage,
// torch.UntypedStorage) or dtypes (torch.float32).
absl::Status ParseStorageType(const PyValue* type, StorageRefLayout layout,
                              StorageRef* ref) {
  if (type->kind == PyKind::kDType) {
    ref->dtype = type->dtype;
    return absl::OkStatus();
  }
  if (type->kind != PyKind::kGlobal) {
    return Invalid(absl::StrCat("storage type is a ", PyTypeName(type),
                                ", not a storage class"));
  }
  absl::string_view cls = type->s;
  size_t dot = cls.rfind('.');
  if (dot != absl::string_view::npos) cls = cls.substr(dot + 1);
  // torch's legacy loader types every storage; only archives hold untyped
  // ones.
  if (cls == "UntypedStorage" && layout == StorageRefLayout::kZip) {
    ref->dtype = DType::kUInt8;
    ref->untyped = true;
    return absl::OkStatus();
  }
  auto dtype = DTypeFromStorageClass(cls);
  if (!dtype.ok()) return dtype.status();
  ref->dtype = *dtype;
  return absl::OkStatus();
}

bool NonNegativeInt(const PyValue* v) {
  return v->kind == PyKind::kInt && v->i >= 0;
}

// view_metadata: None, or (view_key, offset, numel).
absl::Status ParseView(const PyValue* view, StorageRef* ref) {
  if (view->kind == PyKind::kNone) return absl::OkStatus();
  StorageRefView parsed;
  if (view->kind != PyKind::kTuple || view->items.size() != 3 ||
      !StorageKeyText(view->items[0], &parsed.key) ||
      !NonNegativeInt(view->items[1]) || !NonNegativeInt(view->items[2])) {
    return Invalid("bad storage view metadata");
  }
  parsed.offset = static_cast<uint64_t>(view->items[1]->i);
  parsed.numel = static_cast<uint64_t>(view->items[2]->i);
  ref->view = std::move(parsed);
  return absl::OkStatus();
}

}  // namespace

bool StorageKeyText(const PyValue* v, std::string* out) {
  if (v->kind == PyKind::kStr || v->kind == PyKind::kBytes) {
    *out = v->s;
    return true;
  }
  if (v->kind == PyKind::kInt) {
    *out = absl::StrCat(v->i);
    return true;
  }
  return false;
}

absl::StatusOr<StorageRef> ParseStorageRef(const PyValue* pid,
                                           StorageRefLayout layout) {
  const bool legacy = layout == StorageRefLayout::kLegacy;
  const size_t fields = legacy ? 6 : 5;
  if (pid->kind != PyKind::kTuple || pid->items.empty()) {
    return Invalid(
        absl::StrCat("persistent id is a ", PyTypeName(pid),
                     ", expected ('storage', type, key, location, numel",
                     legacy ? ", view)" : ")"));
  }
  const PyValue* type_name = pid->items[0];
  const bool text =
      type_name->kind == PyKind::kStr || type_name->kind == PyKind::kBytes;
  if (text && type_name->s == "module") {
    return Invalid(
        "unsupported: pickled nn.Module (legacy 'module' persistent id); "
        "save a state_dict instead");
  }
  if (!text || type_name->s != "storage") {
    return Invalid(absl::StrCat("unsupported persistent id type \"",
                                PyStr(type_name), "\""));
  }
  if (pid->items.size() != fields) {
    return Invalid(absl::StrCat("storage persistent id has ", pid->items.size(),
                                " fields, not ", fields));
  }
  StorageRef ref;
  if (!StorageKeyText(pid->items[2], &ref.key)) {
    return Invalid("storage key is not a string");
  }
  const PyValue* location = pid->items[3];
  if (location->kind == PyKind::kDevice) {
    ref.location = location->s;
  } else if (!StorageKeyText(location, &ref.location)) {
    return Invalid("storage location is not a string");
  }
  const PyValue* numel = pid->items[4];
  if (!NonNegativeInt(numel)) {
    return Invalid("storage numel is not a non-negative int");
  }
  ref.numel = static_cast<uint64_t>(numel->i);
  absl::Status type = ParseStorageType(pid->items[1], layout, &ref);
  if (!type.ok()) return type;
  if (__builtin_mul_overflow(ref.numel,
                             static_cast<uint64_t>(DTypeSize(ref.dtype)),
                             &ref.num_bytes)) {
    return Invalid(absl::StrCat("storage \"", ref.key,
                                "\" size overflows (numel ", ref.numel, ")"));
  }
  if (legacy) {
    absl::Status view = ParseView(pid->items[5], &ref);
    if (!view.ok()) return view;
  }
  return ref;
}

}  // namespace weightd
