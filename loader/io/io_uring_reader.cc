#include "loader/io/io_uring_reader.h"

#include <errno.h>
#include <liburing.h>

#include <algorithm>
#include <cstring>
#include <mutex>

#include "absl/strings/str_cat.h"

namespace weightd {
namespace {

constexpr int kMaxRetries = 1000;
// The kernel caps one read at MAX_RW_COUNT (INT_MAX & PAGE_MASK).
constexpr size_t kKernelMaxRead = 0x7ffff000;

std::string ErrnoText(int err) {
  return absl::StrCat(std::strerror(err), " (errno ", err, ")");
}

absl::Status ProbeOnce() {
  io_uring ring;
  int rc = io_uring_queue_init(2, &ring, 0);
  if (rc < 0) {
    return absl::UnavailableError(
        absl::StrCat("io_uring_queue_init: ", ErrnoText(-rc)));
  }
  absl::Status status;
  io_uring_probe* probe = io_uring_get_probe_ring(&ring);
  if (probe == nullptr) {
    status = absl::UnavailableError(
        "io_uring_get_probe_ring failed (kernel older than 5.6)");
  } else {
    if (!io_uring_opcode_supported(probe, IORING_OP_READ) ||
        !io_uring_opcode_supported(probe, IORING_OP_READ_FIXED)) {
      status =
          absl::UnavailableError("io_uring: IORING_OP_READ is not supported");
    }
    io_uring_free_probe(probe);
  }
  io_uring_queue_exit(&ring);
  return status;
}

}  // namespace

absl::Status IoUringReader::Probe() {
  static std::once_flag once;
  static absl::Status* status = nullptr;
  std::call_once(once, [] { status = new absl::Status(ProbeOnce()); });
  return *status;
}

IoUringReader::IoUringReader(const Options& options) : options_(options) {}

absl::StatusOr<std::unique_ptr<IoUringReader>> IoUringReader::Create(
    const Options& options) {
  if (options.queue_depth < 1 || options.queue_depth > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("io_uring queue depth must be in [1, 4096], got ",
                     options.queue_depth));
  }
  absl::Status probe = Probe();
  if (!probe.ok()) return probe;
  std::unique_ptr<IoUringReader> reader(new IoUringReader(options));
  reader->ring_ = std::make_unique<io_uring>();
  int rc = io_uring_queue_init(static_cast<unsigned>(options.queue_depth),
                               reader->ring_.get(), 0);
  if (rc < 0) {
    reader->ring_.reset();
    return absl::UnavailableError(
        absl::StrCat("io_uring_queue_init: ", ErrnoText(-rc)));
  }
  reader->slots_.resize(options.queue_depth);
  for (int i = options.queue_depth - 1; i >= 0; --i) {
    reader->free_slots_.push_back(i);
  }
  return reader;
}

IoUringReader::~IoUringReader() {
  if (ring_ == nullptr) return;
  // The kernel may still write into the buffers: wait for every read.
  std::vector<ReadResult> drained;
  while (in_flight_ > 0) {
    drained.clear();
    if (!Wait(in_flight_, &drained).ok()) break;
  }
  io_uring_queue_exit(ring_.get());
}

absl::Status IoUringReader::RegisterBuffers(absl::Span<const iovec> buffers) {
  if (in_flight_ != 0) {
    return absl::FailedPreconditionError(
        "io_uring RegisterBuffers with reads in flight");
  }
  UnregisterBuffers();
  if (buffers.empty()) return absl::OkStatus();
  int rc = io_uring_register_buffers(ring_.get(), buffers.data(),
                                     static_cast<unsigned>(buffers.size()));
  if (rc < 0) {
    // ENOMEM (RLIMIT_MEMLOCK) and friends: plain reads still work.
    options_.reason = absl::StrCat(
        options_.reason, "; io_uring_register_buffers: ", ErrnoText(-rc),
        ", using unregistered reads");
    return absl::OkStatus();
  }
  registered_.assign(buffers.begin(), buffers.end());
  return absl::OkStatus();
}

void IoUringReader::UnregisterBuffers() {
  if (registered_.empty()) return;
  io_uring_unregister_buffers(ring_.get());
  registered_.clear();
}

absl::Status IoUringReader::Prepare(int slot_index) {
  Slot& slot = slots_[slot_index];
  io_uring_sqe* sqe = io_uring_get_sqe(ring_.get());
  if (sqe == nullptr) {
    absl::Status s = SubmitPending();
    if (!s.ok()) return s;
    sqe = io_uring_get_sqe(ring_.get());
    if (sqe == nullptr) {
      return absl::InternalError("io_uring_get_sqe: submission queue full");
    }
  }
  const ReadRequest& r = slot.request;
  uint8_t* buf = static_cast<uint8_t*>(r.buffer) + slot.done;
  size_t len = r.length - slot.done;
  len = std::min(len, kKernelMaxRead);
  if (options_.max_request_bytes > 0) {
    len = std::min(len, options_.max_request_bytes);
  }
  uint64_t offset = r.offset + slot.done;
  // O_DIRECT only while the remainder stays aligned.
  bool direct = slot.direct && offset % kDirectIoAlignment == 0 &&
                len % kDirectIoAlignment == 0 &&
                reinterpret_cast<uintptr_t>(buf) % kDirectIoAlignment == 0;
  int fd = direct ? r.direct_fd : r.fd;
  int fixed = -1;
  for (size_t i = 0; i < registered_.size(); ++i) {
    uint8_t* base = static_cast<uint8_t*>(registered_[i].iov_base);
    if (buf >= base && buf + len <= base + registered_[i].iov_len) {
      fixed = static_cast<int>(i);
      break;
    }
  }
  if (fixed >= 0) {
    io_uring_prep_read_fixed(sqe, fd, buf, static_cast<unsigned>(len), offset,
                             fixed);
  } else {
    io_uring_prep_read(sqe, fd, buf, static_cast<unsigned>(len), offset);
  }
  if (options_.async_workers) io_uring_sqe_set_flags(sqe, IOSQE_ASYNC);
  io_uring_sqe_set_data64(sqe, static_cast<uint64_t>(slot_index));
  ++unsubmitted_;
  return absl::OkStatus();
}

