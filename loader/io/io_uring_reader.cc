#include "loader/io/io_uring_reader.h"

#include <errno.h>
#include <liburing.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "loader/io/direct_io.h"

namespace weightd {
namespace {

constexpr int kMaxRetries = 1000;
// Fixed-file tables beyond this are not worth the registration.
constexpr size_t kMaxFixedFiles = 1024;

uint64_t PackUserData(int slot, int piece) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(slot)) << 32) |
         static_cast<uint32_t>(piece);
}

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
  if (options.max_workers < -1 || options.max_workers > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("io_uring max workers must be in [-1, 4096], got ",
                     options.max_workers));
  }
  if (options.ring_entries < 0 || options.ring_entries > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("io_uring ring entries must be in [0, 4096], got ",
                     options.ring_entries));
  }
  absl::Status probe = Probe();
  if (!probe.ok()) return probe;
  std::unique_ptr<IoUringReader> reader(new IoUringReader(options));
  reader->ring_entries_ =
      options.ring_entries > 0 ? options.ring_entries : options.queue_depth;
  reader->ring_ = std::make_unique<io_uring>();
  // The reader is driven by one thread at a time and waits for its own
  // completions: completion work runs when it enters the kernel, with no
  // interrupt of a running task (COOP_TASKRUN, Linux 5.19); older kernels
  // refuse the flag and get a plain ring.
  io_uring_params params = {};
  params.flags = IORING_SETUP_COOP_TASKRUN;
  params.cq_entries = static_cast<unsigned>(2 * reader->ring_entries_);
  params.flags |= IORING_SETUP_CQSIZE;
  int rc =
      io_uring_queue_init_params(static_cast<unsigned>(reader->ring_entries_),
                                 reader->ring_.get(), &params);
  if (rc == -EINVAL) {
    rc = io_uring_queue_init(static_cast<unsigned>(reader->ring_entries_),
                             reader->ring_.get(), 0);
  }
  if (rc < 0) {
    reader->ring_.reset();
    return absl::UnavailableError(
        absl::StrCat("io_uring_queue_init: ", ErrnoText(-rc)));
  }
  if (options.async_workers && options.max_workers >= 0) {
    const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned workers[2] = {
        static_cast<unsigned>(options.max_workers > 0 ? options.max_workers
                              : cpus > 0              ? cpus
                                                      : 1),
        0};  // [bounded, unbounded]; 0 keeps the unbounded cap
    // Refused before Linux 5.15: the kernel's cap stays, reads still work.
    (void)io_uring_register_iowq_max_workers(reader->ring_.get(), workers);
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

absl::Status IoUringReader::RegisterFiles(absl::Span<const int> fds) {
  if (in_flight_ != 0) {
    return absl::FailedPreconditionError(
        "io_uring RegisterFiles with reads in flight");
  }
  UnregisterFiles();
  if (fds.empty() || fds.size() > kMaxFixedFiles) return absl::OkStatus();
  for (int fd : fds) {
    if (fd < 0) return absl::InvalidArgumentError("RegisterFiles: bad fd");
  }
  int rc = io_uring_register_files(ring_.get(), fds.data(),
                                   static_cast<unsigned>(fds.size()));
  if (rc < 0) return absl::OkStatus();  // EMFILE and friends: plain fds
  fixed_files_.assign(fds.begin(), fds.end());
  return absl::OkStatus();
}

void IoUringReader::UnregisterFiles() {
  if (fixed_files_.empty()) return;
  io_uring_unregister_files(ring_.get());
  fixed_files_.clear();
}

void IoUringReader::PreparePiece(int slot_index, int piece_index) {
  Slot& slot = slots_[slot_index];
  Piece& p = slot.pieces[piece_index];
  io_uring_sqe* sqe = io_uring_get_sqe(ring_.get());
  // Room is guaranteed: sqes_in_flight_ < ring_entries_ <= SQ size, and
  // prepared SQEs are submitted before more are prepared past that.
  uint8_t* buf = p.piece.buffer + p.done;
  size_t len = p.piece.length - p.done;
  uint64_t offset = p.piece.offset + p.done;
  const ReadRequest& r = slot.request;
  int fd = p.piece.direct ? r.direct_fd : r.fd;
  unsigned flags = 0;
  for (size_t i = 0; i < fixed_files_.size(); ++i) {
    if (fixed_files_[i] == fd) {
      fd = static_cast<int>(i);
      flags |= IOSQE_FIXED_FILE;
      break;
    }
  }
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
  if (options_.async_workers && !p.piece.direct) flags |= IOSQE_ASYNC;
  io_uring_sqe_set_flags(sqe, flags);
  io_uring_sqe_set_data64(sqe, PackUserData(slot_index, piece_index));
  ++sqes_in_flight_;
  ++unsubmitted_;
}

absl::Status IoUringReader::SubmitPrepared() {
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

absl::Status IoUringReader::Pump() {
  while (!queued_.empty() && sqes_in_flight_ < ring_entries_) {
    auto [slot, piece] = queued_.front();
    queued_.pop_front();
    PreparePiece(slot, piece);
  }
  return SubmitPrepared();
}

absl::Status IoUringReader::Submit(const ReadRequest& request) {
  absl::Status s = ValidateReadRequest(request);
  if (!s.ok()) return s;
  if (free_slots_.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "io_uring reader: ", options_.queue_depth, " reads already in flight"));
  }
  int index = free_slots_.back();
  free_slots_.pop_back();
  Slot& slot = slots_[index];
  slot.active = true;
  slot.request = request;
  slot.pieces.clear();
  slot.status = absl::OkStatus();
  slot.direct_bytes = 0;
  slot.direct_refused = false;
  slot.end = request.offset + request.length;
  std::vector<ReadPiece> pieces;
  SplitRead(request, EffectiveMaxPiece(request, options_.max_request_bytes),
            &pieces);
  for (const ReadPiece& piece : pieces) {
    if (piece.length == 0) continue;  // nothing to read
    slot.pieces.push_back(Piece{piece});
  }
  slot.pieces_left = slot.pieces.size();
  ++in_flight_;
  if (slot.pieces.empty()) {
    // Completes without a syscall, on the next Wait().
    empty_slots_.push_back(index);
    return absl::OkStatus();
  }
  for (size_t i = 0; i < slot.pieces.size(); ++i) {
    queued_.push_back({index, static_cast<int>(i)});
  }
  // A failure here leaves the pieces queued or in the ring: their
  // completions still come through Wait(), so the read stays in flight.
  return Pump();
}

