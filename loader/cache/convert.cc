#include "loader/cache/convert.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "loader/cache/cast_kernels.h"

namespace weightd {
namespace {

float HalfToFloat(uint16_t half) {
  uint32_t sign = static_cast<uint32_t>(half & 0x8000) << 16;
  uint32_t exponent = (half >> 10) & 0x1f;
  uint32_t mantissa = half & 0x3ff;
  uint32_t bits;
  if (exponent == 0) {
    if (mantissa == 0) {
      bits = sign;
    } else {  // subnormal: normalize
      int shift = 0;
      while ((mantissa & 0x400) == 0) {
        mantissa <<= 1;
        ++shift;
      }
      mantissa &= 0x3ff;
      bits = sign | static_cast<uint32_t>(127 - 15 - shift + 1) << 23 |
             mantissa << 13;
    }
  } else if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | mantissa << 13;
  } else {
    bits = sign | (exponent + 127 - 15) << 23 | mantissa << 13;
  }
  float value;
  std::memcpy(&value, &bits, 4);
  return value;
}

uint16_t FloatToHalf(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  return FloatBitsToHalf(bits);
}

uint16_t FloatToBFloat16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  return FloatBitsToBFloat16(bits);
}

float BFloat16ToFloat(uint16_t value) {
  uint32_t bits = static_cast<uint32_t>(value) << 16;
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

template <typename T>
T LoadElement(const uint8_t* src, ByteOrder order) {
  uint8_t bytes[sizeof(T)];
  std::memcpy(bytes, src, sizeof(T));
  if (order == ByteOrder::kBig) std::reverse(bytes, bytes + sizeof(T));
  T value;
  std::memcpy(&value, bytes, sizeof(T));
  return value;
}

// Elements are widened to double; casts to float16/bfloat16 narrow through
// float32, which can double-round a float64 tie (float64 sources are rare in
// checkpoints cast on load).
double ReadAsDouble(const uint8_t* src, DType from, ByteOrder order) {
  switch (from) {
    case DType::kFloat64:
      return LoadElement<double>(src, order);
    case DType::kFloat32:
      return LoadElement<float>(src, order);
    case DType::kFloat16:
      return HalfToFloat(LoadElement<uint16_t>(src, order));
    default:  // kBFloat16
      return BFloat16ToFloat(LoadElement<uint16_t>(src, order));
  }
}

}  // namespace

size_t SwapUnit(DType dtype) {
  switch (dtype) {
    case DType::kComplex32:
      return 2;
    case DType::kComplex64:
      return 4;
    case DType::kComplex128:
      return 8;
    default:
      return DTypeSize(dtype);
  }
}

void SwapBytesInPlace(uint8_t* data, size_t size, size_t unit) {
  SwapBytesCopy(data, data, size, unit);
}

bool IsCastableFloat(DType dtype) {
  return dtype == DType::kFloat32 || dtype == DType::kFloat64 ||
         dtype == DType::kFloat16 || dtype == DType::kBFloat16;
}

namespace {

// Big-endian float32 is swapped into a block this big on the stack, then
// narrowed by the same kernels.
constexpr size_t kSwapBlockElements = 2048;

void NarrowFloat32(const uint8_t* src, ByteOrder order, size_t count,
                   uint8_t* dst, DType to) {
  auto narrow = to == DType::kBFloat16 ? Float32ToBFloat16 : Float32ToFloat16;
  if (order == ByteOrder::kLittle) {
    narrow(src, count, dst, BestCastIsa());
    return;
  }
  alignas(32) uint8_t block[kSwapBlockElements * 4];
  for (size_t done = 0; done < count;) {
    const size_t n = std::min(kSwapBlockElements, count - done);
    SwapBytesCopy(src + 4 * done, block, 4 * n, 4);
    narrow(block, n, dst + 2 * done, BestCastIsa());
    done += n;
  }
}

}  // namespace

absl::Status CastElements(const uint8_t* src, DType from, ByteOrder order,
                          size_t count, uint8_t* dst, DType to) {
  if (!IsCastableFloat(from) || !IsCastableFloat(to) || to == DType::kFloat64) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot cast ", DTypeName(from), " to ", DTypeName(to)));
  }
  const size_t in_size = DTypeSize(from);
  const size_t out_size = DTypeSize(to);
  if (from == DType::kFloat32 &&
      (to == DType::kBFloat16 || to == DType::kFloat16)) {
    NarrowFloat32(src, order, count, dst, to);
    return absl::OkStatus();
  }
  if (from == to) {
    SwapBytesCopy(src, dst, count * in_size,
                  order == ByteOrder::kBig ? SwapUnit(from) : 1);
    return absl::OkStatus();
  }
  for (size_t i = 0; i < count; ++i) {
    const uint8_t* in = src + i * in_size;
    uint8_t* out = dst + i * out_size;
    float value = static_cast<float>(ReadAsDouble(in, from, order));
    uint16_t narrow;
    switch (to) {
      case DType::kFloat32:
        std::memcpy(out, &value, 4);
        break;
      case DType::kFloat16:
        narrow = FloatToHalf(value);
        std::memcpy(out, &narrow, 2);
        break;
      default:  // kBFloat16
        narrow = FloatToBFloat16(value);
        std::memcpy(out, &narrow, 2);
        break;
    }
  }
  return absl::OkStatus();
}

uint64_t PlacedStorageBytes(const StorageInfo& storage, DType placed) {
  if (placed == storage.dtype) return storage.num_bytes;
  return storage.num_bytes / DTypeSize(storage.dtype) * DTypeSize(placed);
}

bool PlacementChangesBytes(const StorageInfo& storage, DType placed) {
  return placed != storage.dtype || storage.byte_order == ByteOrder::kBig ||
         storage.inflated != nullptr;
}

const uint8_t* StorageSourceBytes(const StorageInfo& storage,
                                  const uint8_t* file_data) {
  if (storage.inflated) {
    return reinterpret_cast<const uint8_t*>(storage.inflated->data());
  }
  return file_data + storage.file_offset;
}

absl::Status ConvertStorageElements(const StorageInfo& storage,
                                    const uint8_t* source, DType placed,
                                    size_t first, size_t count, uint8_t* out) {
  const size_t in_size = DTypeSize(storage.dtype);
  const uint8_t* in = source + first * in_size;
  if (placed != storage.dtype) {
    return CastElements(in, storage.dtype, storage.byte_order, count, out,
                        placed);
  }
  // One pass: the swap is the copy.
  SwapBytesCopy(
      in, out, count * in_size,
      storage.byte_order == ByteOrder::kBig ? SwapUnit(storage.dtype) : 1);
  return absl::OkStatus();
}

}  // namespace weightd
