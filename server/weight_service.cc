#include "server/weight_service.h"

#include <algorithm>
#include <deque>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "loader/common/logging.h"
#include "loader/device/shared_memory.h"
#include "server/proto_mapping.h"
#include "server/request_validation.h"

namespace weightd {
namespace {

namespace v1 = ::weightd::v1;

constexpr uint32_t kDefaultChunkBytes = 1u << 20;
constexpr uint32_t kMaxChunkBytes = 16u << 20;

std::shared_ptr<const LoadedModel> AsLoadedModel(
    const std::shared_ptr<const CacheValue>& v) {
  return std::static_pointer_cast<const LoadedModel>(v);
}

// A call refused before it started (authorization, validation).
template <typename Response>
class RefusedWriteReactor : public grpc::ServerWriteReactor<Response> {
 public:
  explicit RefusedWriteReactor(const grpc::Status& status) {
    this->Finish(status);
  }
  void OnDone() override { delete this; }
};

class RefusedLeaseReactor
    : public grpc::ServerBidiReactor<v1::LeaseRequest, v1::LeaseEvent> {
 public:
  explicit RefusedLeaseReactor(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

}  // namespace

// Load: the manager answers a hit at once and runs anything else on its load
// pool; the reactor streams coalesced progress events, then the model
// description. Writes and Finish are started outside the reactor's mutex.
class WeightServiceImpl::LoadReactor
    : public grpc::ServerWriteReactor<v1::LoadEvent> {
 public:
  LoadReactor(WeightServiceImpl* service, const v1::LoadRequest& request)
      : service_(service),
        path_(request.path()),
        form_(request.compact_description() ? TensorListForm::kCompact
                                            : TensorListForm::kRepeated),
        start_(absl::Now()) {
    service_->load_requests_->Increment();
    {
      MutexLock lock(&service_->threads_mu_);
      ++service_->running_loads_;
    }
    service_->manager_->LoadAsync(
        SpecFromRequest(request),
        [this](uint64_t done, uint64_t total) { OnProgress(done, total); },
        &cancel_,
        [this](absl::StatusOr<ModelManager::LoadResult> result) {
          OnLoaded(std::move(result));
        });
  }

  void OnWriteDone(bool ok) override {
    bool client_gone = false;
    {
      MutexLock lock(&mu_);
      writing_ = false;
      if (!ok && !finished_) {
        finished_ = true;
        client_gone = true;
      }
    }
    if (client_gone) {
      cancel_.Cancel();
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
      return;
    }
    MaybeWrite();
  }

  // The client cancelled or disconnected: a load nobody else waits for stops.
  void OnCancel() override { cancel_.Cancel(); }

  void OnDone() override { Unref(); }

 private:
  void OnProgress(uint64_t done, uint64_t total) {
    {
      MutexLock lock(&mu_);
      pending_progress_ = true;
      progress_done_ = done;
      progress_total_ = total;
    }
    MaybeWrite();
  }

  void OnLoaded(absl::StatusOr<ModelManager::LoadResult> result) {
    service_->load_seconds_->Observe(
        absl::ToDoubleSeconds(absl::Now() - start_));
    {
      MutexLock lock(&mu_);
      if (result.ok()) {
        auto info = service_->manager_->Describe(result->model_id);
        v1::ModelDescription* model = final_event_.mutable_model();
        FillModelDescription(result->model_id, *result->model,
                             info.ok() ? &*info : nullptr, form_, model);
        model->set_cache_hit(result->cache_hit);
        model->set_bytes_read(result->cache_hit ? 0
                                                : result->model->bytes_read);
      } else {
        service_->load_errors_->Increment();
        LogWarning("load %s failed: %s", path_, result.status().ToString());
        final_status_ = ToGrpcStatus(result.status());
      }
      done_loading_ = true;
    }
    MaybeWrite();
    {
      MutexLock lock(&service_->threads_mu_);
      --service_->running_loads_;
      service_->threads_done_.SignalAll();
    }
    Unref();
  }

  // Starts the next write (progress, or the final event) if none is running.
  void MaybeWrite() {
    enum class Next { kProgress, kModel, kError } next;
    {
      MutexLock lock(&mu_);
      if (writing_ || finished_) return;
      if (done_loading_) {
        finished_ = true;
        next = final_status_.ok() ? Next::kModel : Next::kError;
      } else if (pending_progress_) {
        pending_progress_ = false;
        progress_event_.mutable_progress()->set_bytes_done(progress_done_);
        progress_event_.mutable_progress()->set_bytes_total(progress_total_);
        writing_ = true;
        next = Next::kProgress;
      } else {
        return;
      }
    }
    // The events are not touched while their write runs: progress_event_
    // changes only while writing_ is false, the final ones never after
    // finished_.
    switch (next) {
      case Next::kProgress:
        StartWrite(&progress_event_);
        break;
      case Next::kModel:
        StartWriteAndFinish(&final_event_, grpc::WriteOptions(),
                            grpc::Status::OK);
        break;
      case Next::kError:
        Finish(final_status_);
        break;
    }
  }

  void Unref() {
    if (refs_.fetch_sub(1) == 1) delete this;
  }

  WeightServiceImpl* const service_;
  const std::string path_;
  const TensorListForm form_;
  const absl::Time start_;
  std::atomic<int> refs_{2};  // the load's answer and gRPC
  CancellationToken cancel_;
  Mutex mu_;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool pending_progress_ ABSL_GUARDED_BY(mu_) = false;
  bool done_loading_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t progress_done_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t progress_total_ ABSL_GUARDED_BY(mu_) = 0;
  v1::LoadEvent progress_event_;
  v1::LoadEvent final_event_;
  grpc::Status final_status_;
};

// Lease: models acquired on the stream stay resident until released, the stream
// ends, or the client disappears (gRPC cancels the call when the connection
// drops).
class WeightServiceImpl::LeaseReactor
    : public grpc::ServerBidiReactor<v1::LeaseRequest, v1::LeaseEvent> {
 public:
  LeaseReactor(WeightServiceImpl* service, std::string session_id,
               const Caller& caller)
      : service_(service),
        session_id_(std::move(session_id)),
        peer_(caller.Describe()) {
    LogDebug("lease session %s opened by %s", session_id_, peer_);
    service_->manager_->OpenSession(session_id_);
    service_->lease_sessions_.fetch_add(1);
    service_->lease_opened_->Increment();
    v1::LeaseEvent opened;
    opened.set_session_id(session_id_);
    opened.set_kind(v1::LeaseEvent::OPENED);
    bool refused = false;
    {
      // Drain() sets draining_ before it takes leases_mu_ to end the
      // registered streams: a stream registered here is either ended there
      // or sees draining_.
      MutexLock lock(&service_->leases_mu_);
      refused = service_->draining_.load();
      if (!refused) {
        service_->lease_reactors_.insert(this);
        service_->session_connections_[session_id_] = caller.connection;
      }
    }
    if (refused) {
      {
        MutexLock lock(&mu_);
        finishing_ = true;
        finish_status_ = grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                      "weightd is shutting down");
      }
      Pump();
      return;
    }
    Enqueue(std::move(opened));
    StartRead(&request_);
  }

  // Shutdown: finish the stream once the write in progress (if any) is done.
  void End() {
    {
      MutexLock lock(&mu_);
      finishing_ = true;
      finish_status_ = grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                    "weightd is shutting down");
    }
    Pump();
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      ReleaseAll();
      {
        MutexLock lock(&mu_);
        finishing_ = true;
      }
      Pump();
      return;
    }
    v1::LeaseEvent event;
    event.set_session_id(session_id_);
    absl::Status status;
    if (request_.has_acquire_model_id()) {
      event.set_model_id(BoundForMessage(request_.acquire_model_id()));
      status = ValidateModelId(request_.acquire_model_id());
      if (status.ok()) {
        status = service_->manager_->Acquire(request_.acquire_model_id(),
                                             session_id_);
      }
      event.set_kind(v1::LeaseEvent::ACQUIRED);
    } else if (request_.has_release_model_id()) {
      event.set_model_id(BoundForMessage(request_.release_model_id()));
      status = ValidateModelId(request_.release_model_id());
      if (status.ok()) {
        status = service_->manager_->Release(request_.release_model_id(),
                                             session_id_);
      }
      event.set_kind(v1::LeaseEvent::RELEASED);
    } else {
      status = absl::InvalidArgumentError("lease request names no action");
    }
    if (!status.ok()) {
      event.set_kind(v1::LeaseEvent::ERROR);
      event.set_error(BoundStatusMessage(status.message()));
    }
    {
      MutexLock lock(&mu_);
      if (finished_ || finishing_) return;
      writes_.push_back(std::move(event));
    }
    Pump();
    StartRead(&request_);
  }

