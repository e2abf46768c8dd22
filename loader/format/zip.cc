#include "loader/format/zip.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace weightd {
namespace {

constexpr uint32_t kLocalSig = 0x04034b50;
constexpr uint32_t kCentralSig = 0x02014b50;
constexpr uint32_t kEocdSig = 0x06054b50;
constexpr uint32_t kEocd64Sig = 0x06064b50;
constexpr uint32_t kLocatorSig = 0x07064b50;
constexpr size_t kEocdSize = 22;
constexpr size_t kLocatorSize = 20;
constexpr size_t kEocd64Size = 56;
constexpr size_t kCentralSize = 46;
constexpr size_t kLocalSize = 30;

uint16_t U16(const char* p) {
  const unsigned char* u = reinterpret_cast<const unsigned char*>(p);
  return static_cast<uint16_t>(u[0] | (u[1] << 8));
}
uint32_t U32(const char* p) {
  const unsigned char* u = reinterpret_cast<const unsigned char*>(p);
  return static_cast<uint32_t>(u[0]) | (static_cast<uint32_t>(u[1]) << 8) |
         (static_cast<uint32_t>(u[2]) << 16) |
         (static_cast<uint32_t>(u[3]) << 24);
}
uint64_t U64(const char* p) {
  return static_cast<uint64_t>(U32(p)) |
         (static_cast<uint64_t>(U32(p + 4)) << 32);
}

absl::Status Corrupt(absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("corrupt zip archive: ", why));
}

}  // namespace

bool LooksLikeZip(absl::string_view bytes) {
  return bytes.size() >= 4 &&
         (U32(bytes.data()) == kLocalSig || U32(bytes.data()) == kEocdSig);
}

