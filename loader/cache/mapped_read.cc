#include "loader/cache/mapped_read.h"

namespace weightd {

absl::Status ReadMapped(const MappedFile& file,
                        absl::FunctionRef<absl::Status()> read) {
  (void)file;
  return read();
}

}  // namespace weightd
