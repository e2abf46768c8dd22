#include "loader/cache/shard.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "loader/common/sha256.h"
#include "loader/common/status_macros.h"

namespace weightd {
namespace {

std::string ShapeText(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

}  // namespace

absl::StatusOr<std::vector<std::pair<std::string, int>>> BuiltinShardRules(
    absl::string_view name) {
  if (name == "llama") {
    // Megatron/vLLM layout: column-parallel layers split their output rows
    // (dim 0, biases too), row-parallel layers their input columns (dim 1);
    // embeddings and the LM head are vocab-parallel (dim 0).
    return std::vector<std::pair<std::string, int>>{
        {"*.q_proj.weight", 0},      {"*.k_proj.weight", 0},
        {"*.v_proj.weight", 0},      {"*.q_proj.bias", 0},
        {"*.k_proj.bias", 0},        {"*.v_proj.bias", 0},
        {"*.gate_proj.weight", 0},   {"*.up_proj.weight", 0},
        {"*.o_proj.weight", 1},      {"*.down_proj.weight", 1},
        {"*embed_tokens.weight", 0}, {"lm_head.weight", 0},
    };
  }
  return absl::NotFoundError(
      absl::StrCat("no built-in shard rule set \"", name, "\" (known: llama)"));
}

std::string CanonicalShard::KeyPart() const {
  if (!enabled()) return "";
  // Length-prefixed, so no two rule lists encode alike.
  std::string encoded;
  for (const auto& [pattern, dim] : rules)
    absl::StrAppend(&encoded, pattern.size(), ":", pattern, "=", dim, ";");
  return absl::StrCat(" tp{", rank, "/", world_size,
                      " rules:", Sha256Hex(encoded).substr(0, 16), "}");
}

absl::StatusOr<CanonicalShard> CanonicalShardSpec(const ShardSpec& spec,
                                                  absl::string_view path) {
  CanonicalShard shard;
  if (!spec.enabled()) {
    if (spec.rank != 0 || !spec.rules.empty() || !spec.rule_set.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": shard spec has world size 0 (give 1 or more)"));
    }
    return shard;
  }
  if (spec.world_size < 1 || spec.world_size > kMaxShardWorldSize) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": shard world size ", spec.world_size,
                     " is not in [1, ", kMaxShardWorldSize, "]"));
  }
  if (spec.rank < 0 || spec.rank >= spec.world_size) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": shard rank ",
                                                   spec.rank, " is not in [0, ",
                                                   spec.world_size, ")"));
  }
  shard.rank = spec.rank;
  shard.world_size = spec.world_size;
  shard.rules = spec.rules;
  if (!spec.rule_set.empty()) {
    absl::StatusOr<std::vector<std::pair<std::string, int>>> set =
        BuiltinShardRules(spec.rule_set);
    if (!set.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": ", set.status().message()));
    }
    shard.rules.insert(shard.rules.end(), set->begin(), set->end());
  }
  if (shard.rules.size() > kMaxShardRules) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", shard.rules.size(), " shard rules (at most ",
                     kMaxShardRules, ")"));
  }
  for (const auto& [pattern, dim] : shard.rules) {
    if (pattern.empty() || pattern.size() > kMaxShardPatternLength) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": a shard rule pattern must have 1 to ",
          kMaxShardPatternLength, " characters, got ", pattern.size()));
    }
  }
  return shard;
}

