#include "loader/device/fake_device.h"

#include <cstring>
#include <deque>
#include <map>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "loader/common/mutex.h"
#include "loader/device/shared_memory.h"

namespace weightd {

struct FakeDevice::State {
  struct Copy {
    uint8_t* dst = nullptr;
    const void* src = nullptr;
    uint64_t length = 0;
    uint64_t seq = 0;
    absl::Status error;  // injected: the copy fails with it when it runs
  };
  struct Stream {
    std::deque<Copy> queue;
    uint64_t submitted = 0;                     // seq of the last queued copy
    uint64_t completed = 0;                     // seq of the last finished copy
    uint64_t last_recorded = 0;                 // seq at the latest RecordEvent
    std::map<uint64_t, absl::Status> failures;  // seq -> error
  };

  Options options;
  Mutex mu;
  CondVar work_cv;
  CondVar done_cv;
  std::vector<Stream> streams ABSL_GUARDED_BY(mu);
  bool stop ABSL_GUARDED_BY(mu) = false;
  uint64_t allocated_bytes ABSL_GUARDED_BY(mu) = 0;
  int live_arenas ABSL_GUARDED_BY(mu) = 0;
  // Failures already reported by Synchronize(), per stream.
  std::vector<uint64_t> synchronized ABSL_GUARDED_BY(mu);

  bool Idle() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    for (const Stream& s : streams) {
      if (s.completed != s.submitted) return false;
    }
    return true;
  }

  void WaitIdle() {
    MutexLock lock(&mu);
    while (!Idle()) done_cv.Wait(&mu);
  }

  void Worker(int index) {
    for (;;) {
      Copy copy;
      {
        MutexLock lock(&mu);
        while (streams[index].queue.empty() && !stop) work_cv.Wait(&mu);
        if (streams[index].queue.empty()) return;
        copy = streams[index].queue.front();
      }
      if (options.copy_delay > absl::ZeroDuration()) {
        absl::SleepFor(options.copy_delay);
      }
      const absl::Status error = copy.error;
      if (error.ok() && copy.length > 0) {
        std::memcpy(copy.dst, copy.src, copy.length);
      }
      MutexLock lock(&mu);
      Stream& s = streams[index];
      s.queue.pop_front();
      s.completed = copy.seq;
      if (!error.ok()) {
        s.failures[copy.seq] = absl::Status(
            error.code(),
            absl::StrCat("fake GPU ", options.index, " copy of ", copy.length,
                         " bytes on stream ", index, ": ", error.message()));
      }
      done_cv.SignalAll();
    }
  }

  // The first failure on `stream` with seq in (after, upto].
  absl::Status FailureIn(int stream, uint64_t after, uint64_t upto)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    const auto& f = streams[stream].failures;
    auto it = f.upper_bound(after);
    if (it != f.end() && it->first <= upto) return it->second;
    return absl::OkStatus();
  }

  std::vector<std::thread> threads;
};

namespace {

class FakeArena : public DeviceArena {
 public:
  FakeArena(std::shared_ptr<FakeDevice::State> state,
            std::unique_ptr<SharedMemorySegment> segment)
      : state_(std::move(state)), segment_(std::move(segment)) {}
  ~FakeArena() override {
    // Copies still queued may write here: let them land first.
    state_->WaitIdle();
    MutexLock lock(&state_->mu);
    state_->allocated_bytes -= segment_->size();
    --state_->live_arenas;
  }
  uint64_t size() const override { return segment_->size(); }
  int device_index() const override { return state_->options.index; }
  void* device_pointer() const override { return segment_->data(); }
  const SharedMemorySegment* segment() const { return segment_.get(); }
  const FakeDevice::State* state() const { return state_.get(); }

 private:
  std::shared_ptr<FakeDevice::State> state_;
  std::unique_ptr<SharedMemorySegment> segment_;
};

class FakeEvent : public DeviceEvent {
 public:
  explicit FakeEvent(std::shared_ptr<FakeDevice::State> state)
      : state_(std::move(state)) {}

  absl::StatusOr<bool> Query() override {
    MutexLock lock(&state_->mu);
    if (stream_ < 0) return true;
    if (state_->streams[stream_].completed < seq_) return false;
    absl::Status s = state_->FailureIn(stream_, after_, seq_);
    if (!s.ok()) return s;
    return true;
  }

