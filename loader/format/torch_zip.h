// torch.save (zip, PyTorch >= 1.6) and torch.jit.save archives.
#ifndef WEIGHTD_LOADER_FORMAT_TORCH_ZIP_H_
#define WEIGHTD_LOADER_FORMAT_TORCH_ZIP_H_

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "loader/format/checkpoint.h"
#include "loader/format/read_options.h"
#include "loader/format/zip.h"

namespace weightd {

// Reads a zip checkpoint; a TorchScript archive (one with constants.pkl) is
// read as such. `file_bytes` is the whole file (storage offsets refer to it).
absl::StatusOr<Checkpoint> ReadTorchZip(absl::string_view file_bytes,
                                        const ReadOptions& options);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_FORMAT_TORCH_ZIP_H_
