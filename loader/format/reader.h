// The entry point: detects the format from the bytes and reads the metadata.
#ifndef WEIGHTD_LOADER_FORMAT_READER_H_
#define WEIGHTD_LOADER_FORMAT_READER_H_

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "loader/format/checkpoint.h"
#include "loader/format/read_options.h"

namespace weightd {

// Formats: torch zip (torch.save >= 1.6, any archive prefix), TorchScript
// (torch.jit.save), legacy torch.save, safetensors. Detection looks at bytes,
// never at the name. Storage offsets in the result refer to `file_bytes`,
// which the caller keeps mapped. Errors name options.file_name and the reason.
absl::StatusOr<Checkpoint> ReadCheckpoint(absl::string_view file_bytes,
                                          const ReadOptions& options);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_FORMAT_READER_H_
