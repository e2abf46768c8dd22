#include "loader/io/reader.h"

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"

namespace weightd {

absl::Status ValidateReadRequest(const ReadRequest& request) {
  if (request.fd < 0) {
    return absl::InvalidArgumentError("read request without a file descriptor");
  }
  if (request.buffer == nullptr && request.length > 0) {
    return absl::InvalidArgumentError("read request without a buffer");
  }
  if (request.offset > static_cast<uint64_t>(INT64_MAX) ||
      request.length > static_cast<uint64_t>(INT64_MAX) - request.offset) {
    return absl::InvalidArgumentError(
        absl::StrCat("read request out of range: offset ", request.offset,
                     " length ", request.length));
  }
  const uint32_t a = request.direct_alignment;
  if (a != 0 && ((a & (a - 1)) != 0 || a > (1u << 20))) {
    return absl::InvalidArgumentError(
        absl::StrCat("read request: direct alignment ", a,
                     " is not a power of two up to 1 MiB"));
  }
  return absl::OkStatus();
}

namespace {

// The kernel caps one read at MAX_RW_COUNT (INT_MAX & PAGE_MASK).
constexpr size_t kKernelMaxRead = 0x7ffff000;

// Bytes of the unaligned head and of the aligned middle of a direct-capable
// request (the tail is the rest); middle 0 when it cannot read direct.
void DirectParts(const ReadRequest& r, uint64_t* head, uint64_t* middle) {
  *head = r.length;
  *middle = 0;
  if (r.direct_fd < 0) return;
  const uint64_t a = DirectAlignment(r);
  const uint64_t misaligned = r.offset % a;
  if (reinterpret_cast<uintptr_t>(r.buffer) % a != misaligned) return;
  const uint64_t h = misaligned == 0 ? 0 : a - misaligned;
  if (h >= r.length) return;
  const uint64_t m = (r.length - h) / a * a;
  if (m == 0) return;
  *head = h;
  *middle = m;
}

void AppendPieces(bool direct, uint64_t offset, uint8_t* buffer,
                  uint64_t length, uint64_t max_piece,
                  std::vector<ReadPiece>* out) {
  while (length > 0) {
    ReadPiece p;
    p.direct = direct;
    p.offset = offset;
    p.buffer = buffer;
    p.length = static_cast<size_t>(std::min(length, max_piece));
    out->push_back(p);
    offset += p.length;
    buffer += p.length;
    length -= p.length;
  }
}

}  // namespace

bool CanReadDirect(const ReadRequest& request) {
  uint64_t head, middle;
  DirectParts(request, &head, &middle);
  return middle > 0;
}

void SplitRead(const ReadRequest& r, size_t max_piece,
               std::vector<ReadPiece>* out) {
  uint64_t cap = max_piece == 0 ? kKernelMaxRead
                                : std::min<uint64_t>(max_piece, kKernelMaxRead);
  if (r.length == 0) {
    ReadPiece p;
    p.offset = r.offset;
    p.buffer = static_cast<uint8_t*>(r.buffer);
    out->push_back(p);
    return;
  }
  uint64_t head, middle;
  DirectParts(r, &head, &middle);
  uint8_t* buf = static_cast<uint8_t*>(r.buffer);
  AppendPieces(false, r.offset, buf, head, cap, out);
  if (middle > 0) {
    const uint64_t a = DirectAlignment(r);
    AppendPieces(true, r.offset + head, buf + head, middle,
                 std::max<uint64_t>(cap / a * a, a), out);
  }
  const uint64_t tail_start = head + middle;
  AppendPieces(false, r.offset + tail_start, buf + tail_start,
               r.length - tail_start, cap, out);
}

absl::Status ReadFully(Reader* reader, int fd, uint64_t offset, void* buffer,
                       size_t length) {
  if (reader->in_flight() != 0) {
    return absl::FailedPreconditionError("ReadFully: reader is busy");
  }
  ReadRequest request;
  request.fd = fd;
  request.offset = offset;
  request.buffer = buffer;
  request.length = length;
  request.tag = 1;
  absl::Status s = reader->Submit(request);
  if (!s.ok()) return s;
  std::vector<ReadResult> results;
  s = reader->Wait(1, &results);
  if (!s.ok()) return s;
  if (results.size() != 1) {
    return absl::InternalError("ReadFully: expected one result");
  }
  if (!results[0].status.ok()) return results[0].status;
  if (results[0].bytes_read != length) {
    return absl::OutOfRangeError(
        absl::StrCat("short read at offset ", offset, ": wanted ", length,
                     " bytes, file ended after ", results[0].bytes_read));
  }
  return absl::OkStatus();
}

}  // namespace weightd
