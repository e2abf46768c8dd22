#include "loader/format/pytree.h"

#include <cmath>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace weightd {
namespace {

// "__x__": the form of the keys that mark typed values in the JSON tree.
bool IsMarkerKey(absl::string_view key) {
  return key.size() >= 4 && absl::StartsWith(key, "__") &&
         absl::EndsWith(key, "__");
}

Json Tagged(const char* tag, Json value) {
  Json j = Json::MakeObject();
  j.object().emplace_back(tag, std::move(value));
  return j;
}

Json FloatToJson(double f) {
  if (std::isnan(f)) return Tagged("__float__", Json("nan"));
  if (std::isinf(f)) return Tagged("__float__", Json(f > 0 ? "inf" : "-inf"));
  return Json(f);
}

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
        if (v->b) json->object().emplace_back("__parameter__", Json(true));
        return absl::OkStatus();
      }
      case PyKind::kDict:
      case PyKind::kObject:
        return WalkMapping(v, path, depth, json);
      case PyKind::kList:
        return WalkItems(v, path, depth, json);
      case PyKind::kTuple:
      case PyKind::kSet:
      case PyKind::kFrozenSet:
      case PyKind::kSlice: {
        const char* tag = v->kind == PyKind::kSet         ? "__set__"
                          : v->kind == PyKind::kFrozenSet ? "__frozenset__"
                          : v->kind == PyKind::kSlice     ? "__slice__"
                          : v->s == "torch.Size"          ? "__size__"
                                                          : "__tuple__";
        *json = Json::MakeObject();
        json->object().emplace_back(tag, Json());
        return WalkItems(v, path, depth, &json->object().back().second);
      }
      default:
        *json = PyScalarToJson(v);
        return absl::OkStatus();
    }
  }

 private:
  absl::Status WalkItems(const PyValue* v, const std::string& path,
                         size_t depth, Json* json) {
    *json = Json::MakeArray();
    json->array().reserve(v->items.size());
    for (size_t i = 0; i < v->items.size(); ++i) {
      std::string child =
          path.empty() ? absl::StrCat(i) : absl::StrCat(path, ".", i);
      json->array().emplace_back();
      if (absl::Status s =
              Walk(v->items[i], child, depth + 1, &json->array().back());
          !s.ok())
        return s;
    }
    return absl::OkStatus();
  }

  // Dict keys are hashable: scalars, tuples and frozensets of them. Keys that
  // are tensors or objects (hashed by identity) keep only their str().
  absl::Status KeyToJson(const PyValue* key, size_t depth, Json* json) {
    if (depth > options_.max_depth) {
      return absl::InvalidArgumentError(
          absl::StrCat(FilePrefix(options_), "dict key nested deeper than ",
                       options_.max_depth));
    }
    if (++visits_ > budget_) {
      return absl::InvalidArgumentError(absl::StrCat(
          FilePrefix(options_),
          "value graph expands to too many values (shared references)"));
    }
    switch (key->kind) {
      case PyKind::kTuple:
      case PyKind::kFrozenSet: {
        Json items = Json::MakeArray();
        items.array().reserve(key->items.size());
        for (const PyValue* item : key->items) {
          items.array().emplace_back();
          if (absl::Status s =
                  KeyToJson(item, depth + 1, &items.array().back());
              !s.ok()) {
            return s;
          }
        }
        const char* tag = key->kind == PyKind::kFrozenSet ? "__frozenset__"
                          : key->s == "torch.Size"        ? "__size__"
                                                          : "__tuple__";
        *json = Tagged(tag, std::move(items));
        return absl::OkStatus();
      }
      case PyKind::kTensor:
      case PyKind::kObject:
      case PyKind::kStorage:
        *json = Tagged("__repr__", Json(PyStr(key)));
        return absl::OkStatus();
      default:
        *json = PyScalarToJson(key);
        return absl::OkStatus();
    }
  }

  // Dicts and objects. String keys that cannot be mistaken for a marker stay
  // JSON object keys (the common case); any other key set is written as
  // "__items__": [[key, value], ...] so that int and tuple keys survive.
  absl::Status WalkMapping(const PyValue* v, const std::string& path,
                           size_t depth, Json* json) {
    *json = Json::MakeObject();
    Json::Object& object = json->object();
    if (v->kind == PyKind::kObject || !v->s.empty()) {
      object.emplace_back("__class__", Json(v->s));
    }
    bool plain_keys = true;
    for (const auto& kv : v->pairs) {
      if (kv.first->kind != PyKind::kStr || IsMarkerKey(kv.first->s)) {
        plain_keys = false;
        break;
      }
    }
    Json* items = nullptr;
    if (plain_keys) {
      object.reserve(object.size() + v->pairs.size() + 1);
    } else {
      object.emplace_back("__items__", Json::MakeArray());
      items = &object.back().second;
      items->array().reserve(v->pairs.size());
    }
    for (const auto& kv : v->pairs) {
      std::string key = PyStr(kv.first);
      std::string child = path.empty() ? key : absl::StrCat(path, ".", key);
      Json* slot;
      if (items == nullptr) {
        object.emplace_back(key, Json());
        slot = &object.back().second;
      } else {
        items->Append(Json::MakeArray());
        Json& pair = items->array().back();
        pair.array().resize(2);
        if (absl::Status s = KeyToJson(kv.first, depth + 1, &pair.array()[0]);
            !s.ok()) {
          return s;
        }
        slot = &pair.array()[1];
      }
      if (absl::Status s = Walk(kv.second, child, depth + 1, slot); !s.ok())
        return s;
    }
    // An OrderedDict's attributes (a state_dict's _metadata); objects' state
    // is their attributes, already written.
    if (v->kind == PyKind::kDict && v->state != nullptr) {
      object.emplace_back("__state__", Json());
      if (absl::Status s =
              Walk(v->state, path.empty() ? "__state__" : path + ".__state__",
                   depth + 1, &object.back().second);
          !s.ok())
        return s;
    }
    return absl::OkStatus();
  }

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
      return Tagged("__int__", Json(v->s));
    case PyKind::kFloat:
      return FloatToJson(v->f);
    case PyKind::kStr:
      return Json(v->s);
    case PyKind::kComplex: {
      Json parts = Json::MakeArray();
      parts.Append(FloatToJson(v->f));
      parts.Append(FloatToJson(v->f2));
      return Tagged("__complex__", std::move(parts));
    }
    case PyKind::kBytes:
      return Tagged("__bytes__", Json(absl::Base64Escape(v->s)));
    case PyKind::kByteArray:
      return Tagged("__bytearray__", Json(absl::Base64Escape(v->s)));
    case PyKind::kStorage:
      return Tagged("__storage__", Json(v->index));
    case PyKind::kDevice:
      return Tagged("__device__", Json(v->s));
    case PyKind::kDType:
      return Tagged("__dtype__", Json(DTypeName(v->dtype)));
    case PyKind::kGlobal:
      return Tagged("__global__", Json(v->s));
    default:
      return Tagged("__repr__", Json(PyStr(v)));
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
