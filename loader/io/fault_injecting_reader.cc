#include "loader/io/fault_injecting_reader.h"

#include <algorithm>

#include "absl/time/clock.h"

namespace weightd {

absl::Status FaultInjectingReader::Submit(const ReadRequest& request) {
  if (faults_.submit_delay > absl::ZeroDuration()) {
    absl::SleepFor(faults_.submit_delay);
  }
  uint64_t n = ++submits_;
  if (faults_.fail_submit != 0 && n == faults_.fail_submit) {
    return faults_.submit_error;
  }
  if (in_flight() >= static_cast<size_t>(queue_depth())) {
    return absl::FailedPreconditionError("reader: queue full");
  }
  if (faults_.fail_read != 0 &&
      (n == faults_.fail_read ||
       (faults_.fail_reads_from && n > faults_.fail_read))) {
    ReadResult result;
    result.tag = request.tag;
    result.status = faults_.read_error;
    injected_.push_back(std::move(result));
    return absl::OkStatus();
  }
  if (faults_.short_read != 0 && n == faults_.short_read) {
    ReadRequest shorter = request;
    shorter.length = request.length / 2;
    return base_->Submit(shorter);
  }
  return base_->Submit(request);
}

absl::Status FaultInjectingReader::Wait(size_t min_results,
                                        std::vector<ReadResult>* results) {
  size_t got = injected_.size();
  for (ReadResult& r : injected_) results->push_back(std::move(r));
  injected_.clear();
  size_t want = min_results > got ? min_results - got : 0;
  return base_->Wait(want, results);
}

}  // namespace weightd