  absl::Status Wait() override {
    MutexLock lock(&state_->mu);
    if (stream_ < 0) return absl::OkStatus();
    while (state_->streams[stream_].completed < seq_) {
      state_->done_cv.Wait(&state_->mu);
    }
    return state_->FailureIn(stream_, after_, seq_);
  }

  // Called with state_->mu held. The event covers the copies queued on the
  // stream since the previous record there (by any event): each failure is
  // reported by the first event recorded after it.
  void Record(int stream, uint64_t after, uint64_t seq) {
    stream_ = stream;
    after_ = after;
    seq_ = seq;
  }
  const FakeDevice::State* state() const { return state_.get(); }

 private:
  std::shared_ptr<FakeDevice::State> state_;
  int stream_ = -1;
  uint64_t after_ = 0;  // failures at or before this seq belong to others
  uint64_t seq_ = 0;
};

}  // namespace

absl::StatusOr<std::shared_ptr<FakeDevice::State>> FakeDevice::Start(
    const Options& options) {
  if (options.num_streams < 1 || options.num_streams > 64) {
    return absl::InvalidArgumentError(absl::StrCat(
        "fake GPU streams must be in [1, 64], got ", options.num_streams));
  }
  if (options.index < 0 || options.index > 255) {
    return absl::InvalidArgumentError("fake GPU index must be in [0, 255]");
  }
  auto state = std::make_shared<State>();
  state->options = options;
  {
    MutexLock lock(&state->mu);
    state->streams.resize(options.num_streams);
    state->synchronized.assign(options.num_streams, 0);
  }
  for (int i = 0; i < options.num_streams; ++i) {
    State* raw = state.get();
    state->threads.emplace_back([raw, i] { raw->Worker(i); });
  }
  return state;
}

FakeDevice::FakeDevice(const Options& options, std::shared_ptr<State> state)
    : index_(options.index),
      num_streams_(options.num_streams),
      state_(std::move(state)) {}

absl::StatusOr<std::unique_ptr<FakeDevice>> FakeDevice::Create(
    const Options& options) {
  absl::StatusOr<std::shared_ptr<State>> state = Start(options);
  if (!state.ok()) return state.status();
  return std::unique_ptr<FakeDevice>(new FakeDevice(options, *state));
}

FakeDevice::~FakeDevice() {
  {
    MutexLock lock(&state_->mu);
    state_->stop = true;  // workers finish their queues first
    state_->work_cv.SignalAll();
  }
  for (std::thread& t : state_->threads) t.join();
  state_->threads.clear();
}

std::string FakeDevice::placement() const {
  return absl::StrCat("cuda:", index_);
}

std::string FakeDevice::uuid() const {
  return absl::StrFormat("GPU-fake-0000-0000-0000-%012d", index_);
}

std::string FakeDevice::name() const {
  return absl::StrCat("weightd fake GPU ", index_);
}

absl::StatusOr<MemoryInfo> FakeDevice::GetMemoryInfo() const {
  absl::Status fault = MemoryInfoFault();
  if (!fault.ok()) return fault;
  MutexLock lock(&state_->mu);
  MemoryInfo info;
  info.total_bytes = state_->options.total_memory;
  info.free_bytes = info.total_bytes - state_->allocated_bytes;
  return info;
}

absl::StatusOr<std::unique_ptr<DeviceArena>> FakeDevice::Allocate(
    uint64_t bytes) {
  absl::Status fault = AllocationFault(bytes);
  if (!fault.ok()) return fault;
  {
    MutexLock lock(&state_->mu);
    uint64_t total = state_->options.total_memory;
    if (bytes > total - state_->allocated_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "fake GPU ", index_, ": out of memory allocating ", bytes, " bytes (",
          total - state_->allocated_bytes, " free of ", total, ")"));
    }
    state_->allocated_bytes += bytes;  // reserved; undone below on failure
    ++state_->live_arenas;
  }
  // Prefaulted in parallel (on huge pages where /dev/shm has them): the
  // stream workers' copies then run at memory speed, not page-fault speed.
  auto segment = SharedMemorySegment::Create(
      bytes, absl::StrCat("weightd-fake", index_), /*populate=*/true);
  if (!segment.ok()) {
    MutexLock lock(&state_->mu);
    state_->allocated_bytes -= bytes;
    --state_->live_arenas;
    // Its memory is /dev/shm's: a full one fails here, not at the first copy.
    return absl::Status(
        segment.status().code(),
        absl::StrCat("fake GPU ", index_, ": ", segment.status().message()));
  }
  return std::unique_ptr<DeviceArena>(
      new FakeArena(state_, std::move(*segment)));
}

