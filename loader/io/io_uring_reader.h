// Reader over io_uring (liburing): one ring per reader, one SQE per read,
// fixed (registered) buffers when the read lands in a registered range,
// O_DIRECT when the request is aligned and carries a direct descriptor.
// Partial completions are resubmitted for the remainder; -EINTR and -EAGAIN
// completions are resubmitted; io_uring_submit/io_uring_wait_cqe are retried
// on EINTR/EAGAIN/EBUSY.
#ifndef WEIGHTD_LOADER_IO_IO_URING_READER_H_
#define WEIGHTD_LOADER_IO_IO_URING_READER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "loader/io/reader.h"

struct io_uring;

namespace weightd {

class IoUringReader : public Reader {
 public:
  struct Options {
    int queue_depth = 16;
    // Caps the bytes one SQE asks for (0: the kernel's own cap, ~2 GiB). A
    // longer read becomes several resubmissions; tests use it to exercise the
    // partial-read path.
    size_t max_request_bytes = 0;
    // IOSQE_ASYNC: run every read on io_uring's kernel workers instead of
    // inline in io_uring_submit, so page-cache copies of several reads run on
    // several cores.
    bool async_workers = true;
    std::string reason = "io_uring requested";
  };

  // UNAVAILABLE naming io_uring_queue_init and errno when the kernel (or a
  // seccomp profile) refuses io_uring, or when IORING_OP_READ is missing.
  static absl::StatusOr<std::unique_ptr<IoUringReader>> Create(
      const Options& options);

  // Whether this process may use io_uring at all (cached after the first
  // call); the status says why not.
  static absl::Status Probe();

  ~IoUringReader() override;

  std::string name() const override { return "io_uring"; }
  std::string reason() const override { return options_.reason; }
  int queue_depth() const override { return options_.queue_depth; }
  size_t in_flight() const override { return in_flight_; }

  absl::Status RegisterBuffers(absl::Span<const iovec> buffers) override;
  void UnregisterBuffers() override;
  bool buffers_registered() const override { return !registered_.empty(); }

  absl::Status Submit(const ReadRequest& request) override;
  absl::Status Wait(size_t min_results,
                    std::vector<ReadResult>* results) override;

 private:
  struct Slot {
    bool active = false;
    ReadRequest request;
    size_t done = 0;
    int retries = 0;
    bool direct = false;
  };

  explicit IoUringReader(const Options& options);
  // Prepares the SQE for the unread remainder of `slot`.
  absl::Status Prepare(int slot_index);
  absl::Status SubmitPending();
  // Handles one completion; appends a result when the read has finished.
  void Complete(int slot_index, int res, std::vector<ReadResult>* results,
                size_t* finished);
  void Finish(int slot_index, absl::Status status,
              std::vector<ReadResult>* results, size_t* finished);

  Options options_;
  std::unique_ptr<io_uring> ring_;
  std::vector<Slot> slots_;
  std::vector<int> free_slots_;
  std::vector<iovec> registered_;
  size_t in_flight_ = 0;
  int unsubmitted_ = 0;
};

}  // namespace weightd

#endif  // WEIGHTD_LOADER_IO_IO_URING_READER_H_