void IoUringReader::PieceDone(int slot_index, std::vector<ReadResult>* results,
                              size_t* finished) {
  Slot& slot = slots_[slot_index];
  if (slot.pieces_left > 0) --slot.pieces_left;
  if (slot.pieces_left > 0) return;
  const ReadRequest& r = slot.request;
  ReadResult result;
  result.tag = r.tag;
  result.status = std::move(slot.status);
  result.bytes_read =
      static_cast<size_t>(std::min<uint64_t>(slot.end - r.offset, r.length));
  result.direct_bytes = std::min(slot.direct_bytes, result.bytes_read);
  result.direct_refused = slot.direct_refused;
  results->push_back(std::move(result));
  slot.active = false;
  slot.pieces.clear();
  free_slots_.push_back(slot_index);
  --in_flight_;
  ++*finished;
}

void IoUringReader::Complete(uint64_t user_data, int res,
                             std::vector<ReadResult>* results,
                             size_t* finished) {
  int slot_index = static_cast<int>(user_data >> 32);
  int piece_index = static_cast<int>(static_cast<uint32_t>(user_data));
  if (slot_index < 0 || slot_index >= static_cast<int>(slots_.size()) ||
      !slots_[slot_index].active || piece_index < 0 ||
      piece_index >= static_cast<int>(slots_[slot_index].pieces.size())) {
    return;  // not ours (cannot happen)
  }
  --sqes_in_flight_;
  Slot& slot = slots_[slot_index];
  Piece& p = slot.pieces[piece_index];
  const ReadRequest& r = slot.request;
  auto again = [&] { queued_.push_front({slot_index, piece_index}); };
  if (res < 0) {
    int err = -res;
    if ((err == EINTR || err == EAGAIN) && ++p.retries <= kMaxRetries) {
      again();
      return;
    }
    if (err == EINVAL && p.piece.direct) {
      // The file system refused this O_DIRECT read: redo it buffered, and
      // every later piece of the request too.
      if (!slot.direct_refused) {
        NoteDirectIoRefused(r.direct_fd, ErrnoText(err));
      }
      slot.direct_refused = true;
      for (Piece& other : slot.pieces) other.piece.direct = false;
      again();
      return;
    }
    if (slot.status.ok()) {
      slot.status = absl::DataLossError(absl::StrCat(
          "io_uring read(fd ", r.fd, ", offset ", p.piece.offset + p.done,
          ", length ", p.piece.length - p.done, "): ", ErrnoText(err)));
    }
    PieceDone(slot_index, results, finished);
    return;
  }
  p.done += static_cast<size_t>(res);
  if (p.piece.direct) slot.direct_bytes += static_cast<size_t>(res);
  if (res == 0 || p.done >= p.piece.length) {
    // Done, or end of file.
    if (p.done < p.piece.length) {
      slot.end = std::min(slot.end, p.piece.offset + p.done);
    }
    PieceDone(slot_index, results, finished);
    return;
  }
  // Short read: ask for the rest (buffered once it is no longer aligned).
  if (p.piece.direct && p.done % DirectAlignment(r) != 0) {
    p.piece.direct = false;
  }
  again();
}

absl::Status IoUringReader::Wait(size_t min_results,
                                 std::vector<ReadResult>* results) {
  size_t finished = 0;
  int retries = 0;
  for (;;) {
    // Empty requests complete here, with no SQE.
    for (int slot : empty_slots_) {
      slots_[slot].pieces_left = 1;
      PieceDone(slot, results, &finished);
    }
    empty_slots_.clear();
    absl::Status s = Pump();
    if (!s.ok()) return s;
    io_uring_cqe* cqes[64];
    for (;;) {
      unsigned n = io_uring_peek_batch_cqe(ring_.get(), cqes, 64);
      if (n == 0) break;
      for (unsigned i = 0; i < n; ++i) {
        uint64_t data = io_uring_cqe_get_data64(cqes[i]);
        int res = cqes[i]->res;
        Complete(data, res, results, &finished);
      }
      io_uring_cq_advance(ring_.get(), n);
    }
    s = Pump();
    if (!s.ok()) return s;
    if (finished >= min_results || in_flight_ == 0) return absl::OkStatus();
    io_uring_cqe* cqe = nullptr;
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
