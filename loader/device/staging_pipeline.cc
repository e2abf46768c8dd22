#include "loader/device/staging_pipeline.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <deque>

#include "absl/strings/str_cat.h"
#include "loader/common/logging.h"
#include "loader/io/direct_io.h"

namespace weightd {

struct StagingPipeline::Slot {
  enum class State { kFree, kReading, kCopying };
  std::unique_ptr<PinnedBuffer> buffer;
  std::unique_ptr<DeviceEvent> event;
  int stream = 0;
  State state = State::kFree;
  // The chunk in this buffer, starting data_offset bytes in (so that a direct
  // read's buffer is as misaligned as its file offset).
  uint64_t data_offset = 0;
  uint32_t file_index = 0;
  uint64_t file_offset = 0;
  uint64_t arena_offset = 0;
  uint64_t length = 0;
  // The read is one of this probe's window.
  DirectIoProbe* probe = nullptr;
};

namespace {

using ProbeClock = DirectIoProbe::Clock;

absl::Status Annotate(const absl::Status& s, const std::string& context) {
  return absl::Status(s.code(), absl::StrCat(context, ": ", s.message()));
}

struct Chunk {
  const CopyRange* range = nullptr;
  uint64_t pos = 0;
  uint64_t length = 0;
  bool from_file() const { return range->from_file(); }
  bool generated() const { return static_cast<bool>(range->generate); }
  // The generator's error names where its bytes were going.
  absl::Status Generate(uint8_t* out) const {
    absl::Status s = range->generate(pos, length, out);
    if (s.ok()) return s;
    return Annotate(
        s, absl::StrCat("producing ", length, " bytes for arena offset ",
                        arena_offset()));
  }
  uint64_t file_offset() const { return range->file_offset + pos; }
  uint64_t arena_offset() const { return range->arena_offset + pos; }
  const uint8_t* memory() const {
    return static_cast<const uint8_t*>(range->host_source) + pos;
  }
};

// Walks the ranges chunk by chunk.
class ChunkCursor {
 public:
  ChunkCursor(absl::Span<const CopyRange> ranges, uint64_t chunk_bytes)
      : ranges_(ranges), chunk_bytes_(chunk_bytes) {
    Skip();
  }
  bool done() const { return index_ >= ranges_.size(); }
  const CopyRange& current() const { return ranges_[index_]; }
  uint64_t pos() const { return pos_; }
  // The next chunk, `lead` bytes shorter than a staging buffer at most,
  // without moving past it.
  Chunk Peek(uint64_t lead = 0) const {
    Chunk c;
    c.range = &ranges_[index_];
    c.pos = pos_;
    uint64_t most = chunk_bytes_ - lead;
    if (c.generated()) most = chunk_bytes_ / c.range->unit * c.range->unit;
    c.length = std::min(most, c.range->length - pos_);
    return c;
  }
  // Moves past `c`, the chunk Peek() returned.
  void Advance(const Chunk& c) {
    pos_ += c.length;
    if (pos_ >= c.range->length) {
      ++index_;
      pos_ = 0;
      Skip();
    }
  }

 private:
  void Skip() {
    while (index_ < ranges_.size() && ranges_[index_].length == 0) ++index_;
  }
  absl::Span<const CopyRange> ranges_;
  const uint64_t chunk_bytes_;
  size_t index_ = 0;
  uint64_t pos_ = 0;
};

// The device probes one Run measures with (--direct_io=auto), given back,
// measured or not, when the Run ends.
class RunProbes {
 public:
  RunProbes() = default;
  RunProbes(const RunProbes&) = delete;
  RunProbes& operator=(const RunProbes&) = delete;
  ~RunProbes() {
    for (Planned& p : planned_)
      ReturnDirectIoProbe(p.dev, std::move(p.plan.probe));
  }
  // The device's plan, asked for once per Run (its probe is null unless this
  // Run measures the device); valid until the Run ends.
  const DirectIoPlan& Plan(uint64_t dev, uint64_t window_bytes) {
    for (const Planned& p : planned_) {
      if (p.dev == dev) return p.plan;
    }
    planned_.push_back({dev, PlanDirectIo(dev, window_bytes)});
    return planned_.back().plan;
  }

