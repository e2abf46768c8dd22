// Read-only zip (and zip64) archive over bytes already in memory (a mapped
// file). Stored records are handed out as zero-copy byte ranges; deflated ones
// are inflated on request.
#ifndef WEIGHTD_LOADER_FORMAT_ZIP_H_
#define WEIGHTD_LOADER_FORMAT_ZIP_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace weightd {

struct ZipEntry {
  std::string name;
  uint16_t method = 0;  // 0 stored, 8 deflated
  uint16_t flags = 0;
  uint32_t crc32 = 0;
  uint64_t compressed_size = 0;
  uint64_t uncompressed_size = 0;
  uint64_t local_header_offset = 0;
  uint64_t data_offset = 0;  // first byte of the (possibly compressed) data
};

struct ZipLimits {
  uint64_t max_entries = 1 << 20;
  uint64_t max_inflated_size = 1ull << 30;  // per extracted record
};

class ZipArchive {
 public:
  // Parses the central directory and every local header. `bytes` must outlive
  // the archive. Errors are plain reasons ("missing end of central directory");
  // callers prefix the file name.
  static absl::StatusOr<ZipArchive> Open(absl::string_view bytes,
                                         const ZipLimits& limits = {});

  const std::vector<ZipEntry>& entries() const { return entries_; }
  const ZipEntry* Find(absl::string_view name) const;

  // Zero-copy view of a stored record's data. Refuses compressed records.
  absl::StatusOr<absl::string_view> StoredData(const ZipEntry& entry) const;
  // The record's contents: stored ones copied, deflated ones inflated (size and
  // CRC checked).
  absl::StatusOr<std::string> Extract(const ZipEntry& entry) const;
  // Checks a stored record's CRC-32 (reads all its bytes).
  absl::Status VerifyCrc(const ZipEntry& entry) const;

 private:
  absl::string_view bytes_;
  ZipLimits limits_;
  std::vector<ZipEntry> entries_;
  absl::flat_hash_map<std::string, size_t> by_name_;
};

// True when `bytes` starts with a zip local file header or is an empty zip.
bool LooksLikeZip(absl::string_view bytes);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_FORMAT_ZIP_H_
