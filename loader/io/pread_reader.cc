#include "loader/io/pread_reader.h"

#include <errno.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace weightd {
namespace {

constexpr int kMaxRetries = 1000;
constexpr size_t kKernelMaxRead = 0x7ffff000;

}  // namespace

absl::StatusOr<std::unique_ptr<PreadReader>> PreadReader::Create(
    const Options& options) {
  if (options.queue_depth < 1 || options.queue_depth > 4096) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pread queue depth must be in [1, 4096], got ", options.queue_depth));
  }
  if (options.threads < 1 || options.threads > 256) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pread threads must be in [1, 256], got ", options.threads));
  }
  std::unique_ptr<PreadReader> reader(new PreadReader(options));
  int threads = std::min(options.threads, options.queue_depth);
  for (int i = 0; i < threads; ++i) {
    reader->workers_.emplace_back([r = reader.get()] { r->WorkerLoop(); });
  }
  return reader;
}

PreadReader::~PreadReader() {
  {
    MutexLock lock(&mu_);
    stop_ = true;  // workers drain the queue before they exit
    work_cv_.SignalAll();
  }
  for (std::thread& t : workers_) t.join();
}

size_t PreadReader::in_flight() const {
  MutexLock lock(&mu_);
  return in_flight_;
}

absl::Status PreadReader::Submit(const ReadRequest& request) {
  absl::Status s = ValidateReadRequest(request);
  if (!s.ok()) return s;
  MutexLock lock(&mu_);
  if (in_flight_ >= static_cast<size_t>(options_.queue_depth)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "pread reader: ", options_.queue_depth, " reads already in flight"));
  }
  ++in_flight_;
  queue_.push_back(request);
  work_cv_.Signal();
  return absl::OkStatus();
}

absl::Status PreadReader::Wait(size_t min_results,
                               std::vector<ReadResult>* results) {
  MutexLock lock(&mu_);
  size_t want = std::min(min_results, in_flight_);
  while (done_.size() < want) done_cv_.Wait(&mu_);
  in_flight_ -= done_.size();
  for (ReadResult& r : done_) results->push_back(std::move(r));
  done_.clear();
  return absl::OkStatus();
}

void PreadReader::WorkerLoop() {
  for (;;) {
    ReadRequest request;
    {
      MutexLock lock(&mu_);
      while (queue_.empty() && !stop_) work_cv_.Wait(&mu_);
      if (queue_.empty()) return;  // stopping, nothing left
      request = queue_.front();
      queue_.pop_front();
    }
    ReadResult result = Execute(request);
    MutexLock lock(&mu_);
    done_.push_back(std::move(result));
    done_cv_.SignalAll();
  }
}

ReadResult PreadReader::Execute(const ReadRequest& r) const {
  ReadResult result;
  result.tag = r.tag;
  bool direct = CanReadDirect(r);
  size_t done = 0;
  int retries = 0;
  while (done < r.length) {
    uint8_t* buf = static_cast<uint8_t*>(r.buffer) + done;
    size_t len = std::min(r.length - done, kKernelMaxRead);
    if (options_.max_request_bytes > 0) {
      len = std::min(len, options_.max_request_bytes);
    }
    uint64_t offset = r.offset + done;
    bool use_direct =
        direct && offset % kDirectIoAlignment == 0 &&
        len % kDirectIoAlignment == 0 &&
        reinterpret_cast<uintptr_t>(buf) % kDirectIoAlignment == 0;
    ssize_t n = ::pread(use_direct ? r.direct_fd : r.fd, buf, len,
                        static_cast<off_t>(offset));
    if (n < 0) {
      int err = errno;
      if ((err == EINTR || err == EAGAIN) && ++retries <= kMaxRetries) continue;
      if (err == EINVAL && use_direct) {
        direct = false;  // filesystem refused O_DIRECT: buffered
        continue;
      }
      result.status = absl::DataLossError(
          absl::StrCat("pread(fd ", r.fd, ", offset ", offset, ", length ", len,
                       "): ", std::strerror(err), " (errno ", err, ")"));
      break;
    }
    if (n == 0) break;  // end of file
    done += static_cast<size_t>(n);
  }
  result.bytes_read = done;
  return result;
}

}  // namespace weightd
