#include "loader/io/reader.h"

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
  return absl::OkStatus();
}

bool CanReadDirect(const ReadRequest& request) {
  return request.direct_fd >= 0 && request.offset % kDirectIoAlignment == 0 &&
         request.length % kDirectIoAlignment == 0 &&
         reinterpret_cast<uintptr_t>(request.buffer) % kDirectIoAlignment == 0;
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
