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

// O_DIRECT reads need offset, length and buffer aligned to this.
inline constexpr uint64_t kDirectIoAlignment = 4096;

struct ReadRequest {
  int fd = -1;
  // A descriptor for the same file opened with O_DIRECT, or -1. Used instead
  // of `fd` when offset, length and buffer are all kDirectIoAlignment-aligned.
  int direct_fd = -1;
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

// Whether the request may use its O_DIRECT descriptor.
bool CanReadDirect(const ReadRequest& request);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_IO_READER_H_
