// Byte changes a placement may need: byte-swapping big-endian storages and
// casting floating-point storages on load (float32/float64/float16/bfloat16 to
// bfloat16/float16/float32). The one place that knows how a storage's bytes
// become its placed bytes.
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

// The bytes `storage` holds once placed as `placed` (a cast changes the
// element size).
uint64_t PlacedStorageBytes(const StorageInfo& storage, DType placed);

// Whether placing `storage` as `placed` changes its bytes (a cast, a
// big-endian file, a compressed record), so no zero-copy view of the file can
// serve it.
bool PlacementChangesBytes(const StorageInfo& storage, DType placed);

// Where the storage's own bytes are: in the mapped file at its offset, or its
// inflated copy.
const uint8_t* StorageSourceBytes(const StorageInfo& storage,
                                  const uint8_t* file_data);

// Writes elements [first, first + count) of the storage whose bytes are at
// `source` as placed (`placed` dtype, little-endian) to `out`.
absl::Status ConvertStorageElements(const StorageInfo& storage,
                                    const uint8_t* source, DType placed,
                                    size_t first, size_t count, uint8_t* out);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_CACHE_CONVERT_H_