absl::StatusOr<ZipArchive> ZipArchive::Open(absl::string_view bytes,
                                            const ZipLimits& limits) {
  ZipArchive zip;
  zip.bytes_ = bytes;
  zip.limits_ = limits;
  const uint64_t size = bytes.size();
  if (size < kEocdSize) {
    return Corrupt(absl::StrCat("file is ", size,
                                " bytes, too short for an end of central "
                                "directory record (truncated?)"));
  }
  // Find the end of central directory record scanning back over a comment.
  uint64_t eocd = UINT64_MAX;
  uint64_t lowest = size > kEocdSize + 0xFFFF ? size - kEocdSize - 0xFFFF : 0;
  for (uint64_t pos = size - kEocdSize + 1; pos-- > lowest;) {
    if (U32(bytes.data() + pos) == kEocdSig) {
      uint16_t comment_len = U16(bytes.data() + pos + 20);
      if (pos + kEocdSize + comment_len <= size) {
        eocd = pos;
        break;
      }
    }
  }
  if (eocd == UINT64_MAX) {
    return Corrupt("missing end of central directory record (truncated?)");
  }
  const char* e = bytes.data() + eocd;
  uint64_t disk = U16(e + 4), cd_disk = U16(e + 6);
  uint64_t entries_here = U16(e + 8), entries_total = U16(e + 10);
  uint64_t cd_size = U32(e + 12), cd_offset = U32(e + 16);
  uint64_t cd_limit = eocd;  // the central directory must end before this
  bool zip64 = entries_total == 0xFFFF || entries_here == 0xFFFF ||
               cd_size == 0xFFFFFFFF || cd_offset == 0xFFFFFFFF;
  if (eocd >= kLocatorSize &&
      U32(bytes.data() + eocd - kLocatorSize) == kLocatorSig) {
    const char* loc = bytes.data() + eocd - kLocatorSize;
    uint64_t eocd64 = U64(loc + 8);
    if (U32(loc + 16) > 1) return Corrupt("multi-disk zip64 archive");
    if (eocd64 > eocd - kLocatorSize ||
        eocd - kLocatorSize - eocd64 < kEocd64Size) {
      return Corrupt("zip64 end of central directory outside the file");
    }
    const char* z = bytes.data() + eocd64;
    if (U32(z) != kEocd64Sig) {
      return Corrupt("bad zip64 end of central directory signature");
    }
    disk = U32(z + 16);
    cd_disk = U32(z + 20);
    entries_here = U64(z + 24);
    entries_total = U64(z + 32);
    cd_size = U64(z + 40);
    cd_offset = U64(z + 48);
    cd_limit = eocd64;
  } else if (zip64) {
    return Corrupt("zip64 fields without a zip64 end of central directory");
  }
  if (disk != 0 || cd_disk != 0 || entries_here != entries_total) {
    return Corrupt("multi-disk archives are not supported");
  }
  if (entries_total > limits.max_entries) {
    return Corrupt(
        absl::StrCat(entries_total, " entries, limit is ", limits.max_entries));
  }
  if (cd_offset > cd_limit || cd_size > cd_limit - cd_offset) {
    return Corrupt(absl::StrCat("central directory (offset ", cd_offset, ", ",
                                cd_size,
                                " bytes) lies outside the file (truncated?)"));
  }
  // Every entry needs at least 46 bytes.
  if (entries_total > cd_size / kCentralSize + 1) {
    return Corrupt("entry count larger than the central directory");
  }
  zip.entries_.reserve(entries_total);
  zip.by_name_.reserve(entries_total);
  uint64_t pos = cd_offset;
  const uint64_t cd_end = cd_offset + cd_size;
  for (uint64_t i = 0; i < entries_total; ++i) {
    if (cd_end - pos < kCentralSize) {
      return Corrupt(absl::StrCat("central directory entry ", i, " truncated"));
    }
    const char* c = bytes.data() + pos;
    if (U32(c) != kCentralSig) {
      return Corrupt(
          absl::StrCat("bad central directory signature at byte ", pos));
    }
    ZipEntry entry;
    entry.flags = U16(c + 8);
    entry.method = U16(c + 10);
    entry.crc32 = U32(c + 16);
    entry.compressed_size = U32(c + 20);
    entry.uncompressed_size = U32(c + 24);
    uint64_t name_len = U16(c + 28), extra_len = U16(c + 30),
             comment_len = U16(c + 32);
    uint64_t entry_disk = U16(c + 34);
    entry.local_header_offset = U32(c + 42);
    if (cd_end - pos - kCentralSize < name_len + extra_len + comment_len) {
      return Corrupt(absl::StrCat("central directory entry ", i, " truncated"));
    }
    entry.name.assign(c + kCentralSize, name_len);
    // zip64 extended information: only the fields saturated above, in order.
    const char* x = c + kCentralSize + name_len;
    const char* x_end = x + extra_len;
    while (x_end - x >= 4) {
      uint16_t id = U16(x), len = U16(x + 2);
      if (x_end - x - 4 < len) {
        return Corrupt(absl::StrCat("extra field of \"", entry.name,
                                    "\" overruns its entry"));
      }
      if (id == 0x0001) {
        const char* f = x + 4;
        const char* f_end = f + len;
        auto take = [&](uint64_t* v) -> bool {
          if (*v != 0xFFFFFFFF) return true;
          if (f_end - f < 8) return false;
          *v = U64(f);
          f += 8;
          return true;
        };
        if (!take(&entry.uncompressed_size) || !take(&entry.compressed_size) ||
            !take(&entry.local_header_offset)) {
          return Corrupt(
              absl::StrCat("short zip64 extra field in \"", entry.name, "\""));
        }
        if (entry_disk == 0xFFFF) {
          if (f_end - f < 4) return Corrupt("short zip64 extra field");
          entry_disk = U32(f);
        }
      }
      x += 4 + len;
    }
    if (entry_disk != 0)
      return Corrupt("multi-disk archives are not supported");
    if (entry.flags & 1) {
      return Corrupt(absl::StrCat(
          "\"", entry.name, "\" is encrypted; encryption is not supported"));
    }
    if (entry.method != 0 && entry.method != 8) {
      return Corrupt(absl::StrCat("\"", entry.name,
                                  "\" uses unsupported compression method ",
                                  entry.method));
    }
    if (entry.method == 0 && entry.compressed_size != entry.uncompressed_size) {
      return Corrupt(absl::StrCat("stored record \"", entry.name,
                                  "\" has different compressed (",
                                  entry.compressed_size, ") and uncompressed (",
                                  entry.uncompressed_size, ") sizes"));
    }
    // Local header: its own name and extra lengths decide where data starts.
    uint64_t lh = entry.local_header_offset;
    if (lh > cd_offset || cd_offset - lh < kLocalSize) {
      return Corrupt(absl::StrCat("local header of \"", entry.name,
                                  "\" lies outside the file data"));
    }
    const char* l = bytes.data() + lh;
    if (U32(l) != kLocalSig) {
      return Corrupt(
          absl::StrCat("bad local header signature for \"", entry.name, "\""));
    }
    uint64_t l_name = U16(l + 26), l_extra = U16(l + 28);
    if (cd_offset - lh - kLocalSize < l_name + l_extra) {
      return Corrupt(absl::StrCat("local header of \"", entry.name,
                                  "\" overruns the file data"));
    }
    if (absl::string_view(l + kLocalSize, l_name) != entry.name) {
      return Corrupt(absl::StrCat("local header name does not match \"",
                                  entry.name, "\""));
    }
    entry.data_offset = lh + kLocalSize + l_name + l_extra;
    if (entry.compressed_size > cd_offset - entry.data_offset) {
      return Corrupt(absl::StrCat(
          "\"", entry.name, "\" (", entry.compressed_size, " bytes at ",
          entry.data_offset, ") extends past the file data (truncated?)"));
    }
    if (!zip.by_name_.emplace(entry.name, zip.entries_.size()).second) {
      return Corrupt(absl::StrCat("duplicate entry name \"", entry.name, "\""));
    }
    zip.entries_.push_back(std::move(entry));
    pos += kCentralSize + name_len + extra_len + comment_len;
  }
  // Entries may not overlap one another.
  std::vector<const ZipEntry*> order;
  order.reserve(zip.entries_.size());
  for (const ZipEntry& e2 : zip.entries_) order.push_back(&e2);
  std::sort(order.begin(), order.end(),
            [](const ZipEntry* a, const ZipEntry* b) {
              return a->local_header_offset < b->local_header_offset;
            });
  for (size_t i = 1; i < order.size(); ++i) {
    const ZipEntry* prev = order[i - 1];
    if (prev->data_offset + prev->compressed_size >
        order[i]->local_header_offset) {
      return Corrupt(absl::StrCat("entries \"", prev->name, "\" and \"",
                                  order[i]->name, "\" overlap"));
    }
  }
  return zip;
}

