#include "loader/format/torch_zip.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "loader/common/status_macros.h"
#include "loader/format/pickle.h"
#include "loader/format/pytree.h"
#include "loader/format/storage_ref.h"
#include "loader/format/utf8.h"

namespace weightd {
namespace {

constexpr int64_t kMinVersion = 1;
constexpr int64_t kMaxVersion = 10;

// Storage table shared by the pickles of one archive.
class StorageTable {
 public:
  StorageTable(const ZipArchive& zip, absl::string_view file_bytes,
               const ReadOptions& options, Checkpoint* checkpoint)
      : zip_(zip), file_(file_bytes), options_(options), ckpt_(checkpoint) {}

  // `dirs`: record directories to try for a key, in order.
  PersistentLoader Loader(std::vector<std::string> dirs) {
    return
        [this, dirs](Unpickler& u, PyValue* pid) { return Load(u, pid, dirs); };
  }

  absl::StatusOr<PyValue*> Load(Unpickler& u, PyValue* pid,
                                const std::vector<std::string>& dirs) {
    ASSIGN_OR_RETURN(StorageRef ref,
                     ParseStorageRef(pid, StorageRefLayout::kZip));
    const std::string& key = ref.key;
    std::string id = absl::StrCat(dirs.front(), key);
    auto it = by_id_.find(id);
    if (it != by_id_.end()) {
      PyValue* v = u.NewValue(PyKind::kStorage);
      v->index = static_cast<int64_t>(it->second);
      v->dtype =
          ref.untyped ? DType::kUInt8 : ckpt_->storages[it->second].dtype;
      v->untyped = ref.untyped;
      return v;
    }
    const ZipEntry* entry = nullptr;
    for (const std::string& dir : dirs) {
      entry = zip_.Find(absl::StrCat(dir, key));
      if (entry != nullptr) break;
    }
    if (entry == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "storage \"", key, "\" has no record \"", dirs.front(), key, "\""));
    }
    StorageInfo info;
    info.key = key;
    info.location = ref.location;
    info.dtype = ref.dtype;
    info.byte_order = byte_order_;
    info.num_bytes = ref.num_bytes;
    info.file_offset = entry->data_offset;
    if (entry->method != 0) {
      ASSIGN_OR_RETURN(std::string inflated, zip_.Extract(*entry));
      info.inflated = std::make_shared<const std::string>(std::move(inflated));
    }
    size_t index = ckpt_->storages.size();
    record_bytes_.push_back(entry->uncompressed_size);
    untyped_.push_back(ref.untyped);
    ckpt_->storages.push_back(std::move(info));
    by_id_.emplace(std::move(id), index);
    PyValue* v = u.NewValue(PyKind::kStorage);
    v->index = static_cast<int64_t>(index);
    v->dtype = ref.dtype;
    v->untyped = ref.untyped;
    v->storage_nbytes = ref.num_bytes;
    return v;
  }

  void set_byte_order(ByteOrder order) { byte_order_ = order; }

  // Before naming: storages cannot be larger than their record.
  void ClampToRecords() {
    declared_.clear();
    for (size_t i = 0; i < ckpt_->storages.size(); ++i) {
      declared_.push_back(ckpt_->storages[i].num_bytes);
      if (record_bytes_[i] < ckpt_->storages[i].num_bytes) {
        ckpt_->storages[i].num_bytes = record_bytes_[i];
      }
    }
  }

  // After naming: every storage record must hold what its id declares; an
  // untyped storage takes the dtype of its first tensor.
  absl::Status Finish() {
    for (size_t i = 0; i < ckpt_->storages.size(); ++i) {
      StorageInfo& s = ckpt_->storages[i];
      if (record_bytes_[i] < declared_[i]) {
        return InvalidFile(
            options_,
            absl::StrCat("storage \"", s.key, "\" record is ", record_bytes_[i],
                         " bytes, its persistent "
                         "id declares ",
                         declared_[i]));
      }
      s.num_bytes = declared_[i];
    }
    std::vector<bool> typed_set(ckpt_->storages.size(), false);
    for (const TensorInfo& t : ckpt_->tensors) {
      size_t i = t.storage_index;
      if (untyped_[i] && !typed_set[i]) {
        ckpt_->storages[i].dtype = t.dtype;
        typed_set[i] = true;
      }
    }
    return absl::OkStatus();
  }