 private:
  struct Planned {
    uint64_t dev;
    DirectIoPlan plan;
  };
  // A deque: Plan()'s references stay valid as devices are added.
  std::deque<Planned> planned_;
};

// Per file, for one Run.
struct FileState {
  const FileSource* source = nullptr;
  // Direct reads are possible (a descriptor, buffers aligned enough, not
  // --direct_io=off).
  bool direct = false;
  // Uncached chunks read direct (the mode's choice for the file's device),
  // unless `probe` is measuring the device.
  bool direct_uncached = true;
  DirectIoProbe* probe = nullptr;
  // --direct_io=auto knows the file's device (st_dev): `dev`.
  bool auto_device = false;
  uint64_t dev = 0;
  uint64_t alignment = kDirectIoAlignment;
  uint64_t request_bytes = 0;
};

// Each file's direct-read plan for one Run into buffers aligned to
// `buffer_alignment`.
std::vector<FileState> PrepareFiles(absl::Span<const FileSource> files,
                                    uintptr_t buffer_alignment,
                                    const StagingOptions& options,
                                    RunProbes* probes, StagingStats* stats) {
  std::vector<FileState> file_states(files.size());
  for (size_t i = 0; i < files.size(); ++i) {
    FileState& f = file_states[i];
    f.source = &files[i];
    if (f.source->direct_alignment != 0) {
      f.alignment = f.source->direct_alignment;
    }
    f.direct = options.direct_io != DirectIoMode::kOff &&
               f.source->direct_fd >= 0 && buffer_alignment >= f.alignment &&
               options.chunk_bytes >= 4 * f.alignment;
    struct stat st;
    if (f.direct && options.direct_io == DirectIoMode::kAuto &&
        ::fstat(f.source->direct_fd, &st) == 0) {
      f.auto_device = true;
      f.dev = static_cast<uint64_t>(st.st_dev);
      const DirectIoPlan& plan =
          probes->Plan(f.dev, options.direct_probe_window_bytes);
      f.direct_uncached = plan.direct;
      f.probe = plan.probe.get();
    }
    f.request_bytes = options.request_bytes;
    if (f.request_bytes == 0 && f.source->fd >= 0) {
      f.request_bytes = AutoRequestBytes(BlockQueueOf(f.source->fd));
    }
    if (i == 0) stats->request_bytes = f.request_bytes;
  }
  return file_states;
}

// How one chunk of a file range reads.
struct ChunkRead {
  bool wait = false;  // a probe's window is draining: issue nothing yet
  bool direct = false;
  bool uncached = false;           // the device reads it (not the page cache)
  DirectIoProbe* probe = nullptr;  // the read is one of its window
};

// A chunk's read of `length` bytes of file `f` was submitted: one of a probe
// window's, or an uncached read the device's probe (if another Run measures
// it) must know of.
void NoteChunkIssued(const FileState& f, const ChunkRead& how, uint64_t length,
                     StagingStats* stats) {
  if (how.probe != nullptr) {
    how.probe->Issued(length, ProbeClock::now(),
                      UnmeasuredReads(how.probe->device()));
    stats->probe_bytes += length;
  } else if (how.uncached && f.auto_device && f.probe == nullptr) {
    NoteUnmeasuredRead(f.dev);
  }
}

// A read of `length` bytes of one of `probe`'s windows finished as `r` says;
// a failed, short or refused read spoils the window.
void NoteProbeLanded(DirectIoProbe* probe, const ReadResult& r,
                     uint64_t length) {
  if (probe == nullptr) return;
  probe->Landed(r.status.ok() && r.bytes_read == length && !r.direct_refused,
                ProbeClock::now(), UnmeasuredReads(probe->device()));
}

// `candidate`: the chunk could read its aligned middle direct (the file
// allows it, its range is long enough, buffer and file equally misaligned).
ChunkRead PlanChunkRead(const FileState& f, bool candidate, const Chunk& chunk,
                        const StagingOptions& options) {
  ChunkRead how;
  if (!candidate) return how;
  DirectIoProbe* probe =
      f.probe != nullptr && !f.probe->done() ? f.probe : nullptr;
  if (probe != nullptr && probe->window_open()) {
    // The window's kind, cached or not (DirectIoProbe).
    std::optional<bool> next = probe->NextRead();
    how.wait = !next.has_value();
    how.direct = next.value_or(false);
    how.probe = probe;
    return how;
  }
  // Pages already cached are copied faster than read from the device.
  if (CachedFraction(f.source->fd, chunk.file_offset(), chunk.length) >=
      options.direct_max_cached_fraction) {
    return how;
  }
  how.uncached = true;
  if (probe != nullptr) {  // an uncached chunk starts the next window
    how.direct = probe->NextRead().value_or(true);
    how.probe = probe;
    return how;
  }
  how.direct = f.probe != nullptr ? f.probe->direct_wins() : f.direct_uncached;
  return how;
}

// The next chunk of a Run and how it reads.
struct PlannedChunk {
  Chunk chunk;
  ChunkRead how;
  // Bytes the chunk is short of a staging buffer so that a direct read's
  // aligned middle lines up: in place, the chunk ends at an aligned file
  // offset; into the ring, its data starts this far into its buffer.
  uint64_t lead = 0;
};

// Plans the cursor's next chunk into `out` and moves past it; false (the
// cursor unmoved): a probe's window is draining, issue nothing yet.
// `in_place`: chunks land in the arena itself, direct only where the arena
// is as misaligned as the file; otherwise each lands in a staging buffer.
bool PlanNextChunk(ChunkCursor* cursor, absl::Span<const FileState> files,
                   const StagingOptions& options, bool in_place,
                   PlannedChunk* out) {
  const CopyRange& next = cursor->current();
  bool candidate = false;
  uint64_t lead = 0;
  if (next.from_file()) {
    const FileState& f = files[next.file_index];
    const uint64_t file_at = next.file_offset + cursor->pos();
    candidate = f.direct && next.length >= options.direct_min_bytes;
    if (in_place) {
      // Chunks end at aligned file offsets, so only a range's ends read
      // buffered.
      const uint64_t arena_at = next.arena_offset + cursor->pos();
      candidate = candidate && file_at % f.alignment == arena_at % f.alignment;
      if (candidate) lead = (file_at + options.chunk_bytes) % f.alignment;
    } else if (candidate) {
      lead = file_at % f.alignment;
    }
  }
  const Chunk c = cursor->Peek(lead);
  ChunkRead how;
  if (c.from_file()) {
    how = PlanChunkRead(files[c.range->file_index], candidate, c, options);
    if (how.wait) return false;
  }
  cursor->Advance(c);
  out->chunk = c;
  out->how = how;
  out->lead = lead;
  return true;
}

std::vector<int> Descriptors(absl::Span<const FileSource> files) {
  std::vector<int> fds;
  for (const FileSource& file : files) {
    if (file.fd >= 0) fds.push_back(file.fd);
    if (file.direct_fd >= 0) fds.push_back(file.direct_fd);
  }
  return fds;
}

uintptr_t AlignmentOf(const void* p) {
  const uintptr_t at = reinterpret_cast<uintptr_t>(p);
  return at & (~at + 1);
}

absl::Status CancelledAfter(absl::Span<const FileSource> files, uint64_t done,
                            uint64_t total) {
  return absl::CancelledError(absl::StrCat(
      "load of ", files.empty() ? std::string("memory") : files[0].name,
      files.size() > 1 ? absl::StrCat(" and ", files.size() - 1, " more")
                       : std::string(),
      " cancelled after ", done, " of ", total, " bytes"));
}

absl::Status ShortRead(const FileSource& file, uint64_t offset, uint64_t want,
                       uint64_t got) {
  return absl::DataLossError(
      absl::StrCat(file.name, ": file ended at offset ", offset + got, ", ",
                   want - got, " bytes short of the range [", offset, ", +",
                   want, ") (truncated while loading?)"));
}

}  // namespace

StagingPipeline::StagingPipeline(Device* device, std::unique_ptr<Reader> reader,
                                 const StagingOptions& options)
    : device_(device), options_(options), reader_(std::move(reader)) {}

absl::StatusOr<std::unique_ptr<StagingPipeline>> StagingPipeline::Create(
    Device* device, std::unique_ptr<Reader> reader,
    const StagingOptions& options) {
  if (device == nullptr || reader == nullptr) {
    return absl::InvalidArgumentError(
        "staging pipeline needs a device and a reader");
  }
  if (options.chunk_bytes == 0 || options.chunk_bytes > (1ull << 31)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "staging chunk must be in [1, 2 GiB], got ", options.chunk_bytes));
  }
  if (options.num_buffers < 1 || options.num_buffers > 256) {
    return absl::InvalidArgumentError(absl::StrCat(
        "staging buffers must be in [1, 256], got ", options.num_buffers));
  }
  return std::unique_ptr<StagingPipeline>(
      new StagingPipeline(device, std::move(reader), options));
}

