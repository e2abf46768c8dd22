// A tensor's elements as bytes: gathered in row-major order, little-endian.
#ifndef WEIGHTD_LOADER_FORMAT_TENSOR_BYTES_H_
#define WEIGHTD_LOADER_FORMAT_TENSOR_BYTES_H_

#include <cstdint>
#include <functional>
#include <string>
#include <tuple>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "loader/format/checkpoint.h"

namespace weightd {

// Checks the view (shape, stride, offset) lies inside `storage_len` bytes.
absl::Status CheckTensorView(const TensorInfo& tensor, uint64_t storage_len);

// How many bytes a view's gathered elements may exceed the storage bytes they
// are read from. A view that does not overlap itself never exceeds its
// storage; stride-0 (expand) and overlapping (as_strided) views can claim any
// size over a few bytes, e.g. torch.ones(1).expand(2**40) is a 4-byte storage
// claiming 4 TiB. Small expansions (position ids, broadcast masks) stay
// readable.
inline constexpr uint64_t kMaxViewExpansionBytes = uint64_t{4} << 20;

// numel x element size, refusing overflow.
absl::StatusOr<uint64_t> TensorLogicalBytes(const TensorInfo& tensor);

// The bound on the work of producing one tensor's bytes: refuses, naming the
// tensor, its logical byte size and the storage's byte size, a view whose
// gathered bytes exceed `storage_len` by more than kMaxViewExpansionBytes.
// ForEachTensorChunk (and so GatherTensorBytes and TensorSha256Hex) calls it,
// so every producer of tensor bytes (weightctl inspect --hash, the daemon's
// ReadTensors, the C++ client) is bounded by what the file holds.
absl::Status CheckViewWorkBounded(const TensorInfo& tensor,
                                  uint64_t storage_len);

// Calls `sink` with consecutive chunks that together are the tensor's
// elements in row-major order, little-endian (big-endian storages swapped per
// element; complex numbers per component). Zero-copy for contiguous
// little-endian tensors. Refuses views outside the storage and views that
// fail CheckViewWorkBounded.
absl::Status ForEachTensorChunk(
    const TensorInfo& tensor, const uint8_t* storage_bytes,
    uint64_t storage_len, ByteOrder order,
    const std::function<void(absl::string_view)>& sink);

// Gathers the elements into `out` (resized to numel * element size).
absl::Status GatherTensorBytes(const TensorInfo& tensor,
                               const uint8_t* storage_bytes,
                               uint64_t storage_len, ByteOrder order,
                               std::string* out);

// sha256 (lowercase hex) over the gathered elements.
absl::StatusOr<std::string> TensorSha256(const TensorInfo& tensor,
                                         const uint8_t* storage_bytes,
                                         uint64_t storage_len, ByteOrder order);

// TensorSha256, or "" when the view is refused.
std::string TensorSha256Hex(const TensorInfo& tensor,
                            const uint8_t* storage_bytes, uint64_t storage_len,
                            ByteOrder order);

// Hashes the tensors of one checkpoint with work bounded by what the file
// holds, however many views it declares: identical views (same storage,
// dtype, offset, shape and stride) are hashed once, and the bytes hashed in
// all may not exceed a budget of kBudgetMultiple x the bytes the checkpoint
// holds + kBudgetBaseBytes (8,192 distinct views of one storage are refused,
// not hashed for hours).
class CheckpointHasher {
 public:
  static constexpr uint64_t kBudgetMultiple = 8;
  static constexpr uint64_t kBudgetBaseBytes = uint64_t{16} << 20;

  // `held_bytes`: what the checkpoint really holds, see HeldBytes.
  explicit CheckpointHasher(uint64_t held_bytes);

  // The file's size plus the inflated bytes of its compressed storages
  // (which are in memory, not in the file).
  static uint64_t HeldBytes(const Checkpoint& checkpoint, uint64_t file_bytes);

  // sha256 of `tensor`, whose storage is `storage` with bytes at
  // `storage_bytes`.
  absl::StatusOr<std::string> Sha256Hex(const TensorInfo& tensor,
                                        const StorageInfo& storage,
                                        const uint8_t* storage_bytes);

  uint64_t budget_bytes() const { return budget_bytes_; }
  uint64_t hashed_bytes() const { return hashed_bytes_; }

 private:
  using ViewKey = std::tuple<size_t, DType, int64_t, std::vector<int64_t>,
                             std::vector<int64_t>>;
  uint64_t held_bytes_;
  uint64_t budget_bytes_;
  uint64_t hashed_bytes_ = 0;
  absl::flat_hash_map<ViewKey, std::string> hashes_;
};

}  // namespace weightd

#endif  // WEIGHTD_LOADER_FORMAT_TENSOR_BYTES_H_
