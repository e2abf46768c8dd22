#include "loader/io/pread_reader.h"

#include <errno.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "loader/io/direct_io.h"

namespace weightd {
namespace {

constexpr int kMaxRetries = 1000;

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
  Pending read;
  read.request = request;
  read.end = request.offset + request.length;
  std::vector<ReadPiece> pieces;
  SplitRead(request, EffectiveMaxPiece(request, options_.max_request_bytes),
            &pieces);
  for (const ReadPiece& p : pieces) {
    if (p.length > 0) read.pieces.push_back(p);
  }
  read.pieces_left = read.pieces.size();
  MutexLock lock(&mu_);
  if (in_flight_ >= static_cast<size_t>(options_.queue_depth)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "pread reader: ", options_.queue_depth, " reads already in flight"));
  }
  ++in_flight_;
  const uint64_t id = next_id_++;
  const size_t n = read.pieces.size();
  pending_[id] = std::move(read);
  if (n == 0) {
    Finish(id);
    return absl::OkStatus();
  }
  for (size_t i = 0; i < n; ++i) queue_.push_back({id, i});
  if (n == 1) {
    work_cv_.Signal();
  } else {
    work_cv_.SignalAll();
  }
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

void PreadReader::Finish(uint64_t id) {
  auto it = pending_.find(id);
  Pending& read = it->second;
  ReadResult result;
  result.tag = read.request.tag;
  result.status = std::move(read.status);
  result.bytes_read = static_cast<size_t>(
      std::min<uint64_t>(read.end - read.request.offset, read.request.length));
  result.direct_bytes = std::min(read.direct_bytes, result.bytes_read);
  result.direct_refused = read.direct_refused;
  pending_.erase(it);
  done_.push_back(std::move(result));
  done_cv_.SignalAll();
}

void PreadReader::WorkerLoop() {
  for (;;) {
    ReadRequest request;
    ReadPiece piece;
    uint64_t id = 0;
    {
      MutexLock lock(&mu_);
      while (queue_.empty() && !stop_) work_cv_.Wait(&mu_);
      if (queue_.empty()) return;  // stopping, nothing left
      id = queue_.front().first;
      const Pending& read = pending_[id];
      request = read.request;
      piece = read.pieces[queue_.front().second];
      // A refusal seen by another piece: do not try direct again.
      if (read.direct_refused) piece.direct = false;
      queue_.pop_front();
    }
    PieceResult r = Execute(request, piece);
    MutexLock lock(&mu_);
    Pending& read = pending_[id];
    if (!r.status.ok() && read.status.ok()) read.status = std::move(r.status);
    if (r.done < piece.length) {
      read.end = std::min(read.end, piece.offset + r.done);
    }
    read.direct_bytes += r.direct_bytes;
    read.direct_refused = read.direct_refused || r.direct_refused;
    if (--read.pieces_left == 0) Finish(id);
  }
}

PreadReader::PieceResult PreadReader::Execute(const ReadRequest& r,
                                              ReadPiece piece) const {
  PieceResult result;
  int retries = 0;
  const uint64_t alignment = DirectAlignment(r);
  while (result.done < piece.length) {
    uint8_t* buf = piece.buffer + result.done;
    size_t len = piece.length - result.done;
    uint64_t offset = piece.offset + result.done;
    ssize_t n = ::pread(piece.direct ? r.direct_fd : r.fd, buf, len,
                        static_cast<off_t>(offset));
    if (n < 0) {
      int err = errno;
      if ((err == EINTR || err == EAGAIN) && ++retries <= kMaxRetries) continue;
      if (err == EINVAL && piece.direct) {
        // The file system refused O_DIRECT: buffered.
        NoteDirectIoRefused(r.direct_fd, std::strerror(err));
        piece.direct = false;
        result.direct_refused = true;
        continue;
      }
      result.status = absl::DataLossError(
          absl::StrCat("pread(fd ", r.fd, ", offset ", offset, ", length ", len,
                       "): ", std::strerror(err), " (errno ", err, ")"));
      break;
    }
    if (n == 0) break;  // end of file
    result.done += static_cast<size_t>(n);
    if (piece.direct) {
      result.direct_bytes += static_cast<size_t>(n);
      if (result.done % alignment != 0) piece.direct = false;
    }
  }
  return result;
}

}  // namespace weightd
