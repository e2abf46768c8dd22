#include "loader/cache/mapped_read.h"

namespace weightd {

absl::Status ReadMapped(const MappedFile& file,
                        absl::FunctionRef<absl::Status()> read) {
  absl::Status result;
  absl::Status guarded = file.GuardedRead([&] { result = read(); });
  if (!guarded.ok()) return guarded;  // DATA_LOSS wins over what was read
  return result;
}

}  // namespace weightd
