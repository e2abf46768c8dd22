#include "client/inspect/inspect_command.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/listing.h"
#include "client/shard_rules_file.h"
#include "loader/cache/convert.h"
#include "loader/cache/shard.h"
#include "loader/common/json.h"
#include "loader/format/checkpoint.h"
#include "loader/format/hf_model.h"
#include "loader/format/reader.h"
#include "loader/format/tensor_bytes.h"

namespace weightd {
namespace {

constexpr char kUsage[] =
    "usage: weightctl inspect [--json] [--hash] [--encoding=utf8|latin1|bytes] "
    "[--format=hf-safetensors|hf-torch] [--tp RANK/WORLD [--tp_rules "
    "FILE.json | --tp_rule_set NAME]] FILE|MODEL_DIR";

// Each tensor as a cpu load lists it (`listed`) and where its bytes are in
// the file (`source`, what is hashed): with a shard spec, rank r's slice
// (loader/cache/shard, the daemon's own rules). A slice is a view of the file
// (the same strides, the storage offset moved) unless the host copy changes
// its bytes (big-endian, compressed): then its own contiguous bytes.
struct Tensors {
  std::vector<TensorInfo> listed;
  std::vector<TensorInfo> source;
};

absl::StatusOr<Tensors> ShardTensors(const Checkpoint& ckpt,
                                     const CanonicalShard& shard,
                                     const std::string& path) {
  Tensors out;
  out.listed = ckpt.tensors;
  out.source = ckpt.tensors;
  uint64_t budget = kShardMatchBudget;  // as one daemon plan
  for (size_t i = 0; i < ckpt.tensors.size(); ++i) {
    const TensorInfo& tensor = ckpt.tensors[i];
    absl::StatusOr<std::optional<TensorSlice>> slice =
        SliceFor(shard, tensor, path, &budget);
    if (!slice.ok()) return slice.status();
    if (!slice->has_value()) continue;
    out.source[i] = (*slice)->view;
    TensorInfo& listed = out.listed[i];
    listed = (*slice)->view;
    listed.dtype = tensor.dtype;
    if (tensor.storage_index < ckpt.storages.size() &&
        PlacementChangesBytes(ckpt.storages[tensor.storage_index],
                              ckpt.storages[tensor.storage_index].dtype)) {
      listed.storage_offset = 0;
      int64_t stride = 1;
      for (size_t d = listed.shape.size(); d-- > 0;) {
        listed.stride[d] = stride;
        stride *= std::max<int64_t>(listed.shape[d], 1);
      }
    }
  }
  return out;
}

// Read-only mapping of a whole file.
class MappedFile {
 public:
  ~MappedFile() {
    if (data_ != nullptr && size_ > 0) munmap(data_, size_);
  }
  bool Open(const std::string& path, std::string* error) {
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      *error = strerror(errno);
      return false;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
      *error = strerror(errno);
      close(fd);
      return false;
    }
    if (S_ISDIR(st.st_mode)) {
      *error = "is a directory";
      close(fd);
      return false;
    }
    size_ = static_cast<size_t>(st.st_size);
    if (size_ > 0) {
      void* p = mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        *error = strerror(errno);
        close(fd);
        return false;
      }
      data_ = p;
    }
    close(fd);
    return true;
  }
  absl::string_view bytes() const {
    return absl::string_view(static_cast<const char*>(data_), size_);
  }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

std::string ShapeText(const std::vector<int64_t>& v) {
  return absl::StrCat("[", absl::StrJoin(v, ", "), "]");
}

// Storage bytes of a storage: the mapped file or an inflated copy.
const uint8_t* StorageBytes(const StorageInfo& s, absl::string_view file) {
  if (s.inflated) return reinterpret_cast<const uint8_t*>(s.inflated->data());
  return reinterpret_cast<const uint8_t*>(file.data()) + s.file_offset;
}

std::string OneLine(absl::string_view message) {
  std::string line(message);
  for (char& c : line) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return line;
}

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

// A model directory read offline: the layout, the index and each shard mapped
// here (no daemon, so no model roots: the user reads what they can read).
int InspectDirectory(const std::string& dir, bool json, bool hash,
                     const std::string& format_hint, ReadOptions options,
                     const CanonicalShard& shard, std::ostream& out,
                     std::ostream& err) {
  auto failed = [&](const absl::Status& status) {
    err << OneLine(status.message()) << "\n";
    return 1;
  };
  absl::StatusOr<HfLayout> layout = DetectHfLayout(dir, format_hint);
  if (!layout.ok()) return failed(layout.status());
  std::string error;
  std::optional<HfIndex> index;
  std::vector<std::string> names = {layout->single_file};
  if (!layout->index_file.empty()) {
    const std::string index_path = dir + "/" + layout->index_file;
    MappedFile index_file;
    if (!index_file.Open(index_path, &error)) {
      err << index_path << ": cannot open: " << error << "\n";
      return 1;
    }
    absl::StatusOr<HfIndex> parsed =
        ParseHfIndex(index_file.bytes(), index_path);
    if (!parsed.ok()) return failed(parsed.status());
    index = *std::move(parsed);
    names = index->shards;
  }
  std::vector<std::unique_ptr<MappedFile>> files;
  std::vector<HfShard> shards;
  uint64_t file_bytes = 0;
  for (const std::string& name : names) {
    const std::string shard_path = dir + "/" + name;
    files.push_back(std::make_unique<MappedFile>());
    if (!files.back()->Open(shard_path, &error)) {
      err << shard_path << ": cannot open: " << error << "\n";
      return 1;
    }
    file_bytes += files.back()->bytes().size();
    options.file_name = shard_path;
    absl::StatusOr<Checkpoint> checkpoint =
        ReadCheckpoint(files.back()->bytes(), options);
    if (!checkpoint.ok()) return failed(checkpoint.status());
    shards.push_back(HfShard{name, *std::move(checkpoint)});
  }
  absl::StatusOr<HfModel> model = AssembleHfModel(
      layout->format, index ? &*index : nullptr, std::move(shards), dir);
  if (!model.ok()) return failed(model.status());
  std::string config;
  for (const char* name : {kHfConfigFile, kHfGenerationConfigFile}) {
    const std::string config_path = dir + "/" + name;
    if (!Exists(config_path)) continue;
    MappedFile file;
    if (!file.Open(config_path, &error)) {
      err << config_path << ": cannot open: " << error << "\n";
      return 1;
    }
    if (absl::Status valid = CheckJsonObjectFile(file.bytes(), config_path);
        !valid.ok()) {
      return failed(valid);
    }
    if (name == std::string(kHfConfigFile)) config = std::string(file.bytes());
  }
  const Checkpoint& ckpt = model->checkpoint;
  absl::StatusOr<Tensors> tensors = ShardTensors(ckpt, shard, dir);
  if (!tensors.ok()) return failed(tensors.status());
  std::vector<std::string> hashes;
  if (hash) {
    CheckpointHasher hasher(CheckpointHasher::HeldBytes(ckpt, file_bytes));
    for (const TensorInfo& t : tensors->source) {
      const StorageInfo& s = ckpt.storages[t.storage_index];
      const size_t shard = model->storage_shard[t.storage_index];
      absl::StatusOr<std::string> h =
          hasher.Sha256Hex(t, s, StorageBytes(s, files[shard]->bytes()));
      if (!h.ok()) {
        err << dir << "/" << model->shards[shard] << ": "
            << OneLine(h.status().message()) << "\n";
        return 1;
      }
      hashes.push_back(*std::move(h));
    }
  }
  const char* format = HfFormatName(model->format);
  if (json) {
    std::vector<ListedTensor> listed;
    for (size_t i = 0; i < ckpt.tensors.size(); ++i) {
      ListedTensor item{&tensors->listed[i], std::nullopt};
      if (hash) item.sha256 = hashes[i];
      listed.push_back(std::move(item));
    }
    absl::StatusOr<Json> root =
        ModelDirectoryListingJson(format, model->shards, listed, config);
    if (!root.ok()) return failed(root.status());
    out << root->Dump(true) << "\n";
    return 0;
  }
  uint64_t total = 0;
  for (const TensorInfo& t : tensors->listed)
    total += static_cast<uint64_t>(std::max<int64_t>(t.NumElements(), 0)) *
             DTypeSize(t.dtype);
  out << dir << ": " << format << ", " << model->shards.size() << " shard(s), "
      << ckpt.tensors.size() << " tensors, " << total << " bytes\n";
  for (size_t i = 0; i < ckpt.tensors.size(); ++i) {
    const TensorInfo& t = tensors->listed[i];
    out << t.name << "  " << DTypeName(t.dtype) << "  " << ShapeText(t.shape)
        << "  " << model->shards[model->storage_shard[t.storage_index]];
    if (hash) out << "  " << hashes[i];
    out << "\n";
  }
  return 0;
}

}  // namespace

