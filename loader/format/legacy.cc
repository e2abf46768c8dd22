#include "loader/format/legacy.h"

#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "loader/common/status_macros.h"
#include "loader/format/pickle.h"
#include "loader/format/pytree.h"
#include "loader/format/storage_ref.h"

namespace weightd {
namespace {

// 0x1950a86a20f9469cfc6c
constexpr char kMagicDecimal[] = "119547037146038801333356";
constexpr char kMagicLong1[] =
    "\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";
constexpr int64_t kProtocolVersion = 1001;

struct LegacyStorage {
  std::string key;
  std::string location;
  DType dtype;
  uint64_t numel;
  size_t index;  // in Checkpoint::storages
};

struct LegacyView {
  std::string root_key;
  uint64_t offset;  // elements
  uint64_t numel;
  size_t index;
};

}  // namespace

bool LooksLikeTorchLegacy(absl::string_view bytes) {
  // Protocol 2+ pickles of the magic number: PROTO n, LONG1 10 bytes.
  // (protocol 4+ puts a FRAME header in between).
  if (bytes.size() >= 14 && static_cast<uint8_t>(bytes[0]) == 0x80 &&
      bytes.substr(0, 32).find(absl::string_view(kMagicLong1, 12)) !=
          absl::string_view::npos) {
    return true;
  }
  // Protocols 0/1: LONG text.
  return absl::StartsWith(bytes, "L119547037146038801333356");
}

bool LooksLikeTar(absl::string_view bytes) {
  return bytes.size() >= 263 && bytes.substr(257, 5) == "ustar";
}

absl::StatusOr<Checkpoint> ReadTorchLegacy(absl::string_view file_bytes,
                                           const ReadOptions& options) {
  Checkpoint ckpt;
  ckpt.format = CheckpointFormat::kTorchLegacy;
  std::vector<LegacyStorage> roots;
  absl::flat_hash_map<std::string, size_t> root_by_key;
  std::vector<LegacyView> views;
  absl::flat_hash_map<std::string, size_t> view_by_key;

  auto root_storage = [&](const StorageRef& ref) {
    auto it = root_by_key.find(ref.key);
    if (it != root_by_key.end()) return roots[it->second].index;
    StorageInfo info;
    info.key = ref.key;
    info.location = ref.location;
    info.dtype = ref.dtype;
    info.num_bytes = ref.num_bytes;
    size_t index = ckpt.storages.size();
    ckpt.storages.push_back(std::move(info));
    root_by_key.emplace(ref.key, roots.size());
    roots.push_back(
        LegacyStorage{ref.key, ref.location, ref.dtype, ref.numel, index});
    return index;
  };

  PersistentLoader loader = [&](Unpickler& u,
                                PyValue* pid) -> absl::StatusOr<PyValue*> {
    ASSIGN_OR_RETURN(StorageRef ref,
                     ParseStorageRef(pid, StorageRefLayout::kLegacy));
    size_t index = root_storage(ref);
    if (ref.view.has_value()) {
      // A view of the root, in elements of the root's dtype.
      const StorageRefView& view = *ref.view;
      auto it = view_by_key.find(view.key);
      if (it == view_by_key.end()) {
        StorageInfo info = ckpt.storages[index];
        info.key = view.key;
        size_t vindex = ckpt.storages.size();
        ckpt.storages.push_back(std::move(info));
        it = view_by_key.emplace(view.key, views.size()).first;
        views.push_back(LegacyView{ref.key, view.offset, view.numel, vindex});
      }
      index = views[it->second].index;
    }
    PyValue* v = u.NewValue(PyKind::kStorage);
    v->index = static_cast<int64_t>(index);
    v->dtype = ckpt.storages[index].dtype;
    return v;
  };

  UnpicklerOptions uo;
  uo.context = options.file_name;
  uo.encoding = ToStringEncoding(options.encoding);
  uo.max_mark_depth = options.max_mark_depth;
  uo.max_string_bytes = options.max_string_bytes;
  uo.max_values = options.max_pickle_values;
  uo.max_dims = options.max_dims;
  Unpickler u(file_bytes, uo, loader);

  ASSIGN_OR_RETURN(PyValue * magic, u.Load());
  if (magic->kind != PyKind::kBigInt || magic->s != kMagicDecimal) {
    return InvalidFile(options,
                       "invalid magic number; not a legacy torch file");
  }
  ASSIGN_OR_RETURN(PyValue * protocol, u.Load());
  if (protocol->kind != PyKind::kInt || protocol->i != kProtocolVersion) {
    return InvalidFile(
        options,
        absl::StrCat("unsupported legacy protocol version ", PyStr(protocol)));
  }
  ASSIGN_OR_RETURN(PyValue * sys_info, u.Load());
  if (sys_info->kind != PyKind::kDict) {
    return InvalidFile(options, "legacy sys_info is not a dict");
  }
  ASSIGN_OR_RETURN(PyValue * root, u.Load());
  ASSIGN_OR_RETURN(PyValue * keys, u.Load());
  if (keys->kind != PyKind::kList && keys->kind != PyKind::kTuple) {
    return InvalidFile(options, "legacy storage key list is not a list");
  }
  // Raw storages follow, in key-list order.
  uint64_t pos = u.offset();
  for (const PyValue* k : keys->items) {
    std::string key;
    if (!StorageKeyText(k, &key))
      return InvalidFile(options, "storage key is not a string");
    auto it = root_by_key.find(key);
    if (it == root_by_key.end()) {
      return InvalidFile(options, absl::StrCat("storage \"", key,
                                               "\" is listed but never used"));
    }
    LegacyStorage& s = roots[it->second];
    if (file_bytes.size() - pos < 8) {
      return InvalidFile(options,
                         absl::StrCat("storage \"", key,
                                      "\" is missing (file truncated at "
                                      "byte ",
                                      file_bytes.size(), ")"));
    }
    uint64_t numel = 0;
    for (int b = 7; b >= 0; --b) {
      numel = (numel << 8) | static_cast<uint8_t>(file_bytes[pos + b]);
    }
    pos += 8;
    if (numel != s.numel) {
      return InvalidFile(options,
                         absl::StrCat("storage \"", key, "\" holds ", numel,
                                      " elements, its persistent "
                                      "id declares ",
                                      s.numel));
    }
    StorageInfo& info = ckpt.storages[s.index];
    if (file_bytes.size() - pos < info.num_bytes) {
      return InvalidFile(options,
                         absl::StrCat("storage \"", key, "\" record is ",
                                      file_bytes.size() - pos, " bytes, needs ",
                                      info.num_bytes, " (file truncated)"));
    }
    info.file_offset = pos;
    pos += info.num_bytes;
    s.numel = UINT64_MAX;  // mark as placed
  }
  for (const LegacyStorage& s : roots) {
    if (s.numel != UINT64_MAX) {
      return InvalidFile(
          options,
          absl::StrCat("storage \"", s.key, "\" is not in the storage list"));
    }
  }
  for (const LegacyView& v : views) {
    const StorageInfo& root_info =
        ckpt.storages[roots[root_by_key[v.root_key]].index];
    StorageInfo& info = ckpt.storages[v.index];
    uint64_t elem = DTypeSize(info.dtype);
    uint64_t off, len, end;
    if (__builtin_mul_overflow(v.offset, elem, &off) ||
        __builtin_mul_overflow(v.numel, elem, &len) ||
        __builtin_add_overflow(off, len, &end) || end > root_info.num_bytes) {
      return InvalidFile(options, absl::StrCat("storage view \"", info.key,
                                               "\" lies outside storage \"",
                                               v.root_key, "\""));
    }
    info.file_offset = root_info.file_offset + off;
    info.num_bytes = len;
  }
  std::vector<NamedTensor> named;
  PickleResult result = u.Release();
  RETURN_IF_ERROR(WalkPyTree(root, "", options, result.heap->size(), &named,
                             &ckpt.metadata));
  RETURN_IF_ERROR(AddTensors(named, result.tensors, options, &ckpt));
  return ckpt;
}

}  // namespace weightd