StagingPipeline::~StagingPipeline() {
  MutexLock lock(&mu_);
  if (broken_) {
    // Reads may still land in the staging buffers: keep them (a bounded
    // leak) rather than let the kernel write into freed memory.
    for (auto& slot : slots_) slot->buffer.release();
  }
  reader_->UnregisterBuffers();
}

uint64_t StagingPipeline::staging_bytes() const {
  MutexLock lock(&mu_);
  uint64_t total = 0;
  for (const auto& slot : slots_) total += slot->buffer->size();
  return total;
}

absl::Status StagingPipeline::EnsureBuffers() {
  if (!slots_.empty()) return absl::OkStatus();
  std::vector<std::unique_ptr<Slot>> slots;
  std::vector<iovec> iovs;
  for (int i = 0; i < options_.num_buffers; ++i) {
    auto slot = std::make_unique<Slot>();
    auto buffer = device_->AllocatePinned(options_.chunk_bytes);
    if (!buffer.ok()) {
      return Annotate(
          buffer.status(),
          absl::StrCat("allocating staging buffer ", i, " of ",
                       options_.num_buffers, " on ", device_->placement()));
    }
    slot->buffer = std::move(*buffer);
    auto event = device_->CreateEvent();
    if (!event.ok()) return event.status();
    slot->event = std::move(*event);
    slot->stream = i % device_->num_streams();
    iovs.push_back({slot->buffer->data(), slot->buffer->size()});
    slots.push_back(std::move(slot));
  }
  absl::Status s = reader_->RegisterBuffers(iovs);
  if (!s.ok()) return s;
  slots_ = std::move(slots);
  return absl::OkStatus();
}

