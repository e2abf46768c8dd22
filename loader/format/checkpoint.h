// The one description every format reader produces: a tensor table over a
// storage table. Nothing here owns tensor bytes; storages point at byte ranges
// of the checkpoint file.
#ifndef WEIGHTD_LOADER_FORMAT_CHECKPOINT_H_
#define WEIGHTD_LOADER_FORMAT_CHECKPOINT_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "loader/common/json.h"
#include "loader/format/dtype.h"

namespace weightd {

enum class CheckpointFormat {
  kTorchZip,
  kTorchLegacy,
  kTorchScript,
  kSafetensors
};

// "torch-zip", "torch-legacy", "torchscript", "safetensors" (the JSON contract
// in DESIGN.md).
const char* CheckpointFormatName(CheckpointFormat format);

enum class ByteOrder { kLittle, kBig };

struct StorageInfo {
  std::string
      key;  // persistent-id key ("0", "1", ...) or safetensors tensor name
  std::string location;  // saved location tag exactly as saved: "cpu",
                         // "cuda:1", "mps", ...
  DType dtype = DType::kUInt8;
  uint64_t file_offset =
      0;  // where the storage's bytes start in the checkpoint file
  uint64_t num_bytes = 0;
  ByteOrder byte_order = ByteOrder::kLittle;
  // Set only for a storage record that is compressed in its archive (torch.save
  // never does this, but a re-zipped file may): the inflated bytes. file_offset
  // is then meaningless.
  std::shared_ptr<const std::string> inflated;
};

struct TensorInfo {
  std::string name;  // dotted path, equal to state_dict() keys for modules and
                     // state dicts
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;   // elements
  std::vector<int64_t> stride;  // elements
  int64_t storage_offset = 0;   // elements
  size_t storage_index = 0;     // index into Checkpoint::storages
  bool requires_grad = false;
  // conj/neg bits from torch's rebuild metadata; bytes are stored unresolved,
  // as torch does.
  bool is_conj = false;
  bool is_neg = false;

  int64_t NumElements() const;
  // Bytes from the first to one past the last element the view touches,
  // relative to the start of the storage; 0 for an empty tensor. Validated by
  // the readers against num_bytes.
  uint64_t ExtentBytes() const;
};

struct Checkpoint {
  CheckpointFormat format = CheckpointFormat::kTorchZip;
  std::vector<TensorInfo> tensors;
  std::vector<StorageInfo> storages;
  // TorchScript `extra/` files (torch.jit.save's _extra_files), by name without
  // the prefix (valid UTF-8). Contents are bytes, not necessarily UTF-8.
  std::map<std::string, std::string> extra_files;
  // TorchScript `code/` listing: file name to source text. Never executed.
  std::map<std::string, std::string> code;
  // Non-tensor values (epochs, strings, config dicts, safetensors
  // __metadata__), with each tensor replaced by {"__tensor__": name}.
  Json metadata;
};

}  // namespace weightd

#endif  // WEIGHTD_LOADER_FORMAT_CHECKPOINT_H_
