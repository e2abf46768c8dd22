// A Hugging Face-style model directory as one checkpoint: which files make the
// model (transformers' order), the shard index (untrusted JSON), and the
// shards' tensor tables merged into one Checkpoint. Reading and mapping the
// files is the caller's (the daemon maps each shard once and checks it stays
// inside a model root; `weightctl inspect` maps them itself); this module
// decides and validates.
//
// Tensor order: the shards in the order the index first names them (the order
// of its `weight_map` as written), then each shard's own order (a safetensors
// shard sorts its names, a torch shard keeps its state_dict's order). A single
// file layout (model.safetensors, pytorch_model.bin) is one shard.
#ifndef WEIGHTD_LOADER_FORMAT_HF_MODEL_H_
#define WEIGHTD_LOADER_FORMAT_HF_MODEL_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "loader/common/json.h"
#include "loader/format/checkpoint.h"

namespace weightd {

enum class HfFormat { kSafetensors, kTorch };

// "hf-safetensors", "hf-torch" (format_hint values and the JSON contract).
const char* HfFormatName(HfFormat format);

// Shards an index may name at most (each costs a mapping and a descriptor).
inline constexpr size_t kMaxHfShards = 4096;
// config.json, generation_config.json and the index are read whole.
inline constexpr uint64_t kMaxHfJsonFileBytes = 64ull << 20;

struct HfLayout {
  HfFormat format = HfFormat::kSafetensors;
  // "model.safetensors.index.json" / "pytorch_model.bin.index.json", or empty
  // for a single file.
  std::string index_file;
  // The single file ("model.safetensors" / "pytorch_model.bin") when there is
  // no index.
  std::string single_file;
};

// The layout of the directory `dir`, from the files it has, in transformers'
// order: model.safetensors, model.safetensors.index.json, pytorch_model.bin,
// pytorch_model.bin.index.json (safetensors always first). `format_hint` ""
// takes the first present; "hf-safetensors" / "hf-torch" only that format's
// two. INVALID_ARGUMENT for any other hint; NOT_FOUND naming the files looked
// for when none is there. Looks at names only (lstat), opens nothing.
absl::StatusOr<HfLayout> DetectHfLayout(const std::string& dir,
                                        absl::string_view format_hint);

// A shard name an index may use: a plain file name (no '/', not "." or "..",
// no NUL, not empty). INVALID_ARGUMENT naming `index_path` otherwise.
absl::Status CheckShardName(absl::string_view name,
                            absl::string_view index_path);

struct HfIndex {
  // File names, in the order the weight_map first names them.
  std::vector<std::string> shards;
  // Tensor name -> index into `shards`, in the weight_map's order.
  std::vector<std::pair<std::string, size_t>> weight_map;
  std::optional<uint64_t> total_size;  // metadata.total_size, when given
  Json metadata;                       // the index's "metadata" (or null)
};

// Parses an index as transformers writes it: {"metadata": {"total_size": N,
// ...}?, "weight_map": {tensor: shard file name}}. INVALID_ARGUMENT naming
// `index_path` for malformed JSON (duplicate keys included), a weight_map that
// is missing, empty or not an object, a value that is not a string, a shard
// name that is not a plain file name, more than kMaxHfShards shards, or a
// total_size that is not a non-negative integer.
absl::StatusOr<HfIndex> ParseHfIndex(absl::string_view text,
                                     absl::string_view index_path);

struct HfShard {
  std::string name;  // file name in the directory
  Checkpoint checkpoint;
};

struct HfModel {
  HfFormat format = HfFormat::kSafetensors;
  std::vector<std::string> shards;  // file names, in index order
  // Every shard's tensors (in the order above) over every shard's storages
  // (appended shard by shard; tensors' storage_index refers to this table).
  // Its metadata is the index's "metadata", or the single file's own.
  Checkpoint checkpoint;
  // checkpoint.storages[i] has its bytes in shards[storage_shard[i]].
  std::vector<size_t> storage_shard;
};

// Merges `shards` (one per index shard, in index order; or the single file)
// into one model. With an index: every tensor the index lists must be in the
// shard it names, every tensor of a shard must be listed under that shard,
// and metadata.total_size (when given) must equal the shards' tensor bytes
// (the sum of numel * element size over tensors, or the bytes of their
// distinct storages, as huggingface_hub counts shared storages once);
// INVALID_ARGUMENT naming the tensor and the shard (or the totals) otherwise.
// A shard of the wrong format (a torch file in an hf-safetensors model) is
// INVALID_ARGUMENT too. `dir` is for errors.
absl::StatusOr<HfModel> AssembleHfModel(HfFormat format, const HfIndex* index,
                                        std::vector<HfShard> shards,
                                        absl::string_view dir);

// config.json / generation_config.json, when present.
inline constexpr const char* kHfConfigFile = "config.json";
inline constexpr const char* kHfGenerationConfigFile = "generation_config.json";

// INVALID_ARGUMENT naming `path` unless `text` is one JSON object.
absl::Status CheckJsonObjectFile(absl::string_view text,
                                 absl::string_view path);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_FORMAT_HF_MODEL_H_