  void OnWriteDone(bool ok) override {
    {
      MutexLock lock(&mu_);
      writes_.pop_front();
      writing_ = false;
      if (!ok) {
        writes_.clear();
        finishing_ = true;
      }
    }
    Pump();
  }

  void OnCancel() override { ReleaseAll(); }

  void OnDone() override {
    {
      MutexLock lock(&service_->leases_mu_);
      service_->lease_reactors_.erase(this);
      service_->session_connections_.erase(session_id_);
    }
    ReleaseAll();
    service_->lease_sessions_.fetch_sub(1);
    delete this;
  }

 private:
  void Enqueue(v1::LeaseEvent event) {
    {
      MutexLock lock(&mu_);
      if (finished_) return;
      writes_.push_back(std::move(event));
    }
    Pump();
  }

  // Starts the next queued write or, once the queue is drained and the
  // stream is ending, the Finish: decided under mu_, started outside it. The
  // event being written stays put (a deque keeps references on push_back).
  void Pump() {
    const v1::LeaseEvent* write = nullptr;
    grpc::Status status;
    {
      MutexLock lock(&mu_);
      if (finished_ || writing_) return;
      if (!writes_.empty()) {
        writing_ = true;
        write = &writes_.front();
      } else if (finishing_) {
        finished_ = true;
        status = finish_status_;
      } else {
        return;
      }
    }
    if (write != nullptr) {
      StartWrite(write);
    } else {
      Finish(status);
    }
  }

