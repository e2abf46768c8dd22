// The hot loops of convert.h: float32 to bfloat16 / float16 and byte swaps,
// each in a portable scalar form and, where the CPU has AVX2 (and F16C for
// float16), an explicit vector form chosen at run time. Both forms give the
// same bytes for every input (convert_test checks them against each other).
//
// Rounding is to nearest even. A NaN stays a quiet NaN with its sign:
// bfloat16 keeps the top payload bits and sets the quiet bit (0x40); float16
// becomes sign | 0x7e00, as torch does. float16 overflow is inf, subnormal
// results are rounded, not flushed.
#ifndef WEIGHTD_LOADER_CACHE_CAST_KERNELS_H_
#define WEIGHTD_LOADER_CACHE_CAST_KERNELS_H_

#include <cstddef>
#include <cstdint>

namespace weightd {

enum class CastIsa { kScalar, kAvx2 };

// The fastest form this CPU runs (checked once).
CastIsa BestCastIsa();
const char* CastIsaName(CastIsa isa);

// `count` little-endian float32 at `src` (any alignment) to `count` 16-bit
// values at `dst`. An `isa` the CPU lacks runs the scalar form.
void Float32ToBFloat16(const uint8_t* src, size_t count, uint8_t* dst,
                       CastIsa isa = BestCastIsa());
void Float32ToFloat16(const uint8_t* src, size_t count, uint8_t* dst,
                      CastIsa isa = BestCastIsa());

// Copies `size` bytes from `src` to `dst` reversing each `unit`-byte group
// (unit 1: a plain copy). A trailing partial group is copied unswapped.
// `src == dst` swaps in place; other overlaps are not allowed.
void SwapBytesCopy(const uint8_t* src, uint8_t* dst, size_t size, size_t unit,
                   CastIsa isa = BestCastIsa());

// The scalar forms of one element, shared with convert.cc's generic paths.
uint16_t FloatBitsToBFloat16(uint32_t bits);
uint16_t FloatBitsToHalf(uint32_t bits);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_CACHE_CAST_KERNELS_H_
