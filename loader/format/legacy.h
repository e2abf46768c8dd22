// The legacy torch.save format (PyTorch < 1.6, or
// _use_new_zipfile_serialization=False): magic number, protocol version and
// sys_info pickles, the object pickle, the storage key list, then raw
// storages each behind an 8-byte little-endian element count.
#ifndef WEIGHTD_LOADER_FORMAT_LEGACY_H_
#define WEIGHTD_LOADER_FORMAT_LEGACY_H_

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "loader/format/checkpoint.h"
#include "loader/format/read_options.h"

namespace weightd {

// True when the bytes start with a pickle of torch's legacy magic number.
bool LooksLikeTorchLegacy(absl::string_view bytes);
// True for a POSIX tar archive (the pre-0.4 torch.save format).
bool LooksLikeTar(absl::string_view bytes);

absl::StatusOr<Checkpoint> ReadTorchLegacy(absl::string_view file_bytes,
                                           const ReadOptions& options);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_FORMAT_LEGACY_H_
