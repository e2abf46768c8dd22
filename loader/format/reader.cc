#include "loader/format/reader.h"

#include "absl/strings/str_cat.h"
#include "loader/format/legacy.h"
#include "loader/format/pytree.h"
#include "loader/format/safetensors.h"
#include "loader/format/torch_zip.h"
#include "loader/format/zip.h"

namespace weightd {

absl::StatusOr<Checkpoint> ReadCheckpoint(absl::string_view file_bytes,
                                          const ReadOptions& options) {
  if (file_bytes.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(FilePrefix(options), "file is empty"));
  }
  if (LooksLikeZip(file_bytes)) return ReadTorchZip(file_bytes, options);
  if (LooksLikeTorchLegacy(file_bytes)) {
    return ReadTorchLegacy(file_bytes, options);
  }
  if (LooksLikeSafetensors(file_bytes)) {
    return ReadSafetensors(file_bytes, options);
  }
  if (LooksLikeTar(file_bytes)) {
    return absl::UnimplementedError(absl::StrCat(
        FilePrefix(options),
        "unsupported: tar-based torch.save format (PyTorch < 0.4); re-save it "
        "with a newer PyTorch"));
  }
  return absl::InvalidArgumentError(absl::StrCat(
      FilePrefix(options),
      "unrecognized format (not a PyTorch zip, legacy torch.save, TorchScript "
      "or safetensors file)"));
}

}  // namespace weightd