int RunInspect(const std::vector<std::string>& args, std::ostream& out,
               std::ostream& err) {
  bool json = false, hash = false;
  std::string path, format_hint;
  ReadOptions options;
  std::optional<std::string> tp, tp_rules, tp_rule_set;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    // --tp, --tp_rules and --tp_rule_set take a value, as for `load`.
    bool took_value = false;
    for (auto [flag, value] :
         {std::pair{"--tp", &tp}, std::pair{"--tp_rules", &tp_rules},
          std::pair{"--tp_rule_set", &tp_rule_set}}) {
      const std::string prefix = std::string(flag) + "=";
      if (a == flag) {
        if (i + 1 >= args.size()) {
          err << "weightctl inspect: " << flag << " needs a value\n"
              << kUsage << "\n";
          return 2;
        }
        *value = args[++i];
        took_value = true;
      } else if (a.rfind(prefix, 0) == 0) {
        *value = a.substr(prefix.size());
        took_value = true;
      }
    }
    if (took_value) continue;
    if (a == "--json") {
      json = true;
    } else if (a == "--hash") {
      hash = true;
    } else if (a == "--encoding=utf8" || a == "--encoding=utf-8") {
      options.encoding = ReadOptions::Py2Encoding::kUtf8;
    } else if (a == "--encoding=latin1") {
      options.encoding = ReadOptions::Py2Encoding::kLatin1;
    } else if (a == "--encoding=bytes") {
      options.encoding = ReadOptions::Py2Encoding::kBytes;
    } else if (a.rfind("--format=", 0) == 0) {
      format_hint = a.substr(9);
    } else if (a == "-h" || a == "--help") {
      out << kUsage << "\n";
      return 0;
    } else if (!a.empty() && a[0] == '-' && a != "-") {
      err << "weightctl inspect: unknown flag " << a << "\n" << kUsage << "\n";
      return 2;
    } else if (path.empty()) {
      path = a;
    } else {
      err << "weightctl inspect: more than one FILE\n" << kUsage << "\n";
      return 2;
    }
  }
  if (path.empty()) {
    err << kUsage << "\n";
    return 2;
  }
  CanonicalShard shard;
  if (!tp && (tp_rules || tp_rule_set)) {
    err << "--tp_rules needs --tp RANK/WORLD\n";
    return 2;
  }
  if (tp) {
    absl::StatusOr<std::pair<int, int>> rank_world = ParseTpFlag(*tp);
    if (!rank_world.ok()) {
      err << rank_world.status().message() << "\n";
      return 2;
    }
    ShardSpec spec;
    spec.rank = rank_world->first;
    spec.world_size = rank_world->second;
    if (tp_rules) {
      absl::StatusOr<std::vector<std::pair<std::string, int>>> rules =
          ReadShardRules(*tp_rules);
      if (!rules.ok()) {
        err << OneLine(rules.status().message()) << "\n";
        return 1;
      }
      spec.rules = *std::move(rules);
    }
    // As `load`: the built-in llama rules unless rules are given.
    spec.rule_set = tp_rule_set ? *tp_rule_set : tp_rules ? "" : "llama";
    absl::StatusOr<CanonicalShard> canonical = CanonicalShardSpec(spec, path);
    if (!canonical.ok()) {
      err << OneLine(canonical.status().message()) << "\n";
      return 1;
    }
    shard = *std::move(canonical);
  }
  if (IsDirectory(path)) {
    return InspectDirectory(path, json, hash, format_hint, options, shard, out,
                            err);
  }
  if (!format_hint.empty()) {
    err << "weightctl inspect: --format is for model directories\n";
    return 2;
  }
  MappedFile file;
  std::string error;
  if (!file.Open(path, &error)) {
    err << path << ": cannot open: " << error << "\n";
    return 1;
  }
  options.file_name = path;
  auto ckpt = ReadCheckpoint(file.bytes(), options);
  if (!ckpt.ok()) {
    std::string msg(ckpt.status().message());
    for (char& c : msg) {
      if (c == '\n' || c == '\r') c = ' ';
    }
    err << msg << "\n";
    return 1;
  }
  absl::StatusOr<Tensors> tensors = ShardTensors(*ckpt, shard, path);
  if (!tensors.ok()) {
    err << OneLine(tensors.status().message()) << "\n";
    return 1;
  }
  std::vector<std::string> hashes;
  if (hash) {
    // Work bounded by what the file holds, not by what its views claim.
    CheckpointHasher hasher(
        CheckpointHasher::HeldBytes(*ckpt, file.bytes().size()));
    hashes.reserve(ckpt->tensors.size());
    for (const TensorInfo& t : tensors->source) {
      const StorageInfo& s = ckpt->storages[t.storage_index];
      absl::StatusOr<std::string> h =
          hasher.Sha256Hex(t, s, StorageBytes(s, file.bytes()));
      if (!h.ok()) {
        err << path << ": " << h.status().message() << "\n";
        return 1;
      }
      hashes.push_back(*std::move(h));
    }
  }
  if (json) {
    std::vector<ListedTensor> listed;
    listed.reserve(ckpt->tensors.size());
    for (size_t i = 0; i < ckpt->tensors.size(); ++i) {
      ListedTensor item{&tensors->listed[i], std::nullopt};
      if (hash) item.sha256 = hashes[i];
      listed.push_back(std::move(item));
    }
    // The same builder `weightctl load --json` uses: the two outputs are
    // identical.
    Json root = TensorListingJson(
        CheckpointFormatName(ckpt->format), listed, ckpt->extra_files,
        ckpt->format == CheckpointFormat::kTorchScript);
    out << root.Dump(true) << "\n";
    return 0;
  }
  // Readable table.
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"NAME", "DTYPE", "SHAPE", "BYTES", "LOCATION"});
  if (hash) rows[0].push_back("SHA256");
  uint64_t total = 0;
  for (size_t i = 0; i < ckpt->tensors.size(); ++i) {
    const TensorInfo& t = tensors->listed[i];
    uint64_t bytes =
        static_cast<uint64_t>(t.NumElements()) * DTypeSize(t.dtype);
    total += bytes;
    std::vector<std::string> row = {t.name, std::string(DTypeName(t.dtype)),
                                    ShapeText(t.shape), absl::StrCat(bytes),
                                    ckpt->storages[t.storage_index].location};
    if (hash) row.push_back(hashes[i]);
    rows.push_back(std::move(row));
  }
  std::vector<size_t> width(rows[0].size(), 0);
  for (const auto& r : rows) {
    for (size_t c = 0; c < r.size(); ++c)
      width[c] = std::max(width[c], r[c].size());
  }
  out << path << ": " << CheckpointFormatName(ckpt->format) << ", "
      << ckpt->tensors.size() << " tensors, " << ckpt->storages.size()
      << " storages, " << total << " bytes\n";
  for (const auto& r : rows) {
    std::string line;
    for (size_t c = 0; c < r.size(); ++c) {
      bool right = c == 3;
      std::string cell = r[c];
      std::string pad(width[c] - cell.size(), ' ');
      line += right ? pad + cell : cell + (c + 1 < r.size() ? pad : "");
      if (c + 1 < r.size()) line += "  ";
    }
    out << line << "\n";
  }
  if (!ckpt->extra_files.empty()) {
    out << "extra files:";
    for (const auto& kv : ckpt->extra_files) {
      out << " " << kv.first << " (" << kv.second.size() << " bytes)";
    }
    out << "\n";
  }
  return 0;
}

}  // namespace weightd
