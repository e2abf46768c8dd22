#include "loader/format/hf_model.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "loader/common/status_macros.h"

namespace weightd {
namespace {

struct Candidate {
  const char* file;
  HfFormat format;
  bool indexed;
};

// transformers' order: safetensors before .bin, the single file before the
// index.
constexpr Candidate kCandidates[] = {
    {"model.safetensors", HfFormat::kSafetensors, false},
    {"model.safetensors.index.json", HfFormat::kSafetensors, true},
    {"pytorch_model.bin", HfFormat::kTorch, false},
    {"pytorch_model.bin.index.json", HfFormat::kTorch, true},
};

bool ShardFormatFits(HfFormat format, CheckpointFormat shard) {
  if (format == HfFormat::kSafetensors)
    return shard == CheckpointFormat::kSafetensors;
  return shard == CheckpointFormat::kTorchZip ||
         shard == CheckpointFormat::kTorchLegacy;
}

uint64_t TensorBytes(const TensorInfo& tensor) {
  const int64_t elements = tensor.NumElements();
  return elements <= 0
             ? 0
             : static_cast<uint64_t>(elements) * DTypeSize(tensor.dtype);
}

}  // namespace

const char* HfFormatName(HfFormat format) {
  return format == HfFormat::kSafetensors ? "hf-safetensors" : "hf-torch";
}

absl::StatusOr<HfLayout> DetectHfLayout(const std::string& dir,
                                        absl::string_view format_hint) {
  std::optional<HfFormat> only;
  if (format_hint == "hf-safetensors") {
    only = HfFormat::kSafetensors;
  } else if (format_hint == "hf-torch") {
    only = HfFormat::kTorch;
  } else if (!format_hint.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        dir, ": format hint \"", format_hint,
        "\" does not name a model directory format (hf-safetensors, "
        "hf-torch)"));
  }
  std::string looked_for;
  for (const Candidate& candidate : kCandidates) {
    if (only && candidate.format != *only) continue;
    absl::StrAppend(&looked_for, looked_for.empty() ? "" : ", ",
                    candidate.file);
    struct stat st;
    const std::string path = absl::StrCat(dir, "/", candidate.file);
    if (::lstat(path.c_str(), &st) != 0) {
      if (errno == ENOENT) continue;
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": ", std::strerror(errno)));
    }
    HfLayout layout;
    layout.format = candidate.format;
    (candidate.indexed ? layout.index_file : layout.single_file) =
        candidate.file;
    return layout;
  }
  return absl::NotFoundError(
      absl::StrCat(dir, ": not a model directory (no ", looked_for, ")"));
}

absl::Status CheckShardName(absl::string_view name,
                            absl::string_view index_path) {
  const char* problem = nullptr;
  if (name.empty()) {
    problem = "is empty";
  } else if (name.find('\0') != absl::string_view::npos) {
    problem = "contains NUL";
  } else if (name.find('/') != absl::string_view::npos) {
    problem = "is not a plain file name (it has a '/')";
  } else if (name == "." || name == "..") {
    problem = "is not a file name";
  }
  if (problem == nullptr) return absl::OkStatus();
  std::string shown(name);
  for (char& c : shown) {
    if (c == '\0') c = '?';
  }
  return absl::InvalidArgumentError(
      absl::StrCat(index_path, ": shard name \"", shown, "\" ", problem,
                   "; shards must be files in the model directory"));
}

absl::StatusOr<HfIndex> ParseHfIndex(absl::string_view text,
                                     absl::string_view index_path) {
  auto fail = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": ", why));
  };
  if (text.size() > kMaxHfJsonFileBytes)
    return fail(absl::StrCat("index of ", text.size(), " bytes is too big"));
  absl::StatusOr<Json> parsed = ParseJson(text);
  if (!parsed.ok()) return fail(parsed.status().message());
  if (!parsed->is_object()) return fail("the index is not a JSON object");
  HfIndex index;
  if (const Json* metadata = parsed->Find("metadata")) {
    if (!metadata->is_object() && !metadata->is_null())
      return fail("\"metadata\" is not an object");
    if (metadata->is_object()) {
      index.metadata = *metadata;
      if (const Json* total = metadata->Find("total_size")) {
        // transformers writes an integer; a float that is a whole number is
        // what some other writers leave.
        if (total->is_int() && total->int_value() >= 0) {
          index.total_size = static_cast<uint64_t>(total->int_value());
        } else if (total->is_double() && total->double_value() >= 0 &&
                   total->double_value() < 9.0e15 &&
                   total->double_value() ==
                       static_cast<double>(
                           static_cast<uint64_t>(total->double_value()))) {
          index.total_size = static_cast<uint64_t>(total->double_value());
        } else {
          return fail(
              "metadata.total_size is not a non-negative integer number of "
              "bytes");
        }
      }
    }
  }
  const Json* weight_map = parsed->Find("weight_map");
  if (weight_map == nullptr) return fail("no \"weight_map\"");
  if (!weight_map->is_object()) return fail("\"weight_map\" is not an object");
  if (weight_map->size() == 0) return fail("\"weight_map\" lists no tensors");
  absl::flat_hash_map<std::string, size_t> shard_index;
  for (const auto& [tensor, shard] : weight_map->object()) {
    if (!shard.is_string()) {
      return fail(absl::StrCat("weight_map value of \"", tensor,
                               "\" is not a string (a shard file name)"));
    }
    RETURN_IF_ERROR(CheckShardName(shard.string_value(), index_path));
    auto [it, inserted] =
        shard_index.try_emplace(shard.string_value(), index.shards.size());
    if (inserted) {
      if (index.shards.size() == kMaxHfShards) {
        return fail(absl::StrCat("more than ", kMaxHfShards, " shards"));
      }
      index.shards.push_back(shard.string_value());
    }
    index.weight_map.emplace_back(tensor, it->second);
  }
  return index;
}