bool GlobMatch(absl::string_view pattern, absl::string_view name,
               uint64_t* budget) {
  // The classic two-pointer matcher: on a mismatch, go back to the last `*`
  // and let it eat one more character. At most |name| backtracks of at most
  // |pattern| steps each.
  size_t p = 0, n = 0;
  size_t star = absl::string_view::npos, star_n = 0;
  while (n < name.size()) {
    if (budget != nullptr) {
      if (*budget == 0) return false;
      --*budget;
    }
    if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == name[n])) {
      ++p;
      ++n;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      star_n = n;
    } else if (star != absl::string_view::npos) {
      p = star + 1;
      n = ++star_n;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

absl::StatusOr<std::optional<TensorSlice>> SliceFor(const CanonicalShard& shard,
                                                    const TensorInfo& tensor,
                                                    absl::string_view file,
                                                    uint64_t* budget) {
  if (!shard.enabled()) return std::nullopt;
  for (const auto& [pattern, rule_dim] : shard.rules) {
    if (!GlobMatch(pattern, tensor.name, budget)) {
      if (budget != nullptr && *budget == 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            file,
            ": the shard rules take too long to match (simplify the "
            "patterns)"));
      }
      continue;
    }
    const int dims = static_cast<int>(tensor.shape.size());
    const int dim = rule_dim < 0 ? rule_dim + dims : rule_dim;
    if (dim < 0 || dim >= dims) {
      return absl::InvalidArgumentError(
          absl::StrCat(file, ": shard rule \"", pattern, "\" splits tensor ",
                       tensor.name, " of shape ", ShapeText(tensor.shape),
                       " on dim ", rule_dim, ", past its ", dims, " dim(s)"));
    }
    const int64_t size = tensor.shape[dim];
    if (size % shard.world_size != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          file, ": tensor ", tensor.name, " of shape ", ShapeText(tensor.shape),
          " does not split evenly on dim ", dim, " (size ", size, ") into ",
          shard.world_size, " parts"));
    }
    TensorSlice slice;
    slice.dim = dim;
    slice.length = size / shard.world_size;
    slice.start = shard.rank * slice.length;
    slice.view = tensor;
    slice.view.shape[dim] = slice.length;
    if (slice.length > 0)
      slice.view.storage_offset += slice.start * tensor.stride[dim];
    return slice;
  }
  return std::nullopt;
}

bool IsRowMajorContiguous(const TensorInfo& view) {
  int64_t expected = 1;
  for (size_t d = view.shape.size(); d-- > 0;) {
    if (view.shape[d] == 0) return true;
    if (view.shape[d] != 1 && view.stride[d] != expected) return false;
    expected *= view.shape[d];
  }
  return true;
}

absl::Status ForEachStorageRun(
    const TensorInfo& view, uint64_t first, uint64_t count,
    absl::FunctionRef<absl::Status(uint64_t storage_element, uint64_t count,
                                   uint64_t out_element)>
        run) {
  if (count == 0) return absl::OkStatus();
  const size_t dims = view.shape.size();
  if (dims != view.stride.size()) {
    return absl::InternalError(
        absl::StrCat("tensor ", view.name, " has mismatched shape/stride"));
  }
  if (dims == 0) return run(view.storage_offset, 1, 0);
  if (IsRowMajorContiguous(view))
    return run(view.storage_offset + first, count, 0);
  std::vector<int64_t> index(dims);
  uint64_t rest = first;
  for (size_t d = dims; d-- > 0;) {
    index[d] = static_cast<int64_t>(rest % view.shape[d]);
    rest /= view.shape[d];
  }
  const size_t inner = dims - 1;
  const bool inner_contiguous = view.stride[inner] == 1;
  uint64_t done = 0;
  while (done < count) {
    int64_t position = view.storage_offset;
    for (size_t d = 0; d < dims; ++d) position += index[d] * view.stride[d];
    const uint64_t length =
        inner_contiguous
            ? std::min<uint64_t>(view.shape[inner] - index[inner], count - done)
            : 1;
    RETURN_IF_ERROR(run(static_cast<uint64_t>(position), length, done));
    done += length;
    index[inner] += static_cast<int64_t>(length);
    for (size_t d = inner; d > 0 && index[d] >= view.shape[d]; --d) {
      index[d] = 0;
      ++index[d - 1];
    }
  }
  return absl::OkStatus();
}

}  // namespace weightd
