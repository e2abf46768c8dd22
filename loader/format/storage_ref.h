// torch's persistent ids for storages, the references a checkpoint's pickle
// makes to storage bytes kept outside it: one parser for the zip (torch.save
// since 1.6, TorchScript) and legacy readers.
#ifndef WEIGHTD_LOADER_FORMAT_STORAGE_REF_H_
#define WEIGHTD_LOADER_FORMAT_STORAGE_REF_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "loader/format/dtype.h"
#include "loader/format/pickle_value.h"

namespace weightd {

enum class StorageRefLayout {
  // ('storage', storage_type, key, location, numel): the key names the
  // archive record (data/<key>) that holds the bytes.
  kZip,
  // ('storage', storage_type, root_key, location, numel, view_metadata): the
  // legacy format, view_metadata None or (view_key, offset, numel).
  kLegacy,
};

// A legacy view of a root storage, in elements of the root's dtype.
struct StorageRefView {
  std::string key;
  uint64_t offset = 0;
  uint64_t numel = 0;
};

struct StorageRef {
  std::string key;
  std::string location;  // as written: "cpu", "cuda:0"
  // torch.UntypedStorage (zip layout only) holds bytes: dtype uint8, and the
  // tensors on it carry their own dtypes.
  bool untyped = false;
  DType dtype = DType::kUInt8;
  uint64_t numel = 0;                  // elements of dtype
  uint64_t num_bytes = 0;              // numel times the element size
  std::optional<StorageRefView> view;  // legacy layout only
};

// The storage reference a persistent id makes, or INVALID_ARGUMENT saying
// what is wrong with it (no file or offset: the unpickler adds both). Storage
// types may be storage classes (torch.FloatStorage, ...) or dtypes; keys may
// be str, bytes or int, locations str, bytes, int or torch.device.
absl::StatusOr<StorageRef> ParseStorageRef(const PyValue* pid,
                                           StorageRefLayout layout);

// A storage key as text: str and bytes as they are, ints in decimal. False
// for any other value.
bool StorageKeyText(const PyValue* v, std::string* out);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_FORMAT_STORAGE_REF_H_