absl::StatusOr<std::unique_ptr<PinnedBuffer>> FakeDevice::AllocatePinned(
    uint64_t bytes) {
  // Resident from the start, as page-locked memory is: the staging ring is
  // allocated once per device and reused by every load.
  HostMemoryOptions options;
  options.prefault = true;
  return AllocateHostMemory(bytes, options);
}

absl::Status FakeDevice::CopyToDeviceAsync(DeviceArena* arena, uint64_t offset,
                                           const void* src, uint64_t length,
                                           int stream) {
  absl::Status s = CheckStream(stream, num_streams_);
  if (!s.ok()) return s;
  FakeArena* fake = dynamic_cast<FakeArena*>(arena);
  if (fake == nullptr || fake->state() != state_.get()) {
    return absl::InvalidArgumentError(
        absl::StrCat("not an arena of fake GPU ", index_));
  }
  s = CheckArenaRange(arena->size(), offset, length);
  if (!s.ok()) return s;
  if (src == nullptr && length > 0) {
    return absl::InvalidArgumentError("copy from a null host pointer");
  }
  s = SubmitFault();
  if (!s.ok()) return s;
  absl::Status copy_error = CopyFault();
  MutexLock lock(&state_->mu);
  State::Stream& st = state_->streams[stream];
  State::Copy copy;
  copy.dst = fake->segment()->data() + offset;
  copy.src = src;
  copy.length = length;
  copy.seq = ++st.submitted;
  copy.error = std::move(copy_error);
  st.queue.push_back(copy);
  state_->work_cv.SignalAll();
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<DeviceEvent>> FakeDevice::CreateEvent() {
  return std::unique_ptr<DeviceEvent>(new FakeEvent(state_));
}

absl::Status FakeDevice::RecordEvent(DeviceEvent* event, int stream) {
  absl::Status s = CheckStream(stream, num_streams_);
  if (!s.ok()) return s;
  FakeEvent* fake = dynamic_cast<FakeEvent*>(event);
  if (fake == nullptr || fake->state() != state_.get()) {
    return absl::InvalidArgumentError(
        absl::StrCat("not an event of fake GPU ", index_));
  }
  MutexLock lock(&state_->mu);
  State::Stream& st = state_->streams[stream];
  fake->Record(stream, st.last_recorded, st.submitted);
  st.last_recorded = st.submitted;
  return absl::OkStatus();
}

absl::Status FakeDevice::Synchronize() {
  MutexLock lock(&state_->mu);
  while (!state_->Idle()) state_->done_cv.Wait(&state_->mu);
  absl::Status first;
  for (int i = 0; i < num_streams_; ++i) {
    uint64_t upto = state_->streams[i].completed;
    absl::Status s = state_->FailureIn(i, state_->synchronized[i], upto);
    state_->synchronized[i] = upto;
    if (first.ok() && !s.ok()) first = s;
  }
  return first;
}

absl::StatusOr<ArenaHandle> FakeDevice::ExportHandle(const DeviceArena& arena) {
  const FakeArena* fake = dynamic_cast<const FakeArena*>(&arena);
  if (fake == nullptr || fake->state() != state_.get()) {
    return absl::InvalidArgumentError(
        absl::StrCat("not an arena of fake GPU ", index_));
  }
  SharedHandleInfo info;
  info.kind = SharedHandleKind::kFakeGpu;
  info.device_index = index_;
  info.size = fake->segment()->size();
  info.name = fake->segment()->name();
  absl::StatusOr<IpcHandle> bytes = EncodeSharedHandle(info);
  if (!bytes.ok()) return bytes.status();
  return ArenaHandle{ArenaHandleKind::kSharedMemory, *bytes};
}

uint8_t* FakeDevice::ArenaMemory(const DeviceArena& arena) const {
  const FakeArena* fake = dynamic_cast<const FakeArena*>(&arena);
  if (fake == nullptr || fake->state() != state_.get()) return nullptr;
  return fake->segment()->data();
}

uint8_t* FakeDevice::HostAddress(const DeviceArena& arena) const {
  if (state_->options.copy_delay > absl::ZeroDuration()) return nullptr;
  return ArenaMemory(arena);
}

int FakeDevice::live_arenas() const {
  MutexLock lock(&state_->mu);
  return state_->live_arenas;
}

}  // namespace weightd
