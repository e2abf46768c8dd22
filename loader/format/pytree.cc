#include "loader/format/pytree.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace weightd {
namespace {

class Walker {
 public:
  Walker(const ReadOptions& options, size_t heap_size,
         std::vector<NamedTensor>* out)
      : options_(options), budget_(heap_size * 8 + 100000), out_(out) {}

  absl::Status Walk(const PyValue* v, const std::string& path, size_t depth,
                    Json* json) {
    if (depth > options_.max_depth) {
      return absl::InvalidArgumentError(
          absl::StrCat(FilePrefix(options_), "values nested deeper than ",
                       options_.max_depth));
    }
    if (++visits_ > budget_) {
      return absl::InvalidArgumentError(absl::StrCat(
          FilePrefix(options_),
          "value graph expands to too many values (shared references)"));
    }
    switch (v->kind) {
      case PyKind::kTensor: {
        if (out_->size() >= options_.max_tensors) {
          return absl::InvalidArgumentError(
              absl::StrCat(FilePrefix(options_), "more than ",
                           options_.max_tensors, " tensors"));
        }
        out_->push_back(NamedTensor{path, v->index});
        *json = Json::MakeObject();
        json->object().emplace_back("__tensor__", Json(path));
        return absl::OkStatus();
      }
      case PyKind::kDict:
      case PyKind::kObject: {
        *json = Json::MakeObject();
        if (v->kind == PyKind::kObject) {
          json->object().emplace_back("__class__", Json(v->s));
        }
        json->object().reserve(v->pairs.size());
        for (const auto& kv : v->pairs) {
          std::string key = PyStr(kv.first);
          std::string child = path.empty() ? key : absl::StrCat(path, ".", key);
          json->object().emplace_back(key, Json());
          absl::Status s =
              Walk(kv.second, child, depth + 1, &json->object().back().second);
          if (!s.ok()) return s;
        }
        return absl::OkStatus();
      }
      case PyKind::kList:
      case PyKind::kTuple:
      case PyKind::kSet:
      case PyKind::kFrozenSet: {
        *json = Json::MakeArray();
        json->array().reserve(v->items.size());
        for (size_t i = 0; i < v->items.size(); ++i) {
          std::string child =
              path.empty() ? absl::StrCat(i) : absl::StrCat(path, ".", i);
          json->array().emplace_back();
          absl::Status s =
              Walk(v->items[i], child, depth + 1, &json->array().back());
          if (!s.ok()) return s;
        }
        return absl::OkStatus();
      }
      default:
        *json = PyScalarToJson(v);
        return absl::OkStatus();
    }
  }

 private:
  const ReadOptions& options_;
  size_t budget_;
  size_t visits_ = 0;
  std::vector<NamedTensor>* out_;
};

}  // namespace

absl::Status InvalidFile(const ReadOptions& options, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(FilePrefix(options), what));
}

std::string FilePrefix(const ReadOptions& options) {
  return options.file_name.empty() ? "" : absl::StrCat(options.file_name, ": ");
}

StringEncoding ToStringEncoding(ReadOptions::Py2Encoding e) {
  switch (e) {
    case ReadOptions::Py2Encoding::kLatin1:
      return StringEncoding::kLatin1;
    case ReadOptions::Py2Encoding::kBytes:
      return StringEncoding::kBytes;
    default:
      return StringEncoding::kUtf8;
  }
}

Json PyScalarToJson(const PyValue* v) {
  switch (v->kind) {
    case PyKind::kNone:
      return Json();
    case PyKind::kBool:
      return Json(v->b);
    case PyKind::kInt:
      return Json(v->i);
    case PyKind::kBigInt:
      return Json(v->s);
    case PyKind::kFloat:
      return Json(v->f);
    case PyKind::kStr:
      return Json(v->s);
    case PyKind::kComplex: {
      Json j = Json::MakeObject();
      j.object().emplace_back("__complex__", Json::MakeArray());
      j.object().back().second.Append(Json(v->f));
      j.object().back().second.Append(Json(v->f2));
      return j;
    }
    case PyKind::kBytes:
    case PyKind::kByteArray: {
      Json j = Json::MakeObject();
      j.object().emplace_back("__bytes__", Json(absl::Base64Escape(v->s)));
      return j;
    }
    case PyKind::kStorage: {
      Json j = Json::MakeObject();
      j.object().emplace_back("__storage__", Json(v->index));
      return j;
    }
    case PyKind::kDevice:
      return Json(v->s);
    case PyKind::kDType:
      return Json(absl::StrCat("torch.", DTypeName(v->dtype)));
    default:
      return Json(PyStr(v));
  }
}

absl::Status WalkPyTree(const PyValue* root, const std::string& prefix,
                        const ReadOptions& options, size_t heap_size,
                        std::vector<NamedTensor>* out, Json* metadata) {
  Walker walker(options, heap_size, out);
  return walker.Walk(root, prefix, 0, metadata);
}

absl::Status AddTensors(const std::vector<NamedTensor>& named,
                        const std::vector<PickledTensor>& tensors,
                        const ReadOptions& options, Checkpoint* checkpoint) {
  checkpoint->tensors.reserve(checkpoint->tensors.size() + named.size());
  for (const NamedTensor& n : named) {
    const PickledTensor& t = tensors[n.tensor];
    if (t.storage < 0 ||
        static_cast<size_t>(t.storage) >= checkpoint->storages.size()) {
      return absl::InternalError(absl::StrCat(FilePrefix(options), "tensor \"",
                                              n.name, "\" has no storage"));
    }
    const StorageInfo& storage = checkpoint->storages[t.storage];
    if (t.extent_bytes > storage.num_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(FilePrefix(options), "storage \"", storage.key,
                       "\" record is ", storage.num_bytes, " bytes, tensor \"",
                       n.name, "\" needs ", t.extent_bytes));
    }
    TensorInfo info;
    info.name = n.name;
    info.dtype = t.dtype;
    info.shape = t.shape;
    info.stride = t.stride;
    info.storage_offset = t.storage_offset;
    info.storage_index = static_cast<size_t>(t.storage);
    info.requires_grad = t.requires_grad;
    info.is_conj = t.is_conj;
    info.is_neg = t.is_neg;
    checkpoint->tensors.push_back(std::move(info));
  }
  return absl::OkStatus();
}

}  // namespace weightd
