// A tensor's elements as bytes: gathered in row-major order, little-endian.
#ifndef WEIGHTD_LOADER_FORMAT_TENSOR_BYTES_H_
#define WEIGHTD_LOADER_FORMAT_TENSOR_BYTES_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "loader/format/checkpoint.h"

namespace weightd {

// Checks the view (shape, stride, offset) lies inside `storage_len` bytes.
absl::Status CheckTensorView(const TensorInfo& tensor, uint64_t storage_len);

// Calls `sink` with consecutive chunks that together are the tensor's
// elements in row-major order, little-endian (big-endian storages swapped per
// element; complex numbers per component). Zero-copy for contiguous
// little-endian tensors.
absl::Status ForEachTensorChunk(
    const TensorInfo& tensor, const uint8_t* storage_bytes,
    uint64_t storage_len, ByteOrder order,
    const std::function<void(absl::string_view)>& sink);

// Gathers the elements into `out` (resized to numel * element size).
absl::Status GatherTensorBytes(const TensorInfo& tensor,
                               const uint8_t* storage_bytes,
                               uint64_t storage_len, ByteOrder order,
                               std::string* out);

// sha256 (lowercase hex) over the gathered elements. Returns "" when the view
// does not fit the storage.
std::string TensorSha256Hex(const TensorInfo& tensor,
                            const uint8_t* storage_bytes, uint64_t storage_len,
                            ByteOrder order);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_FORMAT_TENSOR_BYTES_H_
