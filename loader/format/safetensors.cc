#include "loader/format/safetensors.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "loader/common/json.h"
#include "loader/common/status_macros.h"
#include "loader/format/pytree.h"

namespace weightd {
namespace {

uint64_t HeaderSize(absl::string_view bytes) {
  uint64_t n = 0;
  for (int b = 7; b >= 0; --b) n = (n << 8) | static_cast<uint8_t>(bytes[b]);
  return n;
}

absl::Status Invalid(const ReadOptions& options, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat(FilePrefix(options), "invalid safetensors: ", what));
}

}  // namespace

bool LooksLikeSafetensors(absl::string_view bytes) {
  if (bytes.size() < 10) return false;
  uint64_t n = HeaderSize(bytes);
  return n >= 2 && n <= bytes.size() - 8 && bytes[8] == '{';
}

absl::StatusOr<Checkpoint> ReadSafetensors(absl::string_view file_bytes,
                                           const ReadOptions& options) {
  if (file_bytes.size() < 8) {
    return Invalid(options, absl::StrCat("file is ", file_bytes.size(),
                                         " bytes, shorter than the header "
                                         "size field"));
  }
  uint64_t n = HeaderSize(file_bytes);
  if (n > options.max_safetensors_header) {
    return Invalid(options, absl::StrCat("header is ", n, " bytes, limit is ",
                                         options.max_safetensors_header));
  }
  if (n > file_bytes.size() - 8) {
    return Invalid(options, absl::StrCat("header of ", n,
                                         " bytes runs past "
                                         "the end of the file (",
                                         file_bytes.size(), " bytes)"));
  }
  JsonParseOptions jo;
  jo.max_depth = 16;
  jo.max_size = options.max_safetensors_header;
  auto header = ParseJson(file_bytes.substr(8, n), jo);
  if (!header.ok()) return Invalid(options, header.status().message());
  if (!header->is_object()) return Invalid(options, "header is not an object");
  const uint64_t data_start = 8 + n;
  const uint64_t data_size = file_bytes.size() - data_start;

  Checkpoint ckpt;
  ckpt.format = CheckpointFormat::kSafetensors;
  ckpt.metadata = Json::MakeObject();
  struct Range {
    uint64_t begin, end;
    size_t tensor;
  };
  std::vector<Range> ranges;
  for (const auto& kv : header->object()) {
    const std::string& name = kv.first;
    const Json& v = kv.second;
    if (name == "__metadata__") {
      if (!v.is_object())
        return Invalid(options, "__metadata__ is not an object");
      for (const auto& m : v.object()) {
        if (!m.second.is_string()) {
          return Invalid(options, absl::StrCat("__metadata__ value \"", m.first,
                                               "\" is not a string"));
        }
      }
      ckpt.metadata.object().emplace_back("__metadata__", v);
      continue;
    }
    if (!v.is_object()) {
      return Invalid(options,
                     absl::StrCat("entry \"", name, "\" is not an object"));
    }
    const Json* dtype = v.Find("dtype");
    const Json* shape = v.Find("shape");
    const Json* offsets = v.Find("data_offsets");
    if (dtype == nullptr || !dtype->is_string() || shape == nullptr ||
        !shape->is_array() || offsets == nullptr || !offsets->is_array() ||
        offsets->size() != 2) {
      return Invalid(options, absl::StrCat("tensor \"", name,
                                           "\" needs dtype, shape and "
                                           "data_offsets [begin, end]"));
    }
    auto dt = DTypeFromSafetensorsName(dtype->string_value());
    if (!dt.ok()) {
      return Invalid(options, absl::StrCat("tensor \"", name,
                                           "\": ", dt.status().message()));
    }
    if (shape->size() > options.max_dims) {
      return Invalid(options, absl::StrCat("tensor \"", name, "\" has ",
                                           shape->size(), " dims"));
    }
    TensorInfo t;
    t.name = name;
    t.dtype = *dt;
    uint64_t numel = 1;
    for (const Json& d : shape->array()) {
      if (!d.is_int() || d.int_value() < 0) {
        return Invalid(options, absl::StrCat("tensor \"", name,
                                             "\" has a bad shape entry"));
      }
      t.shape.push_back(d.int_value());
      if (__builtin_mul_overflow(numel, static_cast<uint64_t>(d.int_value()),
                                 &numel) ||
          numel > static_cast<uint64_t>(INT64_MAX)) {
        return Invalid(options, absl::StrCat("tensor \"", name,
                                             "\" element count overflows"));
      }
    }
    t.stride.assign(t.shape.size(), 1);
    for (size_t d = t.shape.size(); d-- > 1;) {
      t.stride[d - 1] = t.stride[d] * std::max<int64_t>(t.shape[d], 1);
    }
    const Json& b = offsets->array()[0];
    const Json& e = offsets->array()[1];
    if (!b.is_int() || !e.is_int() || b.int_value() < 0 ||
        e.int_value() < b.int_value()) {
      return Invalid(
          options, absl::StrCat("tensor \"", name, "\" has bad data_offsets"));
    }
    uint64_t begin = b.int_value(), end = e.int_value();
    if (end > data_size) {
      return Invalid(options,
                     absl::StrCat("tensor \"", name, "\" ends at byte ", end,
                                  " of a ", data_size, "-byte data section"));
    }
    uint64_t nbytes;
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(DTypeSize(*dt)),
                               &nbytes) ||
        nbytes != end - begin) {
      return Invalid(options,
                     absl::StrCat("tensor \"", name, "\" is ", end - begin,
                                  " bytes, its dtype and "
                                  "shape need ",
                                  nbytes));
    }
    StorageInfo s;
    s.key = name;
    s.location = "cpu";
    s.dtype = *dt;
    s.file_offset = data_start + begin;
    s.num_bytes = nbytes;
    t.storage_index = ckpt.storages.size();
    ckpt.storages.push_back(std::move(s));
    ranges.push_back(Range{begin, end, ckpt.tensors.size()});
    ckpt.tensors.push_back(std::move(t));
    if (ckpt.tensors.size() > options.max_tensors) {
      return Invalid(options, "too many tensors");
    }
  }
  // Offsets must tile the data section exactly: contiguous, no overlap, no
  // gap, nothing left over.
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expected = 0;
  for (const Range& r : ranges) {
    if (r.begin != expected) {
      return Invalid(options,
                     absl::StrCat("tensor \"", ckpt.tensors[r.tensor].name,
                                  "\" starts at byte ", r.begin,
                                  r.begin < expected ? ", overlapping the "
                                                       "previous tensor"
                                                     : ", leaving a gap",
                                  " (expected ", expected, ")"));
    }
    expected = r.end;
  }
  if (expected != data_size) {
    return Invalid(options, absl::StrCat("data section is ", data_size,
                                         " bytes, tensors cover ", expected));
  }
  // Names in sorted order, like safe_open(...).keys().
  std::vector<size_t> order(ckpt.tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return ckpt.tensors[a].name < ckpt.tensors[b].name;
  });
  std::vector<TensorInfo> sorted;
  sorted.reserve(order.size());
  for (size_t i : order) sorted.push_back(std::move(ckpt.tensors[i]));
  ckpt.tensors = std::move(sorted);
  for (const TensorInfo& t : ckpt.tensors) {
    Json ref = Json::MakeObject();
    ref.object().emplace_back("__tensor__", Json(t.name));
    ckpt.metadata.object().emplace_back(t.name, std::move(ref));
  }
  return ckpt;
}

}  // namespace weightd
