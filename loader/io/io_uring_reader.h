// Reader over io_uring (liburing): one ring per reader. Each read is split
// into pieces (SplitRead: the unaligned head and tail buffered, the aligned
// middle through the O_DIRECT descriptor, every part cut at
// max_request_bytes), all of them in flight at once up to ring_entries SQEs;
// fixed (registered) buffers when a piece lands in a registered range, fixed
// files for registered descriptors. Partial completions are resubmitted for
// the remainder; -EINTR and -EAGAIN completions are resubmitted;
// io_uring_submit/io_uring_wait_cqe are retried on EINTR/EAGAIN/EBUSY.
#ifndef WEIGHTD_LOADER_IO_IO_URING_READER_H_
#define WEIGHTD_LOADER_IO_IO_URING_READER_H_

#include <deque>
#include <memory>
#include <string>
#include <utility>
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
    // longer read becomes several SQEs in flight at once.
    size_t max_request_bytes = 0;
    // SQEs in flight at most (the ring's size); 0: queue_depth.
    int ring_entries = 0;
    // IOSQE_ASYNC for buffered pieces: run them on io_uring's kernel workers
    // instead of inline in io_uring_submit, so page-cache copies of several
    // reads run on several cores. Direct pieces are always issued inline
    // (they are asynchronous in the block layer already).
    bool async_workers = true;
    // io_uring's bounded kernel workers (the ones that run those buffered
    // pieces) at most: 0 caps them at the online CPUs (the kernel's own cap
    // is 4 per CPU, and more copying threads than cores thrash); -1 leaves
    // the kernel's. Kernels before 5.15 keep theirs.
    int max_workers = 0;
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
  absl::Status RegisterFiles(absl::Span<const int> fds) override;
  void UnregisterFiles() override;
  bool files_registered() const override { return !fixed_files_.empty(); }
  size_t max_request_bytes() const override {
    return options_.max_request_bytes;
  }
  int ring_entries() const { return ring_entries_; }

  absl::Status Submit(const ReadRequest& request) override;
  absl::Status Wait(size_t min_results,
                    std::vector<ReadResult>* results) override;

 private:
  struct Piece {
    ReadPiece piece;
    size_t done = 0;
    int retries = 0;
  };
  struct Slot {
    bool active = false;
    ReadRequest request;
    std::vector<Piece> pieces;
    size_t pieces_left = 0;
    // Where the file ended, if a piece came back short; else offset+length.
    uint64_t end = 0;
    absl::Status status;
    size_t direct_bytes = 0;
    bool direct_refused = false;
  };

  explicit IoUringReader(const Options& options);
  // Prepares SQEs for queued pieces while the ring has room, then submits.
  absl::Status Pump();
  void PreparePiece(int slot_index, int piece_index);
  absl::Status SubmitPrepared();
  // Handles one completion; appends a result when its read has finished.
  void Complete(uint64_t user_data, int res, std::vector<ReadResult>* results,
                size_t* finished);
  void PieceDone(int slot_index, std::vector<ReadResult>* results,
                 size_t* finished);

  Options options_;
  int ring_entries_ = 0;
  std::unique_ptr<io_uring> ring_;
  std::vector<Slot> slots_;
  std::vector<int> free_slots_;
  std::vector<iovec> registered_;
  std::vector<int> fixed_files_;  // fd at each fixed-file index
  // Pieces waiting for room in the ring: (slot, piece).
  std::deque<std::pair<int, int>> queued_;
  std::vector<int> empty_slots_;  // zero-length reads, done on next Wait()
  size_t in_flight_ = 0;          // requests
  int sqes_in_flight_ = 0;        // prepared or submitted, not yet completed
  int unsubmitted_ = 0;
};

}  // namespace weightd

#endif  // WEIGHTD_LOADER_IO_IO_URING_READER_H_