  void ReleaseAll() {
    if (!released_.exchange(true)) {
      int released = service_->manager_->ReleaseSession(session_id_);
      if (released > 0)
        LogInfo("lease session %s of %s ended: %d lease(s) released",
                session_id_, peer_, released);
    }
  }

  WeightServiceImpl* const service_;
  const std::string session_id_;
  const std::string peer_;  // the opener's uid/gid/pid or TCP address
  v1::LeaseRequest request_;
  std::atomic<bool> released_{false};
  Mutex mu_;
  std::deque<v1::LeaseEvent> writes_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status finish_status_ ABSL_GUARDED_BY(mu_);
};

// ReadTensors: each tensor's contiguous little-endian bytes in chunks of
// whole elements, each produced on the manager's worker pool (off gRPC's
// threads) into the one chunk the stream holds: memory per stream is its
// chunk size, whatever the tensor's.
class WeightServiceImpl::ReadTensorsReactor
    : public grpc::ServerWriteReactor<v1::TensorChunk> {
 public:
  ReadTensorsReactor(WeightServiceImpl* service,
                     const v1::ReadTensorsRequest& request)
      : service_(service) {
    chunk_bytes_ = request.chunk_bytes() == 0
                       ? kDefaultChunkBytes
                       : std::min(request.chunk_bytes(), kMaxChunkBytes);
    auto info = service_->manager_->Describe(request.model_id());
    if (!info.ok()) {
      Finish(ToGrpcStatus(info.status()));
      return;
    }
    model_ = AsLoadedModel(info->value);
    if (info->stale && model_->ReadsFile()) {
      // Its bytes may no longer be what its tensor table describes.
      Finish(grpc::Status(
          grpc::StatusCode::FAILED_PRECONDITION,
          absl::StrCat(model_->path, " changed on disk since model ",
                       request.model_id(), " was loaded; load it again")));
      return;
    }
    if (request.names().empty()) {
      for (size_t i = 0; i < model_->tensors.size(); ++i) order_.push_back(i);
    } else {
      absl::flat_hash_map<absl::string_view, size_t> by_name;
      for (size_t i = 0; i < model_->tensors.size(); ++i)
        by_name.emplace(model_->tensors[i].info.name, i);
      for (const std::string& name : request.names()) {
        auto it = by_name.find(name);
        if (it == by_name.end()) {
          Finish(grpc::Status(
              grpc::StatusCode::NOT_FOUND,
              absl::StrCat(model_->path, ": no tensor \"", name, "\"")));
          return;
        }
        order_.push_back(it->second);
      }
    }
    ScheduleNext();
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
      return;
    }
    ScheduleNext();
  }

  void OnDone() override { delete this; }

 private:
  void ScheduleNext() {
    absl::Status scheduled =
        service_->manager_->workers().Schedule([this] { WriteNext(); });
    if (!scheduled.ok()) Finish(ToGrpcStatus(scheduled));
  }

  // Produces the next chunk and starts its write; one runs at a time (the
  // next is scheduled only once the previous write is done).
  void WriteNext() {
    if (next_tensor_ >= order_.size() && !started_) {
      Finish(grpc::Status::OK);
      return;
    }
    chunk_.Clear();
    if (!started_) {
      tensor_ = order_[next_tensor_++];
      offset_ = 0;
      started_ = true;
      FillTensor(model_->tensors[tensor_], chunk_.mutable_tensor());
    }
    const PlacedTensor& tensor = model_->tensors[tensor_];
    const uint64_t element =
        std::max<uint64_t>(DTypeSize(tensor.info.dtype), 1);
    const uint64_t per_chunk =
        std::max<uint64_t>(chunk_bytes_ / element, 1) * element;
    const uint64_t length = std::min(per_chunk, tensor.byte_size - offset_);
    std::string* data = chunk_.mutable_data();
    data->resize(length);
    absl::Status read = model_->ReadTensorRange(
        tensor_, offset_, length, reinterpret_cast<uint8_t*>(data->data()));
    if (!read.ok()) {
      Finish(ToGrpcStatus(read));
      return;
    }
    chunk_.set_offset(offset_);
    offset_ += length;
    if (offset_ >= tensor.byte_size) {
      chunk_.set_last(true);
      started_ = false;
    }
    service_->read_tensor_bytes_->Increment(length);
    StartWrite(&chunk_);
  }

  WeightServiceImpl* const service_;
  std::shared_ptr<const LoadedModel> model_;
  std::vector<size_t> order_;
  size_t next_tensor_ = 0;
  uint32_t chunk_bytes_ = kDefaultChunkBytes;
  size_t tensor_ = 0;     // the tensor being sent
  uint64_t offset_ = 0;   // its next byte
  bool started_ = false;  // its first chunk was sent
  v1::TensorChunk chunk_;
};