absl::StatusOr<HfModel> AssembleHfModel(HfFormat format, const HfIndex* index,
                                        std::vector<HfShard> shards,
                                        absl::string_view dir) {
  HfModel model;
  model.format = format;
  if (index != nullptr && shards.size() != index->shards.size()) {
    return absl::InternalError(absl::StrCat(dir, ": ", shards.size(),
                                            " shards read for an index of ",
                                            index->shards.size()));
  }
  if (index == nullptr && shards.size() != 1) {
    return absl::InternalError(
        absl::StrCat(dir, ": a model without an index has one file"));
  }
  // Tensor -> shard the index names it in.
  absl::flat_hash_map<std::string, size_t> listed;
  if (index != nullptr) {
    for (const auto& [tensor, shard] : index->weight_map)
      listed.emplace(tensor, shard);
  }
  Checkpoint& merged = model.checkpoint;
  merged.format = shards.front().checkpoint.format;
  uint64_t tensor_bytes = 0;
  uint64_t storage_bytes = 0;
  // Tensors found, per shard, to find index entries a shard lacks.
  absl::flat_hash_map<std::string, size_t> found;
  for (size_t s = 0; s < shards.size(); ++s) {
    HfShard& shard = shards[s];
    if (index != nullptr && shard.name != index->shards[s]) {
      return absl::InternalError(absl::StrCat(dir, ": shard ", s, " is ",
                                              shard.name, ", the index says ",
                                              index->shards[s]));
    }
    Checkpoint& checkpoint = shard.checkpoint;
    if (!ShardFormatFits(format, checkpoint.format)) {
      return absl::InvalidArgumentError(absl::StrCat(
          dir, "/", shard.name, ": a ", CheckpointFormatName(checkpoint.format),
          " file in an ", HfFormatName(format), " model"));
    }
    if (!checkpoint.extra_files.empty() || !checkpoint.code.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          dir, "/", shard.name, ": a TorchScript archive is not a shard"));
    }
    const size_t storage_base = merged.storages.size();
    for (TensorInfo& tensor : checkpoint.tensors) {
      if (index != nullptr) {
        auto it = listed.find(tensor.name);
        if (it == listed.end()) {
          return absl::InvalidArgumentError(
              absl::StrCat(dir, ": tensor \"", tensor.name, "\" of shard ",
                           shard.name, " is not in the index's weight_map"));
        }
        if (it->second != s) {
          return absl::InvalidArgumentError(absl::StrCat(
              dir, ": tensor \"", tensor.name, "\" is in shard ", shard.name,
              " but the index lists it in ", index->shards[it->second]));
        }
      }
      if (!found.emplace(tensor.name, s).second) {
        return absl::InvalidArgumentError(
            absl::StrCat(dir, ": tensor \"", tensor.name, "\" of shard ",
                         shard.name, " is in another shard too"));
      }
      tensor_bytes += TensorBytes(tensor);
      tensor.storage_index += storage_base;
      merged.tensors.push_back(std::move(tensor));
    }
    for (StorageInfo& storage : checkpoint.storages) {
      storage_bytes += storage.num_bytes;
      merged.storages.push_back(std::move(storage));
      model.storage_shard.push_back(s);
    }
    model.shards.push_back(shard.name);
  }
  if (index != nullptr) {
    for (const auto& [tensor, shard] : index->weight_map) {
      if (!found.contains(tensor)) {
        return absl::InvalidArgumentError(absl::StrCat(
            dir, ": the index lists tensor \"", tensor, "\" in shard ",
            index->shards[shard], ", which does not have it"));
      }
    }
    if (index->total_size && *index->total_size != tensor_bytes &&
        *index->total_size != storage_bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          dir, ": the index's metadata.total_size is ", *index->total_size,
          " bytes but the shards hold ", tensor_bytes, " bytes of tensors"));
    }
    merged.metadata = index->metadata;
  } else {
    merged.metadata = std::move(shards.front().checkpoint.metadata);
  }
  return model;
}

absl::Status CheckJsonObjectFile(absl::string_view text,
                                 absl::string_view path) {
  if (text.size() > kMaxHfJsonFileBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", text.size(), " bytes is too big"));
  }
  absl::StatusOr<Json> parsed = ParseJson(text);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", parsed.status().message()));
  }
  if (!parsed->is_object())
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a JSON object"));
  return absl::OkStatus();
}

}  // namespace weightd
