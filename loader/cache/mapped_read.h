// Reads of a mapped checkpoint that survive the file changing under the
// mapping: the one place the loader's cache layer reads mapped bytes through.
#ifndef WEIGHTD_LOADER_CACHE_MAPPED_READ_H_
#define WEIGHTD_LOADER_CACHE_MAPPED_READ_H_

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "loader/io/mapped_file.h"

namespace weightd {

// Runs `read`, which reads `file`'s mapping on this thread, and returns its
// status; DATA_LOSS naming the file and offset instead when the file was
// truncated or became unreadable under the mapping.
absl::Status ReadMapped(const MappedFile& file,
                        absl::FunctionRef<absl::Status()> read);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_CACHE_MAPPED_READ_H_