 private:
  const ZipArchive& zip_;
  absl::string_view file_;
  const ReadOptions& options_;
  Checkpoint* ckpt_;
  ByteOrder byte_order_ = ByteOrder::kLittle;
  absl::flat_hash_map<std::string, size_t> by_id_;
  std::vector<uint64_t> record_bytes_;
  std::vector<uint64_t> declared_;
  std::vector<bool> untyped_;
};

absl::StatusOr<std::string> ReadRecord(const ZipArchive& zip,
                                       const ZipEntry& entry,
                                       const ReadOptions& options) {
  if (entry.uncompressed_size > options.max_pickle_bytes) {
    return InvalidFile(
        options,
        absl::StrCat("record \"", entry.name, "\" is ", entry.uncompressed_size,
                     " bytes, limit is ", options.max_pickle_bytes));
  }
  auto data = zip.Extract(entry);
  if (!data.ok()) return InvalidFile(options, data.status().message());
  return data;
}

absl::StatusOr<PickleResult> Unpickle(absl::string_view data,
                                      const std::string& record,
                                      const ReadOptions& options,
                                      bool torchscript, PersistentLoader loader,
                                      PyValue** root) {
  UnpicklerOptions uo;
  uo.context = absl::StrCat(options.file_name,
                            options.file_name.empty() ? "" : ": ", record);
  uo.encoding = ToStringEncoding(options.encoding);
  uo.torchscript = torchscript;
  uo.max_mark_depth = options.max_mark_depth;
  uo.max_string_bytes = options.max_string_bytes;
  uo.max_values = options.max_pickle_values;
  uo.max_dims = options.max_dims;
  Unpickler u(data, uo, std::move(loader));
  ASSIGN_OR_RETURN(*root, u.Load());
  return u.Release();
}

// TorchScript class declarations from code/: which attributes are parameters
// and buffers, and which classes are modules.
struct ScriptClass {
  bool is_module = false;
  // Defines __setstate__: torch.jit.load runs it on the pickled state.
  bool has_setstate = false;
  std::vector<std::string> parameters;
  std::vector<std::string> buffers;
};

std::vector<std::string> ParseNameList(absl::string_view line) {
  // `  __parameters__ = ["weight", "bias", ]`
  std::vector<std::string> names;
  size_t open = line.find('[');
  size_t close = line.rfind(']');
  if (open == absl::string_view::npos || close == absl::string_view::npos ||
      close < open) {
    return names;
  }
  for (absl::string_view part :
       absl::StrSplit(line.substr(open + 1, close - open - 1), ',')) {
    part = absl::StripAsciiWhitespace(part);
    if (part.size() >= 2 && (part.front() == '"' || part.front() == '\'')) {
      names.emplace_back(part.substr(1, part.size() - 2));
    }
  }
  return names;
}

void ParseScriptClasses(absl::string_view module_path, absl::string_view code,
                        absl::flat_hash_map<std::string, ScriptClass>* out) {
  ScriptClass* current = nullptr;
  for (absl::string_view line : absl::StrSplit(code, '\n')) {
    if (absl::StartsWith(line, "class ")) {
      absl::string_view rest = line.substr(6);
      size_t end = rest.find_first_of("(:");
      std::string name(absl::StripAsciiWhitespace(rest.substr(0, end)));
      bool module = false;
      if (end != absl::string_view::npos && rest[end] == '(') {
        absl::string_view base = rest.substr(end + 1);
        module = absl::StartsWith(base, "Module)") ||
                 absl::StartsWith(base, "torch.nn.Module)");
      }
      current = &(*out)[absl::StrCat(module_path, ".", name)];
      current->is_module = module;
      continue;
    }
    if (current == nullptr) continue;
    if (!line.empty() && line[0] != ' ') {
      current = nullptr;
      continue;
    }
    absl::string_view t = absl::StripLeadingAsciiWhitespace(line);
    if (absl::StartsWith(t, "def __setstate__(")) {
      current->has_setstate = true;
    } else if (absl::StartsWith(t, "__parameters__")) {
      current->parameters = ParseNameList(t);
    } else if (absl::StartsWith(t, "__buffers__")) {
      current->buffers = ParseNameList(t);
    }
  }
}

