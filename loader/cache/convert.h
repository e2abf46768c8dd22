// Byte changes a placement may need: byte-swapping big-endian storages and
// casting floating-point storages on load (float32/float64/float16/bfloat16 to
// bfloat16/float16/float32).
#ifndef WEIGHTD_LOADER_CACHE_CONVERT_H_
#define WEIGHTD_LOADER_CACHE_CONVERT_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "loader/format/checkpoint.h"
#include "loader/format/dtype.h"

namespace weightd {

// Bytes swapped per element of `dtype` (complex types swap each half). 1 when
// nothing swaps.
size_t SwapUnit(DType dtype);

// Reverses each `unit`-byte group in place.
void SwapBytesInPlace(uint8_t* data, size_t size, size_t unit);

bool IsCastableFloat(DType dtype);

// Converts `count` elements of `from` (in `order`) into `to`, little-endian,
// rounding to nearest even. Both must be IsCastableFloat.
absl::Status CastElements(const uint8_t* src, DType from, ByteOrder order,
                          size_t count, uint8_t* dst, DType to);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_CACHE_CONVERT_H_