absl::Status StagingPipeline::Run(DeviceArena* arena, const FileSource& file,
                                  absl::Span<const CopyRange> ranges,
                                  const CancellationToken* cancel,
                                  const StagingProgressFn& progress,
                                  StagingStats* stats) {
  return Run(arena, absl::MakeConstSpan(&file, 1), ranges, cancel, progress,
             stats);
}

absl::Status StagingPipeline::Run(DeviceArena* arena,
                                  absl::Span<const FileSource> files,
                                  absl::Span<const CopyRange> ranges,
                                  const CancellationToken* cancel,
                                  const StagingProgressFn& progress,
                                  StagingStats* stats) {
  StagingStats local_stats;
  if (stats == nullptr) stats = &local_stats;
  *stats = StagingStats();
  if (arena == nullptr) return absl::InvalidArgumentError("no arena");
  // Check every range before touching anything.
  uint64_t total = 0;
  for (size_t i = 0; i < ranges.size(); ++i) {
    const CopyRange& r = ranges[i];
    absl::Status s = CheckArenaRange(arena->size(), r.arena_offset, r.length);
    if (!s.ok()) return Annotate(s, absl::StrCat("range ", i));
    if (r.generate) {
      if (r.unit == 0 || r.length % r.unit != 0 ||
          r.unit > options_.chunk_bytes) {
        return absl::InvalidArgumentError(
            absl::StrCat("range ", i, ": generated length ", r.length,
                         " in units of ", r.unit, " does not fit chunks of ",
                         options_.chunk_bytes, " bytes"));
      }
    } else if (r.host_source == nullptr && r.length > 0) {
      if (r.file_index >= files.size()) {
        return absl::InvalidArgumentError(absl::StrCat("range ", i, ": file ",
                                                       r.file_index, " of ",
                                                       files.size(), " files"));
      }
      const FileSource& file = files[r.file_index];
      if (file.fd < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "file ranges of ", file.name, " without a file descriptor"));
      }
      if (r.file_offset > file.size || r.length > file.size - r.file_offset) {
        return absl::OutOfRangeError(absl::StrCat(
            "range ", i, ": [", r.file_offset, ", +", r.length, ") is outside ",
            file.name, " (", file.size, " bytes)"));
      }
    }
    if (r.length > UINT64_MAX - total) {
      return absl::InvalidArgumentError("range lengths overflow");
    }
    total += r.length;
  }
  MutexLock lock(&mu_);
  if (broken_) {
    return absl::FailedPreconditionError(
        "staging pipeline unusable after an earlier reader failure");
  }
  if (uint8_t* host = device_->HostAddress(*arena); host != nullptr) {
    return RunInPlace(host, files, ranges, total, cancel, progress, stats);
  }
  return RunStaged(arena, files, ranges, total, cancel, progress, stats);
}