WeightServiceImpl::WeightServiceImpl(ModelManager* manager,
                                     MetricsRegistry* metrics,
                                     const AccessPolicy* access_policy,
                                     std::string version)
    : manager_(manager),
      access_policy_(access_policy),
      version_(std::move(version)) {
  load_requests_ = metrics->AddCounter("weightd_load_requests_total",
                                       "Load requests received.");
  load_errors_ = metrics->AddCounter("weightd_load_errors_total",
                                     "Load requests that failed.");
  load_seconds_ = metrics->AddHistogram(
      "weightd_load_duration_seconds",
      "Time to answer a Load request (hits included).",
      {0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60});
  lease_opened_ = metrics->AddCounter("weightd_lease_sessions_opened_total",
                                      "Lease sessions opened.");
  read_tensor_bytes_ = metrics->AddCounter("weightd_read_tensors_bytes_total",
                                           "Tensor bytes sent by ReadTensors.");
}

WeightServiceImpl::~WeightServiceImpl() { WaitForLoads(); }

void WeightServiceImpl::WaitForLoads() {
  MutexLock lock(&threads_mu_);
  while (running_loads_ > 0) threads_done_.Wait(&threads_mu_);
}

absl::StatusOr<Caller> WeightServiceImpl::Authorize(
    grpc::CallbackServerContext* context) const {
  if (draining_.load()) {
    return absl::UnavailableError("weightd is shutting down");
  }
  return access_policy_->Authorize(context->peer());
}