absl::Status IoUringReader::SubmitPending() {
  int retries = 0;
  while (unsubmitted_ > 0) {
    int rc = io_uring_submit(ring_.get());
    if (rc >= 0) {
      unsubmitted_ -= std::min(rc, unsubmitted_);
      if (rc == 0 && ++retries > kMaxRetries) {
        return absl::InternalError("io_uring_submit: made no progress");
      }
      continue;
    }
    if ((rc == -EINTR || rc == -EAGAIN || rc == -EBUSY) &&
        ++retries <= kMaxRetries) {
      continue;
    }
    return absl::InternalError(
        absl::StrCat("io_uring_submit: ", ErrnoText(-rc)));
  }
  return absl::OkStatus();
}

absl::Status IoUringReader::Submit(const ReadRequest& request) {
  absl::Status s = ValidateReadRequest(request);
  if (!s.ok()) return s;
  if (free_slots_.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "io_uring reader: ", options_.queue_depth, " reads already in flight"));
  }
  int index = free_slots_.back();
  Slot& slot = slots_[index];
  slot = Slot();
  slot.active = true;
  slot.request = request;
  slot.direct = CanReadDirect(request);
  if (request.length == 0) {
    // Nothing to read: complete without a syscall, on the next Wait().
    slot.done = 0;
  }
  s = Prepare(index);
  if (!s.ok()) {
    slot.active = false;
    return s;
  }
  free_slots_.pop_back();
  ++in_flight_;
  s = SubmitPending();
  if (!s.ok()) {
    // The SQE is queued in the ring; its completion still comes through
    // Wait(), so the read stays counted as in flight.
    return s;
  }
  return absl::OkStatus();
}

void IoUringReader::Finish(int slot_index, absl::Status status,
                           std::vector<ReadResult>* results, size_t* finished) {
  Slot& slot = slots_[slot_index];
  ReadResult result;
  result.tag = slot.request.tag;
  result.status = std::move(status);
  result.bytes_read = slot.done;
  results->push_back(std::move(result));
  slot.active = false;
  free_slots_.push_back(slot_index);
  --in_flight_;
  ++*finished;
}

void IoUringReader::Complete(int slot_index, int res,
                             std::vector<ReadResult>* results,
                             size_t* finished) {
  if (slot_index < 0 || slot_index >= static_cast<int>(slots_.size()) ||
      !slots_[slot_index].active) {
    return;  // not ours (cannot happen)
  }
  Slot& slot = slots_[slot_index];
  const ReadRequest& r = slot.request;
  if (res < 0) {
    int err = -res;
    if ((err == EINTR || err == EAGAIN) && ++slot.retries <= kMaxRetries) {
      absl::Status s = Prepare(slot_index);
      if (s.ok()) return;
      Finish(slot_index, s, results, finished);
      return;
    }
    if (err == EINVAL && slot.direct) {
      // The filesystem refused this O_DIRECT read: redo it buffered.
      slot.direct = false;
      absl::Status s = Prepare(slot_index);
      if (s.ok()) return;
      Finish(slot_index, s, results, finished);
      return;
    }
    Finish(slot_index,
           absl::DataLossError(absl::StrCat(
               "io_uring read(fd ", r.fd, ", offset ", r.offset + slot.done,
               ", length ", r.length - slot.done, "): ", ErrnoText(err))),
           results, finished);
    return;
  }
  slot.done += static_cast<size_t>(res);
  if (res == 0 || slot.done >= r.length) {
    // Done, or end of file.
    Finish(slot_index, absl::OkStatus(), results, finished);
    return;
  }
  // Short read: ask for the rest.
  absl::Status s = Prepare(slot_index);
  if (!s.ok()) Finish(slot_index, s, results, finished);
}

absl::Status IoUringReader::Wait(size_t min_results,
                                 std::vector<ReadResult>* results) {
  size_t finished = 0;
  int retries = 0;
  for (;;) {
    // Resubmissions queued by Complete() go out before blocking.
    absl::Status s = SubmitPending();
    if (!s.ok()) return s;
    // Collect what is ready.
    io_uring_cqe* cqe = nullptr;
    while (io_uring_peek_cqe(ring_.get(), &cqe) == 0 && cqe != nullptr) {
      int slot = static_cast<int>(io_uring_cqe_get_data64(cqe));
      int res = cqe->res;
      io_uring_cqe_seen(ring_.get(), cqe);
      Complete(slot, res, results, &finished);
    }
    s = SubmitPending();
    if (!s.ok()) return s;
    if (finished >= min_results || in_flight_ == 0) return absl::OkStatus();
    int rc = io_uring_wait_cqe(ring_.get(), &cqe);
    if (rc < 0) {
      if ((rc == -EINTR || rc == -EAGAIN) && ++retries <= kMaxRetries) {
        continue;
      }
      return absl::InternalError(
          absl::StrCat("io_uring_wait_cqe: ", ErrnoText(-rc)));
    }
  }
}

}  // namespace weightd