absl::StatusOr<std::unique_ptr<DeviceArena>> StagingPipeline::Load(
    uint64_t arena_bytes, const FileSource& file,
    absl::Span<const CopyRange> ranges, const CancellationToken* cancel,
    const StagingProgressFn& progress, StagingStats* stats) {
  return Load(arena_bytes, absl::MakeConstSpan(&file, 1), ranges, cancel,
              progress, stats);
}

absl::StatusOr<std::unique_ptr<DeviceArena>> StagingPipeline::Load(
    uint64_t arena_bytes, absl::Span<const FileSource> files,
    absl::Span<const CopyRange> ranges, const CancellationToken* cancel,
    const StagingProgressFn& progress, StagingStats* stats) {
  auto arena = device_->Allocate(arena_bytes);
  if (!arena.ok()) {
    return Annotate(
        arena.status(),
        absl::StrCat("allocating a ", arena_bytes, "-byte arena on ",
                     device_->placement(), " for ",
                     files.size() == 1 ? files[0].name
                                       : absl::StrCat(files.size(), " files")));
  }
  absl::Status s = Run(arena->get(), files, ranges, cancel, progress, stats);
  if (s.ok()) return std::move(*arena);
  if (broken_ && reader_->in_flight() > 0) {
    // Reads the reader could not take back may still write into a
    // host-addressed arena: leaked on purpose, never freed and reused.
    LogWarning("%s: leaking a %d-byte arena with reads still in flight",
               device_->placement(), arena_bytes);
    (void)arena->release();
  }
  return s;  // the arena is freed here
}

