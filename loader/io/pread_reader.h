// Reader over a pool of threads calling pread(2): the fallback when io_uring
// is unavailable (old kernel, Docker's default seccomp profile). Each read is
// split into pieces as io_uring's are (SplitRead), run on several threads.
#ifndef WEIGHTD_LOADER_IO_PREAD_READER_H_
#define WEIGHTD_LOADER_IO_PREAD_READER_H_

#include <deque>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "loader/common/mutex.h"
#include "loader/io/reader.h"

namespace weightd {

class PreadReader : public Reader {
 public:
  struct Options {
    int queue_depth = 16;
    int threads = 4;
    // Caps the bytes one pread(2) asks for (0: no cap beyond the kernel's).
    size_t max_request_bytes = 0;
    std::string reason = "pread requested";
  };

  static absl::StatusOr<std::unique_ptr<PreadReader>> Create(
      const Options& options);
  ~PreadReader() override;

  std::string name() const override { return "pread"; }
  std::string reason() const override { return options_.reason; }
  int queue_depth() const override { return options_.queue_depth; }
  size_t in_flight() const override;

  size_t max_request_bytes() const override {
    return options_.max_request_bytes;
  }

  absl::Status Submit(const ReadRequest& request) override;
  absl::Status Wait(size_t min_results,
                    std::vector<ReadResult>* results) override;

 private:
  explicit PreadReader(const Options& options) : options_(options) {}
  struct Pending {
    ReadRequest request;
    std::vector<ReadPiece> pieces;
    size_t pieces_left = 0;
    uint64_t end = 0;  // where the file ended, if a piece came back short
    absl::Status status;
    size_t direct_bytes = 0;
    bool direct_refused = false;
  };
  struct PieceResult {
    size_t done = 0;
    size_t direct_bytes = 0;
    bool direct_refused = false;
    absl::Status status;
  };
  void WorkerLoop();
  PieceResult Execute(const ReadRequest& request, ReadPiece piece) const;
  void Finish(uint64_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  std::vector<std::thread> workers_;
  mutable Mutex mu_;
  CondVar work_cv_;
  CondVar done_cv_;
  // Reads by internal id, and their pieces waiting for a thread.
  std::map<uint64_t, Pending> pending_ ABSL_GUARDED_BY(mu_);
  std::deque<std::pair<uint64_t, size_t>> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<ReadResult> done_ ABSL_GUARDED_BY(mu_);
  // Submitted and not yet handed back by Wait().
  size_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace weightd

#endif  // WEIGHTD_LOADER_IO_PREAD_READER_H_