class ModuleWalker {
 public:
  ModuleWalker(const absl::flat_hash_map<std::string, ScriptClass>& classes,
               const ReadOptions& options, std::vector<NamedTensor>* out)
      : classes_(classes), options_(options), out_(out) {}

  absl::Status Walk(const PyValue* obj, const std::string& prefix,
                    size_t depth) {
    if (depth > options_.max_depth) {
      return InvalidFile(options_, absl::StrCat("modules nested deeper than ",
                                                options_.max_depth));
    }
    auto it = classes_.find(obj->s);
    const ScriptClass* cls = it == classes_.end() ? nullptr : &it->second;
    RETURN_IF_ERROR(CheckPlainState(obj, cls, prefix));
    auto attr_name = [](const PyValue* k) { return PyStr(k); };
    auto in = [](const std::vector<std::string>& v, const std::string& n) {
      for (const auto& x : v) {
        if (x == n) return true;
      }
      return false;
    };
    // Parameters, then buffers, then submodules: the order of state_dict().
    for (int pass = 0; pass < 2; ++pass) {
      for (const auto& kv : obj->pairs) {
        if (kv.second->kind != PyKind::kTensor) continue;
        std::string name = attr_name(kv.first);
        bool take;
        if (cls == nullptr) {
          take = pass == 0;  // no declaration: every tensor attribute
        } else {
          take = in(pass == 0 ? cls->parameters : cls->buffers, name);
        }
        if (take) out_->push_back(NamedTensor{prefix + name, kv.second->index});
      }
    }
    for (const auto& kv : obj->pairs) {
      if (kv.second->kind != PyKind::kObject) continue;
      auto sub = classes_.find(kv.second->s);
      bool is_module = sub != classes_.end() ? sub->second.is_module
                                             : HasTrainingAttr(kv.second);
      if (!is_module) continue;  // not in state_dict(), whatever its state
      RETURN_IF_ERROR(
          Walk(kv.second, prefix + attr_name(kv.first) + ".", depth + 1));
    }
    return absl::OkStatus();
  }

 private:
  static std::string ModuleName(const PyValue* obj, const std::string& prefix) {
    if (prefix.empty()) return absl::StrCat("root module (class ", obj->s, ")");
    return absl::StrCat("module \"", prefix.substr(0, prefix.size() - 1),
                        "\" (class ", obj->s, ")");
  }

  // A module's tensors can be listed without running code only when its
  // pickled state is the plain attribute dict torch writes for classes
  // without __getstate__/__setstate__.
  absl::Status CheckPlainState(const PyValue* obj, const ScriptClass* cls,
                               const std::string& prefix) const {
    if (cls != nullptr && cls->has_setstate) {
      return InvalidFile(
          options_,
          absl::StrCat("unsupported: TorchScript ", ModuleName(obj, prefix),
                       " defines __setstate__: torch.jit.load rebuilds its "
                       "state by running that TorchScript code, which weightd "
                       "never runs, so its tensors cannot be listed"));
    }
    if (obj->state == nullptr) {
      return InvalidFile(options_,
                         absl::StrCat("TorchScript ", ModuleName(obj, prefix),
                                      " has no pickled state (no BUILD)"));
    }
    if (obj->state->kind != PyKind::kDict) {
      return InvalidFile(
          options_,
          absl::StrCat("unsupported: TorchScript ", ModuleName(obj, prefix),
                       " has a pickled state of type ", PyTypeName(obj->state),
                       ", not an attribute dict (a custom __getstate__ "
                       "state only its __setstate__ code can interpret)"));
    }
    return absl::OkStatus();
  }