absl::Status StagingPipeline::RunInPlace(uint8_t* host,
                                         absl::Span<const FileSource> files,
                                         absl::Span<const CopyRange> ranges,
                                         uint64_t total,
                                         const CancellationToken* cancel,
                                         const StagingProgressFn& progress,
                                         StagingStats* stats) {
  stats->host_addressed = true;
  RunProbes probes;
  std::vector<FileState> file_states =
      PrepareFiles(files, AlignmentOf(host), options_, &probes, stats);
  if (absl::Status s = reader_->RegisterFiles(Descriptors(files)); !s.ok()) {
    return s;
  }
  // The chunks in flight, by reader tag.
  struct Read {
    uint32_t file_index = 0;
    uint64_t file_offset = 0;
    uint64_t length = 0;
    DirectIoProbe* probe = nullptr;  // one of its window
  };
  // As many chunks in flight as the ring would have: the same load on the
  // device (a cold virtio disk measures fewer, larger reads faster).
  const int depth = std::min(reader_->queue_depth(), options_.num_buffers);
  std::vector<Read> in_flight(static_cast<size_t>(depth));
  std::vector<int> free_tags;
  for (int i = depth - 1; i >= 0; --i) free_tags.push_back(i);
  absl::Status status;
  auto fail = [&](absl::Status s) {
    if (status.ok()) status = std::move(s);
  };
  uint64_t done = 0;
  auto landed = [&](uint64_t length) {
    done += length;
    ++stats->chunks;
    if (progress && status.ok() &&
        !(cancel != nullptr && cancel->cancelled())) {
      progress(done, total);
    }
  };
  ChunkCursor cursor(ranges, options_.chunk_bytes);
  std::vector<ReadResult> results;
  int reads = 0;
  for (;;) {
    while (status.ok() && !cursor.done() && reads < depth) {
      if (cancel != nullptr && cancel->cancelled()) break;
      PlannedChunk planned;
      if (!PlanNextChunk(&cursor, file_states, options_, /*in_place=*/true,
                         &planned)) {
        break;
      }
      const Chunk& c = planned.chunk;
      const ChunkRead& how = planned.how;
      uint8_t* dst = host + c.arena_offset();
      if (c.from_file()) {
        const FileState& f = file_states[c.range->file_index];
        const FileSource& file = *f.source;
        const int tag = free_tags.back();
        ReadRequest req;
        req.fd = file.fd;
        req.direct_fd = how.direct ? file.direct_fd : -1;
        req.direct_alignment = static_cast<uint32_t>(f.alignment);
        req.max_piece_bytes = static_cast<size_t>(f.request_bytes);
        req.offset = c.file_offset();
        req.buffer = dst;
        req.length = static_cast<size_t>(c.length);
        req.tag = static_cast<uint64_t>(tag);
        absl::Status s = reader_->Submit(req);
        if (!s.ok()) {
          fail(Annotate(s, absl::StrCat("reading ", file.name, " at offset ",
                                        c.file_offset())));
          break;
        }
        free_tags.pop_back();
        in_flight[tag] = {c.range->file_index, c.file_offset(), c.length,
                          how.probe};
        NoteChunkIssued(f, how, c.length, stats);
        ++reads;
        stats->max_reads_in_flight =
            std::max(stats->max_reads_in_flight, reads);
      } else if (c.generated()) {
        absl::Status s = c.Generate(dst);
        if (!s.ok()) {
          fail(s);
          break;
        }
        landed(c.length);
      } else {
        std::memcpy(dst, c.memory(), c.length);
        landed(c.length);
      }
    }
    if (status.ok() && cancel != nullptr && cancel->cancelled()) {
      fail(CancelledAfter(files, done, total));
    }
    if (reads == 0) break;
    absl::Status s = reader_->Wait(1, &results);
    if (!s.ok()) {
      fail(Annotate(s, "reader"));
      // The reads still in flight write into the caller's arena: wait for
      // them before it can be freed; a reader that cannot even do that is
      // never used again.
      results.clear();
      for (int tries = 0; tries < 100 && reader_->in_flight() > 0; ++tries) {
        if (!reader_->Wait(reader_->in_flight(), &results).ok()) continue;
      }
      if (reader_->in_flight() > 0) broken_ = true;
      break;
    }
    for (const ReadResult& r : results) {
      const Read& read = in_flight[static_cast<size_t>(r.tag)];
      const FileSource& file = files[read.file_index];
      --reads;
      free_tags.push_back(static_cast<int>(r.tag));
      NoteProbeLanded(read.probe, r, read.length);
      stats->direct_bytes += r.direct_bytes;
      if (r.direct_refused) {
        ++stats->direct_refused;
        file_states[read.file_index].direct = false;  // the rest buffered
      }
      if (!r.status.ok()) {
        fail(Annotate(r.status, absl::StrCat("reading ", file.name,
                                             " at offset ", read.file_offset)));
      } else if (r.bytes_read != read.length) {
        fail(ShortRead(file, read.file_offset, read.length, r.bytes_read));
      } else {
        landed(read.length);
      }
    }
    results.clear();
  }
  if (!broken_) reader_->UnregisterFiles();
  if (status.ok()) stats->bytes = done;
  return status;
}

