// Positioned reads with several requests in flight.
//
// A pipeline keeps up to queue_depth() reads outstanding: Submit() queues one
// read (with a caller tag), Wait() blocks until at least some have finished and
// hands back their results. Implementations: io_uring (io_uring_reader.h) and
// a pread thread pool (pread_reader.h); CreateReader() (reader_factory.h)
// picks one at start.
//
// A Reader is driven by one thread at a time (it is not thread-safe); every
// load uses its own. Destroying a Reader waits for the reads still in flight,
// so their buffers must outlive it.
#ifndef WEIGHTD_LOADER_IO_READER_H_
#define WEIGHTD_LOADER_IO_READER_H_

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace weightd {

// O_DIRECT reads need offset, length and buffer aligned to this unless the
// request names its file's own alignment.
inline constexpr uint64_t kDirectIoAlignment = 4096;

struct ReadRequest {
  int fd = -1;
  // A descriptor for the same file opened with O_DIRECT, or -1. When the
  // buffer and the offset are equally misaligned (buffer - offset is a
  // multiple of the alignment), the aligned middle of the range is read
  // through it and the unaligned head and tail through `fd`. A direct read
  // the file system refuses (EINVAL) is redone through `fd`.
  int direct_fd = -1;
  // The alignment direct reads of this file need (a power of two; 0:
  // kDirectIoAlignment), e.g. DirectFd::alignment (direct_io.h).
  uint32_t direct_alignment = 0;
  // Caps the bytes of each system call (SQE) this request becomes, below the
  // reader's own max_request_bytes(); 0: the reader's.
  size_t max_piece_bytes = 0;
  uint64_t offset = 0;
  void* buffer = nullptr;
  size_t length = 0;
  uint64_t tag = 0;  // the caller's, returned in the result
};

struct ReadResult {
  uint64_t tag = 0;
  // Not OK when the read failed (the call and errno are named).
  absl::Status status;
  // Bytes read: `length` unless the file ended first (status stays OK; the
  // caller decides whether a short read is an error). Short reads before end
  // of file, EINTR and EAGAIN are retried inside the reader.
  size_t bytes_read = 0;
  // Of those, read through direct_fd.
  size_t direct_bytes = 0;
  // A direct read came back EINVAL and was redone buffered.
  bool direct_refused = false;
};

class Reader {
 public:
  virtual ~Reader() = default;

  // "io_uring" or "pread".
  virtual std::string name() const = 0;
  // Why this backend was chosen (e.g. "io_uring_queue_init: Operation not
  // permitted; falling back to pread").
  virtual std::string reason() const = 0;
  // How many reads may be in flight at once.
  virtual int queue_depth() const = 0;
  virtual size_t in_flight() const = 0;

  // Registers long-lived buffers (the pinned staging ring) so reads into them
  // skip per-read page pinning (io_uring fixed buffers). Reads into other
  // memory still work. Registration that the kernel refuses (RLIMIT_MEMLOCK)
  // is not an error: buffers_registered() stays false. Replaces any earlier
  // registration; needs no reads in flight.
  virtual absl::Status RegisterBuffers(absl::Span<const iovec> buffers) {
    return absl::OkStatus();
  }
  virtual void UnregisterBuffers() {}
  virtual bool buffers_registered() const { return false; }

  // Registers descriptors that many reads will use (io_uring fixed files:
  // no per-read file lookup). They must stay open until UnregisterFiles();
  // reads on other descriptors still work. Refusal is not an error
  // (files_registered() stays false). Needs no reads in flight.
  virtual absl::Status RegisterFiles(absl::Span<const int> fds) {
    return absl::OkStatus();
  }
  virtual void UnregisterFiles() {}
  virtual bool files_registered() const { return false; }

  // The most bytes one read system call (or SQE) asks for; longer requests
  // are split into several reads in flight at once. 0: no cap.
  virtual size_t max_request_bytes() const { return 0; }

  // Queues one read. FAILED_PRECONDITION when queue_depth() reads are already
  // in flight (Wait() first); INVALID_ARGUMENT for a bad request. The result
  // of an accepted read always comes back through Wait().
  virtual absl::Status Submit(const ReadRequest& request) = 0;

  // Blocks until at least min(min_results, in_flight()) reads have finished
  // and appends every finished result to `results` (possibly more than asked
  // for). min_results == 0 only collects what has already finished. A non-OK
  // return is a failure of the reader itself, not of one read.
  virtual absl::Status Wait(size_t min_results,
                            std::vector<ReadResult>* results) = 0;
};

// Reads `length` bytes at `offset` synchronously through `reader` (which must
// have nothing else in flight). OUT_OF_RANGE if the file ends first.
absl::Status ReadFully(Reader* reader, int fd, uint64_t offset, void* buffer,
                       size_t length);

// Checks a request's fields; shared by the implementations.
absl::Status ValidateReadRequest(const ReadRequest& request);

// Whether part of the request goes through its O_DIRECT descriptor.
bool CanReadDirect(const ReadRequest& request);

// One system call's worth of a request.
struct ReadPiece {
  bool direct = false;
  uint64_t offset = 0;
  uint8_t* buffer = nullptr;
  size_t length = 0;
};
// The request as pieces in file order: the unaligned head and tail buffered,
// the aligned middle direct (when CanReadDirect), each part cut into pieces
// of at most `max_piece` bytes (0: the kernel's cap of one read; direct
// pieces round it down to the alignment). Appends to `out`.
void SplitRead(const ReadRequest& request, size_t max_piece,
               std::vector<ReadPiece>* out);

// The piece cap for `request` on a reader whose own cap is `reader_max`.
inline size_t EffectiveMaxPiece(const ReadRequest& request, size_t reader_max) {
  if (request.max_piece_bytes == 0) return reader_max;
  if (reader_max == 0) return request.max_piece_bytes;
  return request.max_piece_bytes < reader_max ? request.max_piece_bytes
                                              : reader_max;
}

// The alignment of the request's direct reads.
inline uint64_t DirectAlignment(const ReadRequest& request) {
  return request.direct_alignment == 0 ? kDirectIoAlignment
                                       : request.direct_alignment;
}

}  // namespace weightd

#endif  // WEIGHTD_LOADER_IO_READER_H_
