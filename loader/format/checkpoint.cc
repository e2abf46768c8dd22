#include "loader/format/checkpoint.h"

namespace weightd {

const char* CheckpointFormatName(CheckpointFormat format) {
  switch (format) {
    case CheckpointFormat::kTorchZip:
      return "torch-zip";
    case CheckpointFormat::kTorchLegacy:
      return "torch-legacy";
    case CheckpointFormat::kTorchScript:
      return "torchscript";
    case CheckpointFormat::kSafetensors:
      return "safetensors";
  }
  return "unknown";
}

int64_t TensorInfo::NumElements() const {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return 0;
    if (d != 0 && n > INT64_MAX / d)
      return INT64_MAX;  // saturate; readers
                         // refuse before this
    n *= d;
  }
  return n;
}

uint64_t TensorInfo::ExtentBytes() const {
  // Readers validate shapes/strides (non-negative, no overflow) before calling.
  uint64_t last = 0;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == 0) return 0;
    uint64_t s = i < stride.size() ? static_cast<uint64_t>(stride[i]) : 0;
    last += static_cast<uint64_t>(shape[i] - 1) * s;
  }
  return (static_cast<uint64_t>(storage_offset) + last + 1) * DTypeSize(dtype);
}

}  // namespace weightd