absl::Status StagingPipeline::RunStaged(DeviceArena* arena,
                                        absl::Span<const FileSource> files,
                                        absl::Span<const CopyRange> ranges,
                                        uint64_t total,
                                        const CancellationToken* cancel,
                                        const StagingProgressFn& progress,
                                        StagingStats* stats) {
  absl::Status status = EnsureBuffers();
  if (!status.ok()) return status;
  // Direct reads need buffers at least as aligned as the file, and room for
  // the misaligned lead of a chunk.
  uintptr_t buffer_alignment = ~uintptr_t{0};
  for (const auto& slot : slots_) {
    uintptr_t at = reinterpret_cast<uintptr_t>(slot->buffer->data());
    buffer_alignment = std::min(buffer_alignment, at & (~at + 1));
  }
  RunProbes probes;
  std::vector<FileState> file_states =
      PrepareFiles(files, buffer_alignment, options_, &probes, stats);
  // Fixed files for this Run's descriptors (they stay open through it).
  if (absl::Status s = reader_->RegisterFiles(Descriptors(files)); !s.ok()) {
    return s;
  }
  ChunkCursor cursor(ranges, options_.chunk_bytes);
  std::vector<int> free_slots;
  for (int i = static_cast<int>(slots_.size()) - 1; i >= 0; --i) {
    free_slots.push_back(i);
  }
  std::deque<int> busy;  // in issue order
  int reads = 0, copies = 0;
  uint64_t done = 0;
  std::vector<ReadResult> results;

  auto release = [&](int i) {
    slots_[i]->state = Slot::State::kFree;
    busy.erase(std::find(busy.begin(), busy.end(), i));
    free_slots.push_back(i);
  };
  auto fail = [&](absl::Status s) {
    if (status.ok()) status = std::move(s);
  };
  // Queues the copy of slot i's bytes; the slot stays busy until its event.
  auto start_copy = [&](int i) {
    Slot& slot = *slots_[i];
    absl::Status s = device_->CopyToDeviceAsync(
        arena, slot.arena_offset, slot.buffer->data() + slot.data_offset,
        slot.length, slot.stream);
    bool queued = s.ok();
    if (s.ok()) s = device_->RecordEvent(slot.event.get(), slot.stream);
    if (!s.ok()) {
      fail(Annotate(s, absl::StrCat("copying ", slot.length, " bytes to ",
                                    device_->placement(), " at arena offset ",
                                    slot.arena_offset)));
      // A queued copy must finish before its buffer is reused.
      if (queued) (void)device_->Synchronize();
      release(i);
      return;
    }
    slot.state = Slot::State::kCopying;
    ++copies;
    stats->max_copies_in_flight = std::max(stats->max_copies_in_flight, copies);
  };
  auto copy_finished = [&](int i, const absl::StatusOr<bool>& r) {
    Slot& slot = *slots_[i];
    --copies;
    if (!r.ok()) {
      fail(Annotate(r.status(),
                    absl::StrCat("copy of ", slot.length, " bytes to ",
                                 device_->placement(), " at arena offset ",
                                 slot.arena_offset)));
    } else {
      done += slot.length;
      ++stats->chunks;
      if (progress && status.ok() &&
          !(cancel != nullptr && cancel->cancelled())) {
        progress(done, total);
      }
    }
    release(i);
  };
  auto handle_reads = [&]() {
    for (ReadResult& r : results) {
      int i = static_cast<int>(r.tag);
      Slot& slot = *slots_[i];
      const FileSource& file = files[slot.file_index];
      --reads;
      NoteProbeLanded(slot.probe, r, slot.length);
      slot.probe = nullptr;
      stats->direct_bytes += r.direct_bytes;
      if (r.direct_refused) {
        ++stats->direct_refused;
        file_states[slot.file_index].direct = false;  // the rest buffered
      }
      if (!r.status.ok()) {
        fail(Annotate(r.status, absl::StrCat("reading ", file.name,
                                             " at offset ", slot.file_offset)));
        release(i);
      } else if (r.bytes_read != slot.length) {
        fail(ShortRead(file, slot.file_offset, slot.length, r.bytes_read));
        release(i);
      } else if (!status.ok()) {
        release(i);  // stopping: do not copy
      } else {
        start_copy(i);
      }
    }
    results.clear();
  };

  for (;;) {
    // Issue work into free buffers.
    const int depth = reader_->queue_depth();
    while (status.ok() && !cursor.done() && !free_slots.empty() &&
           reads < depth) {
      if (cancel != nullptr && cancel->cancelled()) break;
      // A direct-capable chunk starts in its buffer as misaligned as in its
      // file, so the reader can read the aligned middle direct.
      PlannedChunk planned;
      if (!PlanNextChunk(&cursor, file_states, options_, /*in_place=*/false,
                         &planned)) {
        break;
      }
      const Chunk& c = planned.chunk;
      const ChunkRead& how = planned.how;
      const uint64_t lead = planned.lead;
      int i = free_slots.back();
      free_slots.pop_back();
      Slot& slot = *slots_[i];
      slot.probe = nullptr;
      slot.data_offset = lead;
      slot.arena_offset = c.arena_offset();
      slot.length = c.length;
      busy.push_back(i);
      if (c.from_file()) {
        const FileState& f = file_states[c.range->file_index];
        const FileSource& file = *f.source;
        slot.file_index = c.range->file_index;
        slot.file_offset = c.file_offset();
        ReadRequest req;
        req.fd = file.fd;
        req.direct_fd = how.direct ? file.direct_fd : -1;
        req.direct_alignment = static_cast<uint32_t>(f.alignment);
        req.max_piece_bytes = static_cast<size_t>(f.request_bytes);
        req.offset = slot.file_offset;
        req.buffer = slot.buffer->data() + slot.data_offset;
        req.length = static_cast<size_t>(c.length);
        req.tag = static_cast<uint64_t>(i);
        absl::Status s = reader_->Submit(req);
        if (!s.ok()) {
          fail(Annotate(s, absl::StrCat("reading ", file.name, " at offset ",
                                        slot.file_offset)));
          release(i);
          break;
        }
        slot.state = Slot::State::kReading;
        slot.probe = how.probe;
        NoteChunkIssued(f, how, c.length, stats);
        ++reads;
        stats->max_reads_in_flight =
            std::max(stats->max_reads_in_flight, reads);
      } else if (c.generated()) {
        absl::Status s = c.Generate(slot.buffer->data());
        if (!s.ok()) {
          fail(s);
          release(i);
          break;
        }
        start_copy(i);
      } else {
        std::memcpy(slot.buffer->data(), c.memory(), c.length);
        start_copy(i);
      }
    }
    if (status.ok() && cancel != nullptr && cancel->cancelled()) {
      fail(CancelledAfter(files, done, total));
    }
    if (busy.empty()) break;

    // Collect what finished without blocking.
    bool progressed = false;
    if (reads > 0) {
      absl::Status s = reader_->Wait(0, &results);
      if (!s.ok()) {
        broken_ = true;
        fail(Annotate(s, "reader"));
        // Reads may be outstanding: drain copies and give up on the reads.
        break;
      }
      progressed = !results.empty();
      handle_reads();
    }
    for (size_t k = 0; k < busy.size();) {
      int i = busy[k];
      if (slots_[i]->state == Slot::State::kCopying) {
        absl::StatusOr<bool> r = slots_[i]->event->Query();
        if (!r.ok() || *r) {
          copy_finished(i, r);
          progressed = true;
          continue;  // busy[k] is now the next slot
        }
      }
      ++k;
    }
    if (progressed || busy.empty()) continue;

    // Nothing finished: block on the oldest piece of work.
    int oldest = busy.front();
    if (slots_[oldest]->state == Slot::State::kReading) {
      absl::Status s = reader_->Wait(1, &results);
      if (!s.ok()) {
        broken_ = true;
        fail(Annotate(s, "reader"));
        break;
      }
      handle_reads();
    } else {
      absl::Status s = slots_[oldest]->event->Wait();
      if (s.ok()) {
        copy_finished(oldest, true);
      } else {
        copy_finished(oldest, s);
      }
    }
  }
  // After a reader failure, copies may still be running from the buffers.
  for (int i : std::vector<int>(busy.begin(), busy.end())) {
    if (slots_[i]->state == Slot::State::kCopying) {
      absl::Status s = slots_[i]->event->Wait();
      (void)s;
      --copies;
      release(i);
    }
  }
  if (!broken_) reader_->UnregisterFiles();
  if (status.ok()) stats->bytes = done;
  return status;
}

}  // namespace weightd
