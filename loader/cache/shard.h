// Tensor-parallel shard specs: rank r of a group of W takes, for each tensor
// whose name matches a rule, exactly t.narrow(dim, r * n / W, n / W); the
// first matching rule wins and unmatched tensors are whole (replicated). Pure
// functions over names and views; load_plan decides where the slices go.
#ifndef WEIGHTD_LOADER_CACHE_SHARD_H_
#define WEIGHTD_LOADER_CACHE_SHARD_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "loader/format/checkpoint.h"

namespace weightd {

// Bounds on what a request may ask for.
inline constexpr size_t kMaxShardRules = 1024;
inline constexpr size_t kMaxShardPatternLength = 256;
inline constexpr int kMaxShardWorldSize = 4096;

// What a request asks for. world_size 0: no sharding (then nothing else may
// be set).
struct ShardSpec {
  int rank = 0;
  int world_size = 0;
  // (glob over the tensor name, dim), in order: `*` any run of characters
  // (dots included), `?` one character. Dims may be negative (from the end).
  std::vector<std::pair<std::string, int>> rules;
  // A built-in rule set (BuiltinShardRules); its rules come after `rules`.
  std::string rule_set;

  bool enabled() const { return world_size != 0; }
};

// The rules of a built-in set by name ("llama": Llama-style column-parallel
// q/k/v/gate/up projections and vocab-parallel embeddings and LM head on dim
// 0, row-parallel o/down projections on dim 1). NOT_FOUND for another name.
absl::StatusOr<std::vector<std::pair<std::string, int>>> BuiltinShardRules(
    absl::string_view name);

// A checked spec with the rule set expanded into `rules`.
struct CanonicalShard {
  int rank = 0;
  int world_size = 0;  // 0: no sharding
  std::vector<std::pair<std::string, int>> rules;

  bool enabled() const { return world_size > 0; }
  // " tp{R/W rules:HASH}" (a digest of the expanded rules), or "" when not
  // sharded: the cache key's shard part.
  std::string KeyPart() const;
};

// INVALID_ARGUMENT (naming `path`) for a rank outside [0, W), a world size
// outside [1, kMaxShardWorldSize] when anything is set, too many or too long
// patterns, an empty pattern or an unknown rule set.
absl::StatusOr<CanonicalShard> CanonicalShardSpec(const ShardSpec& spec,
                                                  absl::string_view path);

// Whether `name` matches `pattern` (`*`, `?`; no other metacharacters).
// Linear in name and pattern per backtrack, never recursive; `*budget`, when
// given, is decremented by the steps taken and matching stops (false) at 0.
bool GlobMatch(absl::string_view pattern, absl::string_view name,
               uint64_t* budget = nullptr);

// Where rank r's part of one tensor is.
struct TensorSlice {
  int dim = 0;  // normalised (non-negative)
  int64_t start = 0;
  int64_t length = 0;
  // The slice as a view of the tensor's storage: the same strides, the
  // dimension narrowed and the storage offset moved.
  TensorInfo view;
};

// The slice of `tensor` for `shard`, or nullopt when no rule matches (the
// tensor is whole). INVALID_ARGUMENT naming `file`, the tensor, its shape and
// the dim when the dim is past the tensor's rank or its size does not divide
// by the world size; also when the rules cost more than `*budget` steps.
absl::StatusOr<std::optional<TensorSlice>> SliceFor(const CanonicalShard& shard,
                                                    const TensorInfo& tensor,
                                                    absl::string_view file,
                                                    uint64_t* budget);

// Matching steps one plan may spend on shard rules: a hostile pattern costs
// a request about 0.1 s of a core; 1024 exact-name rules over 1,000 tensors
// take a third of it.
inline constexpr uint64_t kShardMatchBudget = uint64_t{1} << 26;

// Whether the view's elements, in row-major order, are one run of its
// storage (so a slice of it is one file range).
bool IsRowMajorContiguous(const TensorInfo& view);

// Calls `run(storage_element, count, out_element)` for the view's elements
// [first, first + count) in row-major order, in runs contiguous in the
// storage (storage_element is in elements from the storage's start). Stops at
// the first error.
absl::Status ForEachStorageRun(
    const TensorInfo& view, uint64_t first, uint64_t count,
    absl::FunctionRef<absl::Status(uint64_t storage_element, uint64_t count,
                                   uint64_t out_element)>
        run);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_CACHE_SHARD_H_