  static bool HasTrainingAttr(const PyValue* obj) {
    for (const auto& kv : obj->pairs) {
      if (kv.first->kind == PyKind::kStr && kv.first->s == "training") {
        return true;
      }
    }
    return false;
  }

  const absl::flat_hash_map<std::string, ScriptClass>& classes_;
  const ReadOptions& options_;
  std::vector<NamedTensor>* out_;
};

}  // namespace

absl::StatusOr<Checkpoint> ReadTorchZip(absl::string_view file_bytes,
                                        const ReadOptions& options) {
  auto zip_or = ZipArchive::Open(file_bytes);
  if (!zip_or.ok()) return InvalidFile(options, zip_or.status().message());
  const ZipArchive& zip = *zip_or;
  if (zip.entries().empty()) return InvalidFile(options, "empty zip archive");
  // The archive prefix is the first record's top directory (any name).
  std::string prefix;
  {
    const std::string& first = zip.entries().front().name;
    size_t slash = first.find('/');
    if (slash != std::string::npos) prefix = first.substr(0, slash + 1);
    if (zip.Find(prefix + "data.pkl") == nullptr) {
      prefix.clear();
      for (const ZipEntry& e : zip.entries()) {
        if (absl::EndsWith(e.name, "/data.pkl") &&
            e.name.find('/') == e.name.size() - 9) {
          prefix = e.name.substr(0, e.name.size() - 8);
          break;
        }
      }
    }
  }
  const ZipEntry* data_pkl = zip.Find(prefix + "data.pkl");
  if (data_pkl == nullptr) {
    return InvalidFile(options,
                       "zip archive has no data.pkl record (not a PyTorch "
                       "checkpoint)");
  }
  bool torchscript = zip.Find(prefix + "constants.pkl") != nullptr;
  // Format version.
  const ZipEntry* version = zip.Find(prefix + ".data/version");
  if (version == nullptr) version = zip.Find(prefix + "version");
  if (version == nullptr) {
    return InvalidFile(options, "zip archive has no version record");
  }
  {
    if (version->uncompressed_size > 64) {
      return InvalidFile(options, "version record is too long");
    }
    ASSIGN_OR_RETURN(std::string text, ReadRecord(zip, *version, options));
    int64_t v;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &v)) {
      return InvalidFile(
          options,
          absl::StrCat("version record \"", absl::CEscape(text.substr(0, 20)),
                       "\" is not a number"));
    }
    if (v < kMinVersion || v > kMaxVersion) {
      return InvalidFile(options, absl::StrCat("unsupported archive version ",
                                               v, " (supported ", kMinVersion,
                                               "..", kMaxVersion, ")"));
    }
  }
  Checkpoint ckpt;
  ckpt.format = torchscript ? CheckpointFormat::kTorchScript
                            : CheckpointFormat::kTorchZip;
  StorageTable storages(zip, file_bytes, options, &ckpt);
  if (const ZipEntry* bo = zip.Find(prefix + "byteorder")) {
    if (bo->uncompressed_size > 16)
      return InvalidFile(options, "bad byteorder record");
    ASSIGN_OR_RETURN(std::string text, ReadRecord(zip, *bo, options));
    absl::string_view t = absl::StripAsciiWhitespace(text);
    if (t == "big") {
      storages.set_byte_order(ByteOrder::kBig);
    } else if (t != "little") {
      return InvalidFile(options, absl::StrCat("unknown byteorder \"",
                                               absl::CEscape(t), "\""));
    }
  }
  ASSIGN_OR_RETURN(std::string pkl, ReadRecord(zip, *data_pkl, options));
  PyValue* root = nullptr;
  std::vector<std::string> data_dirs = {prefix + "data/", prefix + ".data/",
                                        prefix};
  ASSIGN_OR_RETURN(PickleResult result,
                   Unpickle(pkl, data_pkl->name, options, torchscript,
                            storages.Loader(data_dirs), &root));
  std::vector<NamedTensor> named;
  if (!torchscript) {
    RETURN_IF_ERROR(WalkPyTree(root, "", options, result.heap->size(), &named,
                               &ckpt.metadata));
    storages.ClampToRecords();
    RETURN_IF_ERROR(AddTensors(named, result.tensors, options, &ckpt));
    RETURN_IF_ERROR(storages.Finish());
    return ckpt;
  }

  // TorchScript: code listing and class declarations.
  absl::flat_hash_map<std::string, ScriptClass> classes;
  const std::string code_dir = prefix + "code/";
  for (const ZipEntry& e : zip.entries()) {
    if (!absl::StartsWith(e.name, code_dir)) continue;
    if (absl::EndsWith(e.name, ".debug_pkl")) continue;
    ASSIGN_OR_RETURN(std::string text, ReadRecord(zip, e, options));
    std::string rel = e.name.substr(prefix.size());
    if (absl::EndsWith(e.name, ".py")) {
      std::string module = e.name.substr(code_dir.size());
      module.resize(module.size() - 3);
      for (char& c : module) {
        if (c == '/') c = '.';
      }
      ParseScriptClasses(module, text, &classes);
    }
    ckpt.code.emplace(std::move(rel), std::move(text));
  }
  const std::string extra_dir = prefix + "extra/";
  for (const ZipEntry& e : zip.entries()) {
    if (!absl::StartsWith(e.name, extra_dir)) continue;
    std::string name = e.name.substr(extra_dir.size());
    // Names travel as protobuf strings and JSON keys; contents are bytes.
    if (!IsValidUtf8(name)) {
      return InvalidFile(options,
                         absl::StrCat("extra file name \"", absl::CEscape(name),
                                      "\" is not valid UTF-8"));
    }
    ASSIGN_OR_RETURN(std::string content, ReadRecord(zip, e, options));
    ckpt.extra_files.emplace(std::move(name), std::move(content));
  }
  if (root->kind != PyKind::kObject) {
    return InvalidFile(
        options, absl::StrCat("TorchScript data.pkl holds a ", PyTypeName(root),
                              ", not a module"));
  }
  ModuleWalker walker(classes, options, &named);
  RETURN_IF_ERROR(walker.Walk(root, "", 0));
  {
    std::vector<NamedTensor> ignored;
    RETURN_IF_ERROR(WalkPyTree(root, "", options, result.heap->size(), &ignored,
                               &ckpt.metadata));
  }
  // constants.pkl: a tuple of constants, tensors stored under constants/.
  const ZipEntry* constants = zip.Find(prefix + "constants.pkl");
  ASSIGN_OR_RETURN(std::string cpkl, ReadRecord(zip, *constants, options));
  PyValue* croot = nullptr;
  std::vector<std::string> const_dirs = {prefix + "constants/",
                                         prefix + ".data/", prefix};
  ASSIGN_OR_RETURN(PickleResult cresult,
                   Unpickle(cpkl, constants->name, options, true,
                            storages.Loader(const_dirs), &croot));
  storages.ClampToRecords();
  RETURN_IF_ERROR(AddTensors(named, result.tensors, options, &ckpt));
  if (options.include_torchscript_constants) {
    std::vector<NamedTensor> cnamed;
    Json cjson;
    RETURN_IF_ERROR(WalkPyTree(croot, "constants", options,
                               cresult.heap->size(), &cnamed, &cjson));
    RETURN_IF_ERROR(AddTensors(cnamed, cresult.tensors, options, &ckpt));
  }
  RETURN_IF_ERROR(storages.Finish());
  return ckpt;
}

}  // namespace weightd
