#include "client/listing.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_format.h"
#include "loader/format/utf8.h"

namespace weightd {

Json ExtraFileJson(absl::string_view content) {
  if (IsValidUtf8(content)) return Json(content);
  Json bytes = Json::MakeObject();
  bytes.Set("__bytes__", Json(absl::Base64Escape(content)));
  return bytes;
}

Json TensorListingJson(absl::string_view format,
                       const std::vector<ListedTensor>& tensors,
                       const std::map<std::string, std::string>& extra_files,
                       bool with_extra_files) {
  Json root = Json::MakeObject();
  root.Set("format", Json(std::string(format)));
  Json list = Json::MakeArray();
  for (const ListedTensor& tensor : tensors) {
    Json item = Json::MakeObject();
    item.Set("name", Json(tensor.info->name));
    item.Set("dtype", Json(std::string(DTypeName(tensor.info->dtype))));
    Json shape = Json::MakeArray();
    for (int64_t dim : tensor.info->shape) shape.Append(Json(dim));
    item.Set("shape", std::move(shape));
    Json stride = Json::MakeArray();
    for (int64_t step : tensor.info->stride) stride.Append(Json(step));
    item.Set("stride", std::move(stride));
    item.Set("storage_offset", Json(tensor.info->storage_offset));
    if (tensor.sha256.has_value()) item.Set("sha256", Json(*tensor.sha256));
    list.Append(std::move(item));
  }
  root.Set("tensors", std::move(list));
  if (with_extra_files) {
    Json extra = Json::MakeObject();
    for (const auto& [name, content] : extra_files) {
      extra.Set(name, ExtraFileJson(content));
    }
    root.Set("extra_files", std::move(extra));
  }
  return root;
}

absl::StatusOr<Json> ModelDirectoryListingJson(
    absl::string_view format, const std::vector<std::string>& shards,
    const std::vector<ListedTensor>& tensors, absl::string_view config_json) {
  Json listing = TensorListingJson(format, tensors, {}, false);
  Json root = Json::MakeObject();
  root.Set("format", Json(std::string(format)));
  Json names = Json::MakeArray();
  for (const std::string& shard : shards) names.Append(Json(shard));
  root.Set("shards", std::move(names));
  root.Set("tensors", *listing.Find("tensors"));
  if (!config_json.empty()) {
    absl::StatusOr<Json> config = ParseJson(config_json);
    if (!config.ok()) return config.status();
    if (!config->is_object()) {
      return absl::InvalidArgumentError("config.json is not a JSON object");
    }
    root.Set("config", *std::move(config));
  }
  return root;
}

std::string HumanBytes(uint64_t bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024 && unit < 4) {
    value /= 1024;
    ++unit;
  }
  if (unit == 0) return absl::StrFormat("%d B", bytes);
  return absl::StrFormat("%.1f %s", value, kUnits[unit]);
}

}  // namespace weightd
