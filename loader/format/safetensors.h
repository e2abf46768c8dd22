// safetensors: 8-byte little-endian header size, a JSON header, then the
// tensors' bytes back to back.
#ifndef WEIGHTD_LOADER_FORMAT_SAFETENSORS_H_
#define WEIGHTD_LOADER_FORMAT_SAFETENSORS_H_

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "loader/format/checkpoint.h"
#include "loader/format/read_options.h"

namespace weightd {

// Header size plausible and the header starts with '{'.
bool LooksLikeSafetensors(absl::string_view bytes);

absl::StatusOr<Checkpoint> ReadSafetensors(absl::string_view file_bytes,
                                           const ReadOptions& options);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_FORMAT_SAFETENSORS_H_
