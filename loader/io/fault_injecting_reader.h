// A Reader wrapper for tests: fails the Nth read, shortens the Nth read (as
// if the file ended), fails the Nth Submit() call, or slows every read.
// Counting is over Submit() calls, from 1.
#ifndef WEIGHTD_LOADER_IO_FAULT_INJECTING_READER_H_
#define WEIGHTD_LOADER_IO_FAULT_INJECTING_READER_H_

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "loader/io/reader.h"

namespace weightd {

class FaultInjectingReader : public Reader {
 public:
  struct Faults {
    // The read with this number completes with `read_error` and no bytes
    // (0: never). With `fail_reads_from` every read from that number on fails.
    uint64_t fail_read = 0;
    bool fail_reads_from = false;
    absl::Status read_error = absl::DataLossError("injected read error");
    // The read with this number returns only half its bytes (0: never).
    uint64_t short_read = 0;
    // Submit() call with this number returns `submit_error` (0: never).
    uint64_t fail_submit = 0;
    absl::Status submit_error = absl::UnavailableError("injected submit error");
    // Sleep before each Submit() (slows the pipeline, for cancellation tests).
    absl::Duration submit_delay = absl::ZeroDuration();
  };

  FaultInjectingReader(std::unique_ptr<Reader> base, Faults faults)
      : base_(std::move(base)), faults_(std::move(faults)) {}

  std::string name() const override { return base_->name(); }
  std::string reason() const override { return base_->reason(); }
  int queue_depth() const override { return base_->queue_depth(); }
  size_t in_flight() const override {
    return base_->in_flight() + injected_.size();
  }
  absl::Status RegisterBuffers(absl::Span<const iovec> buffers) override {
    return base_->RegisterBuffers(buffers);
  }
  void UnregisterBuffers() override { base_->UnregisterBuffers(); }
  bool buffers_registered() const override {
    return base_->buffers_registered();
  }
  absl::Status RegisterFiles(absl::Span<const int> fds) override {
    return base_->RegisterFiles(fds);
  }
  void UnregisterFiles() override { base_->UnregisterFiles(); }
  bool files_registered() const override { return base_->files_registered(); }
  size_t max_request_bytes() const override {
    return base_->max_request_bytes();
  }

  absl::Status Submit(const ReadRequest& request) override;
  absl::Status Wait(size_t min_results,
                    std::vector<ReadResult>* results) override;

  // Submit() calls so far (thread-safe).
  uint64_t submits() const { return submits_.load(); }
  Reader* base() { return base_.get(); }

 private:
  std::unique_ptr<Reader> base_;
  const Faults faults_;
  std::atomic<uint64_t> submits_{0};
  std::vector<ReadResult> injected_;  // failed reads not yet handed back
};

}  // namespace weightd

#endif  // WEIGHTD_LOADER_IO_FAULT_INJECTING_READER_H_
