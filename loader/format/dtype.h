// PyTorch scalar types, named as PyTorch names them without the `torch.`
// prefix.
#ifndef WEIGHTD_LOADER_FORMAT_DTYPE_H_
#define WEIGHTD_LOADER_FORMAT_DTYPE_H_

#include <cstddef>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace weightd {

enum class DType {
  kUInt8,
  kInt8,
  kInt16,
  kInt32,
  kInt64,
  kUInt16,
  kUInt32,
  kUInt64,
  kFloat16,
  kBFloat16,
  kFloat32,
  kFloat64,
  kComplex32,
  kComplex64,
  kComplex128,
  kBool,
  kFloat8E4M3FN,
  kFloat8E5M2,
  kFloat8E4M3FNUZ,
  kFloat8E5M2FNUZ,
  kQInt8,
  kQUInt8,
  kQInt32,
  kQUInt4x2,
  kQUInt2x4,
};

// "float32", "bfloat16", "float8_e4m3fn", ...
absl::string_view DTypeName(DType dtype);
absl::StatusOr<DType> DTypeFromName(absl::string_view name);
// Bytes per element (1 for the packed sub-byte quantized kinds, as torch
// reports).
size_t DTypeSize(DType dtype);

// True for the quantized kinds (qint8, quint8, qint32, quint4x2, quint2x4).
bool DTypeIsQuantized(DType dtype);
// torch storage class name ("FloatStorage", "BFloat16Storage", ...) to dtype.
// "UntypedStorage" is not a typed storage and is refused here.
absl::StatusOr<DType> DTypeFromStorageClass(absl::string_view name);
// safetensors dtype strings: "F32", "BF16", "F8_E4M3", "BOOL", "U16", ...
absl::StatusOr<DType> DTypeFromSafetensorsName(absl::string_view name);
// The safetensors name of a dtype, or "" when safetensors has none.
absl::string_view DTypeSafetensorsName(DType dtype);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_FORMAT_DTYPE_H_
