// Reader over a pool of threads calling pread(2): the fallback when io_uring
// is unavailable (old kernel, Docker's default seccomp profile).
#ifndef WEIGHTD_LOADER_IO_PREAD_READER_H_
#define WEIGHTD_LOADER_IO_PREAD_READER_H_

#include <deque>
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

  absl::Status Submit(const ReadRequest& request) override;
  absl::Status Wait(size_t min_results,
                    std::vector<ReadResult>* results) override;

 private:
  explicit PreadReader(const Options& options) : options_(options) {}
  void WorkerLoop();
  ReadResult Execute(const ReadRequest& request) const;

  const Options options_;
  std::vector<std::thread> workers_;
  mutable Mutex mu_;
  CondVar work_cv_;
  CondVar done_cv_;
  std::deque<ReadRequest> queue_ ABSL_GUARDED_BY(mu_);
  std::vector<ReadResult> done_ ABSL_GUARDED_BY(mu_);
  // Submitted and not yet handed back by Wait().
  size_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace weightd

#endif  // WEIGHTD_LOADER_IO_PREAD_READER_H_
