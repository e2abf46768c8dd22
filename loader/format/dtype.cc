#include "loader/format/dtype.h"

#include "absl/strings/str_cat.h"

namespace weightd {
namespace {

struct DTypeRow {
  DType dtype;
  const char* name;
  size_t size;
  const char* storage_class;  // nullptr: no typed storage class
  const char* safetensors;    // nullptr: none
};

constexpr DTypeRow kRows[] = {
    {DType::kUInt8, "uint8", 1, "ByteStorage", "U8"},
    {DType::kInt8, "int8", 1, "CharStorage", "I8"},
    {DType::kInt16, "int16", 2, "ShortStorage", "I16"},
    {DType::kInt32, "int32", 4, "IntStorage", "I32"},
    {DType::kInt64, "int64", 8, "LongStorage", "I64"},
    {DType::kUInt16, "uint16", 2, nullptr, "U16"},
    {DType::kUInt32, "uint32", 4, nullptr, "U32"},
    {DType::kUInt64, "uint64", 8, nullptr, "U64"},
    {DType::kFloat16, "float16", 2, "HalfStorage", "F16"},
    {DType::kBFloat16, "bfloat16", 2, "BFloat16Storage", "BF16"},
    {DType::kFloat32, "float32", 4, "FloatStorage", "F32"},
    {DType::kFloat64, "float64", 8, "DoubleStorage", "F64"},
    {DType::kComplex32, "complex32", 4, "ComplexHalfStorage", nullptr},
    {DType::kComplex64, "complex64", 8, "ComplexFloatStorage", "C64"},
    {DType::kComplex128, "complex128", 16, "ComplexDoubleStorage", nullptr},
    {DType::kBool, "bool", 1, "BoolStorage", "BOOL"},
    {DType::kFloat8E4M3FN, "float8_e4m3fn", 1, nullptr, "F8_E4M3"},
    {DType::kFloat8E5M2, "float8_e5m2", 1, nullptr, "F8_E5M2"},
    {DType::kFloat8E4M3FNUZ, "float8_e4m3fnuz", 1, nullptr, nullptr},
    {DType::kFloat8E5M2FNUZ, "float8_e5m2fnuz", 1, nullptr, nullptr},
    {DType::kQInt8, "qint8", 1, "QInt8Storage", nullptr},
    {DType::kQUInt8, "quint8", 1, "QUInt8Storage", nullptr},
    {DType::kQInt32, "qint32", 4, "QInt32Storage", nullptr},
    {DType::kQUInt4x2, "quint4x2", 1, "QUInt4x2Storage", nullptr},
    {DType::kQUInt2x4, "quint2x4", 1, "QUInt2x4Storage", nullptr},
};

// Aliases torch accepts as attribute names (torch.float, torch.half, ...).
struct Alias {
  const char* name;
  DType dtype;
};
constexpr Alias kAliases[] = {
    {"float", DType::kFloat32},    {"double", DType::kFloat64},
    {"half", DType::kFloat16},     {"long", DType::kInt64},
    {"int", DType::kInt32},        {"short", DType::kInt16},
    {"cfloat", DType::kComplex64}, {"cdouble", DType::kComplex128},
    {"chalf", DType::kComplex32},
};

const DTypeRow* Row(DType dtype) {
  for (const DTypeRow& r : kRows) {
    if (r.dtype == dtype) return &r;
  }
  return nullptr;
}

}  // namespace

absl::string_view DTypeName(DType dtype) {
  const DTypeRow* r = Row(dtype);
  return r ? r->name : "unknown";
}

absl::StatusOr<DType> DTypeFromName(absl::string_view name) {
  if (name.substr(0, 6) == "torch.") name.remove_prefix(6);
  for (const DTypeRow& r : kRows) {
    if (name == r.name) return r.dtype;
  }
  for (const Alias& a : kAliases) {
    if (name == a.name) return a.dtype;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown dtype \"", name, "\""));
}

size_t DTypeSize(DType dtype) {
  const DTypeRow* r = Row(dtype);
  return r ? r->size : 1;
}

bool DTypeIsQuantized(DType dtype) {
  switch (dtype) {
    case DType::kQInt8:
    case DType::kQUInt8:
    case DType::kQInt32:
    case DType::kQUInt4x2:
    case DType::kQUInt2x4:
      return true;
    default:
      return false;
  }
}

absl::StatusOr<DType> DTypeFromStorageClass(absl::string_view name) {
  for (const DTypeRow& r : kRows) {
    if (r.storage_class != nullptr && name == r.storage_class) return r.dtype;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown storage class \"", name, "\""));
}

absl::StatusOr<DType> DTypeFromSafetensorsName(absl::string_view name) {
  for (const DTypeRow& r : kRows) {
    if (r.safetensors != nullptr && name == r.safetensors) return r.dtype;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unsupported safetensors dtype \"", name, "\""));
}

absl::string_view DTypeSafetensorsName(DType dtype) {
  const DTypeRow* r = Row(dtype);
  return (r && r->safetensors) ? r->safetensors : "";
}

}  // namespace weightd