absl::Status WeightServiceImpl::CheckSessionOwner(const std::string& session,
                                                  const Caller& caller) {
  MutexLock lock(&leases_mu_);
  auto it = session_connections_.find(session);
  if (it == session_connections_.end() || it->second == caller.connection) {
    return absl::OkStatus();
  }
  return absl::PermissionDeniedError(absl::StrCat(
      "lease session \"", BoundForMessage(session),
      "\" belongs to another connection; open your own with Lease"));
}

grpc::ServerWriteReactor<v1::LoadEvent>* WeightServiceImpl::Load(
    grpc::CallbackServerContext* context, const v1::LoadRequest* request) {
  absl::StatusOr<Caller> caller = Authorize(context);
  absl::Status allowed = caller.status();
  if (allowed.ok()) allowed = ValidateLoadRequest(*request);
  if (allowed.ok() && !request->lease_session().empty()) {
    allowed = CheckSessionOwner(request->lease_session(), *caller);
  }
  if (!allowed.ok()) {
    return new RefusedWriteReactor<v1::LoadEvent>(ToGrpcStatus(allowed));
  }
  return new LoadReactor(this, *request);
}

grpc::ServerUnaryReactor* WeightServiceImpl::Describe(
    grpc::CallbackServerContext* context, const v1::DescribeRequest* request,
    v1::ModelDescription* response) {
  auto* reactor = context->DefaultReactor();
  absl::Status allowed = Authorize(context).status();
  if (allowed.ok()) allowed = ValidateModelId(request->model_id());
  if (!allowed.ok()) {
    reactor->Finish(ToGrpcStatus(allowed));
    return reactor;
  }
  auto info = manager_->Describe(request->model_id());
  if (!info.ok()) {
    reactor->Finish(ToGrpcStatus(info.status()));
    return reactor;
  }
  FillModelDescription(info->model_id, *AsLoadedModel(info->value), &*info,
                       request->compact_description()
                           ? TensorListForm::kCompact
                           : TensorListForm::kRepeated,
                       response);
  response->set_cache_hit(true);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* WeightServiceImpl::List(
    grpc::CallbackServerContext* context, const v1::ListRequest* request,
    v1::ListResponse* response) {
  if (absl::Status allowed = Authorize(context).status(); !allowed.ok()) {
    auto* reactor = context->DefaultReactor();
    reactor->Finish(ToGrpcStatus(allowed));
    return reactor;
  }
  for (const CacheEntryInfo& info : manager_->List()) {
    auto model = AsLoadedModel(info.value);
    v1::ModelSummary* summary = response->add_models();
    summary->set_model_id(info.model_id);
    summary->set_path(info.key.path);
    summary->set_format(model->FormatName());
    summary->set_placement(model->placement);
    uint64_t resident = 0;
    for (const auto& [tier, bytes] : info.resident) resident += bytes;
    summary->set_resident_bytes(resident);
    summary->set_tensor_count(static_cast<int>(model->tensors.size()));
    summary->set_lease_count(info.lease_count);
    summary->set_stale(info.stale);
  }
  auto* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* WeightServiceImpl::Unload(
    grpc::CallbackServerContext* context, const v1::UnloadRequest* request,
    v1::UnloadResponse* response) {
  auto* reactor = context->DefaultReactor();
  absl::StatusOr<Caller> caller = Authorize(context);
  absl::Status allowed = caller.status();
  if (allowed.ok()) allowed = ValidateModelId(request->model_id());
  // Forcing drops leases other clients hold: an admin call.
  if (allowed.ok() && request->force()) {
    allowed = access_policy_->AuthorizeAdmin(*caller, "Unload with force");
  }
  if (!allowed.ok()) {
    reactor->Finish(ToGrpcStatus(allowed));
    return reactor;
  }
  auto freed = manager_->Unload(request->model_id(), request->force());
  if (freed.ok()) response->set_freed_bytes(*freed);
  reactor->Finish(ToGrpcStatus(freed.status()));
  return reactor;
}

grpc::ServerUnaryReactor* WeightServiceImpl::Stats(
    grpc::CallbackServerContext* context, const v1::StatsRequest* request,
    v1::StatsResponse* response) {
  if (absl::Status allowed = Authorize(context).status(); !allowed.ok()) {
    auto* reactor = context->DefaultReactor();
    reactor->Finish(ToGrpcStatus(allowed));
    return reactor;
  }
  CacheStats stats = manager_->Stats();
  response->set_loads(stats.loads);
  response->set_cache_hits(stats.hits);
  response->set_load_failures(stats.load_failures);
  response->set_evictions(stats.evictions);
  response->set_bytes_read(manager_->BytesRead());
  response->set_models(stats.models);
  response->set_active_leases(stats.active_leases);
  response->set_lease_sessions(lease_sessions_.load());
  TierBytes budgets = manager_->Budgets();
  for (const auto& [tier, used] : stats.used) {
    v1::TierStats* tier_stats = response->add_tiers();
    tier_stats->set_tier(tier);
    tier_stats->set_used_bytes(used);
    auto budget = budgets.find(tier);
    tier_stats->set_budget_bytes(budget == budgets.end() ? 0 : budget->second);
  }
  auto* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* WeightServiceImpl::ServerInfo(
    grpc::CallbackServerContext* context, const v1::ServerInfoRequest* request,
    v1::ServerInfoResponse* response) {
  if (absl::Status allowed = Authorize(context).status(); !allowed.ok()) {
    auto* reactor = context->DefaultReactor();
    reactor->Finish(ToGrpcStatus(allowed));
    return reactor;
  }
  ManagerInfo info = manager_->Info();
  response->set_version(version_);
  for (const GpuDescription& gpu : info.gpus) {
    v1::GpuInfo* out = response->add_gpus();
    out->set_index(gpu.index);
    out->set_uuid(gpu.uuid);
    out->set_name(gpu.name);
    out->set_total_bytes(gpu.total_bytes);
    out->set_free_bytes(gpu.free_bytes);
    out->set_fake(gpu.fake);
  }
  response->set_gpu_status(info.gpu_status);
  response->set_io_backend(info.io_backend);
  response->set_io_backend_reason(info.io_backend_reason);
  response->set_direct_io(info.direct_io);
  response->set_io_queue_depth(info.io_queue_depth);
  response->set_io_request_bytes(info.io_request_bytes);
  response->set_huge_pages(DescribeDefaultHugePages());
  response->set_host_budget_bytes(info.host_budget_bytes);
  response->set_gpu_budget_bytes(info.gpu_budget_bytes);
  for (const std::string& root : info.model_roots)
    response->add_model_roots(root);
  auto* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

void WeightServiceImpl::Drain() {
  draining_.store(true);
  MutexLock lock(&leases_mu_);
  for (LeaseReactor* reactor : lease_reactors_) reactor->End();
}

grpc::ServerBidiReactor<v1::LeaseRequest, v1::LeaseEvent>*
WeightServiceImpl::Lease(grpc::CallbackServerContext* context) {
  absl::StatusOr<Caller> caller = Authorize(context);
  if (!caller.ok())
    return new RefusedLeaseReactor(ToGrpcStatus(caller.status()));
  absl::StatusOr<std::string> session = NewSessionId();
  if (!session.ok()) {
    return new RefusedLeaseReactor(ToGrpcStatus(session.status()));
  }
  return new LeaseReactor(this, *std::move(session), *caller);
}

grpc::ServerWriteReactor<v1::TensorChunk>* WeightServiceImpl::ReadTensors(
    grpc::CallbackServerContext* context,
    const v1::ReadTensorsRequest* request) {
  absl::Status allowed = Authorize(context).status();
  if (allowed.ok()) allowed = ValidateReadTensorsRequest(*request);
  if (!allowed.ok()) {
    return new RefusedWriteReactor<v1::TensorChunk>(ToGrpcStatus(allowed));
  }
  return new ReadTensorsReactor(this, *request);
}

}  // namespace weightd