const ZipEntry* ZipArchive::Find(absl::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &entries_[it->second];
}

absl::StatusOr<absl::string_view> ZipArchive::StoredData(
    const ZipEntry& entry) const {
  if (entry.method != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("record \"", entry.name, "\" is compressed"));
  }
  return bytes_.substr(entry.data_offset, entry.compressed_size);
}

absl::StatusOr<std::string> ZipArchive::Extract(const ZipEntry& entry) const {
  absl::string_view raw =
      bytes_.substr(entry.data_offset, entry.compressed_size);
  if (entry.method == 0) return std::string(raw);
  if (entry.uncompressed_size > limits_.max_inflated_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "record \"", entry.name, "\" inflates to ", entry.uncompressed_size,
        " bytes, limit is ", limits_.max_inflated_size));
  }
  std::string out(entry.uncompressed_size, '\0');
  z_stream zs;
  memset(&zs, 0, sizeof(zs));
  if (inflateInit2(&zs, -MAX_WBITS) != Z_OK) {
    return absl::InternalError("inflateInit2 failed");
  }
  const char* in = raw.data();
  uint64_t in_left = raw.size();
  char* outp = &out[0];
  uint64_t out_left = out.size();
  char spare[1];
  int rc = Z_OK;
  while (rc != Z_STREAM_END) {
    bool to_spare = out_left == 0;
    uInt in_chunk = static_cast<uInt>(std::min<uint64_t>(in_left, 1u << 30));
    uInt out_chunk =
        to_spare ? 1
                 : static_cast<uInt>(std::min<uint64_t>(out_left, 1u << 30));
    zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in));
    zs.avail_in = in_chunk;
    zs.next_out = reinterpret_cast<Bytef*>(to_spare ? spare : outp);
    zs.avail_out = out_chunk;
    rc = inflate(&zs, Z_NO_FLUSH);
    uint64_t consumed = in_chunk - zs.avail_in;
    uint64_t produced = out_chunk - zs.avail_out;
    in += consumed;
    in_left -= consumed;
    if (to_spare && produced > 0) {
      inflateEnd(&zs);
      return absl::InvalidArgumentError(absl::StrCat(
          "record \"", entry.name, "\" inflates to more than its declared ",
          entry.uncompressed_size, " bytes"));
    }
    if (!to_spare) {
      outp += produced;
      out_left -= produced;
    }
    if (rc == Z_STREAM_END) break;
    if (rc != Z_OK || (consumed == 0 && produced == 0)) {
      inflateEnd(&zs);
      return absl::InvalidArgumentError(
          absl::StrCat("record \"", entry.name, "\" has corrupt deflate data"));
    }
  }
  inflateEnd(&zs);
  if (out_left != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "record \"", entry.name, "\" inflates to fewer than its declared ",
        entry.uncompressed_size, " bytes"));
  }
  uLong crc = crc32(0L, Z_NULL, 0);
  const char* p = out.data();
  uint64_t left = out.size();
  while (left > 0) {
    uInt chunk = static_cast<uInt>(std::min<uint64_t>(left, 1u << 30));
    crc = crc32(crc, reinterpret_cast<const Bytef*>(p), chunk);
    p += chunk;
    left -= chunk;
  }
  if (crc != entry.crc32) {
    return absl::InvalidArgumentError(
        absl::StrCat("record \"", entry.name, "\" fails its CRC-32 check"));
  }
  return out;
}

absl::Status ZipArchive::VerifyCrc(const ZipEntry& entry) const {
  if (entry.method != 0) return Extract(entry).status();
  absl::string_view raw =
      bytes_.substr(entry.data_offset, entry.compressed_size);
  uLong crc = crc32(0L, Z_NULL, 0);
  while (!raw.empty()) {
    uInt chunk = static_cast<uInt>(std::min<size_t>(raw.size(), 1u << 30));
    crc = crc32(crc, reinterpret_cast<const Bytef*>(raw.data()), chunk);
    raw.remove_prefix(chunk);
  }
  if (crc != entry.crc32) {
    return absl::InvalidArgumentError(
        absl::StrCat("record \"", entry.name, "\" fails its CRC-32 check"));
  }
  return absl::OkStatus();
}

}  // namespace weightd
