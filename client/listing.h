// The JSON listing that `weightctl inspect --json` and `weightctl load --json`
// both print (DESIGN.md): {"format", "tensors": [{"name", "dtype", "shape",
// "stride", "storage_offset", "sha256"?}], "extra_files"?}. One function, so
// the two outputs cannot drift apart.
//
// extra_files values: the content as a JSON string when it is valid UTF-8
// (as before), otherwise {"__bytes__": "<base64>"} (standard alphabet, with
// padding): the same form the metadata JSON uses for Python bytes, and never
// confusable with text, which is always a string.
#ifndef WEIGHTD_CLIENT_LISTING_H_
#define WEIGHTD_CLIENT_LISTING_H_

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "loader/common/json.h"
#include "loader/format/checkpoint.h"

namespace weightd {

struct ListedTensor {
  const TensorInfo* info = nullptr;
  std::optional<std::string> sha256;
};

Json TensorListingJson(absl::string_view format,
                       const std::vector<ListedTensor>& tensors,
                       const std::map<std::string, std::string>& extra_files,
                       bool with_extra_files);

// A model directory's listing (the same contract, extended): {"format":
// "hf-safetensors" | "hf-torch", "shards": [file names in index order],
// "tensors": [...], "config": {...}?}. `config_json` is config.json's text, ""
// when the directory has none; INVALID_ARGUMENT when it is not a JSON object.
absl::StatusOr<Json> ModelDirectoryListingJson(
    absl::string_view format, const std::vector<std::string>& shards,
    const std::vector<ListedTensor>& tensors, absl::string_view config_json);

// One extra file's JSON value (see above).
Json ExtraFileJson(absl::string_view content);

// "1.2 GiB", "512 B".
std::string HumanBytes(uint64_t bytes);

}  // namespace weightd

#endif  // WEIGHTD_CLIENT_LISTING_H_
