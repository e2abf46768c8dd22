// Fuzzes the zip reader and the torch zip / TorchScript readers on top of it,
// then what weightctl inspect --json --hash does with a checkpoint that
// reads: hashing every tensor (bounded by what the input holds, however many
// or however expanded its views) and the JSON listing, which must always be
// valid JSON (extra file names and binary contents included).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <vector>

#include "client/listing.h"
#include "loader/common/json.h"
#include "loader/format/reader.h"
#include "loader/format/tensor_bytes.h"
#include "loader/format/zip.h"

namespace {

const uint8_t* StorageBytes(const weightd::StorageInfo& s,
                            absl::string_view file) {
  if (s.inflated) return reinterpret_cast<const uint8_t*>(s.inflated->data());
  return reinterpret_cast<const uint8_t*>(file.data()) + s.file_offset;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto zip = weightd::ZipArchive::Open(bytes);
  if (zip.ok()) {
    for (const weightd::ZipEntry& e : zip->entries()) {
      if (e.uncompressed_size < (1 << 20)) (void)zip->Extract(e);
    }
  }
  weightd::ReadOptions options;
  options.file_name = "fuzz.pt";
  auto ckpt = weightd::ReadCheckpoint(bytes, options);
  if (!ckpt.ok()) return 0;
  weightd::CheckpointHasher hasher(
      weightd::CheckpointHasher::HeldBytes(*ckpt, bytes.size()));
  std::vector<weightd::ListedTensor> listed;
  for (const weightd::TensorInfo& t : ckpt->tensors) {
    const weightd::StorageInfo& s = ckpt->storages[t.storage_index];
    auto h = hasher.Sha256Hex(t, s, StorageBytes(s, bytes));
    listed.push_back(
        {&t, h.ok() ? std::optional<std::string>(*h) : std::nullopt});
  }
  if (hasher.hashed_bytes() > hasher.budget_bytes()) abort();
  const std::string json =
      weightd::TensorListingJson(weightd::CheckpointFormatName(ckpt->format),
                                 listed, ckpt->extra_files, true)
          .Dump();
  if (!weightd::ParseJson(json).ok()) abort();
  return 0;
}
