// weightd.v1.WeightService over the ModelManager, on gRPC's callback API.
#ifndef WEIGHTD_SERVER_WEIGHT_SERVICE_H_
#define WEIGHTD_SERVER_WEIGHT_SERVICE_H_

#include <atomic>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "loader/cache/model_manager.h"
#include "loader/common/mutex.h"
#include "proto/weightd/v1/weightd.grpc.pb.h"
#include "server/auth.h"
#include "server/metrics.h"
#include "server/proto_mapping.h"

namespace weightd {

// Status -> grpc::Status with the same code and message (bounded: see
// BoundStatusMessage).
grpc::Status ToGrpcStatus(const absl::Status& status);

class WeightServiceImpl final
    : public weightd::v1::WeightService::CallbackService {
 public:
  // `access_policy` (not owned) decides who may call.
  WeightServiceImpl(ModelManager* manager, MetricsRegistry* metrics,
                    const AccessPolicy* access_policy, std::string version);
  ~WeightServiceImpl() override;

  grpc::ServerWriteReactor<weightd::v1::LoadEvent>* Load(
      grpc::CallbackServerContext* context,
      const weightd::v1::LoadRequest* request) override;
  grpc::ServerUnaryReactor* Describe(
      grpc::CallbackServerContext* context,
      const weightd::v1::DescribeRequest* request,
      weightd::v1::ModelDescription* response) override;
  grpc::ServerUnaryReactor* List(grpc::CallbackServerContext* context,
                                 const weightd::v1::ListRequest* request,
                                 weightd::v1::ListResponse* response) override;
  grpc::ServerUnaryReactor* Unload(
      grpc::CallbackServerContext* context,
      const weightd::v1::UnloadRequest* request,
      weightd::v1::UnloadResponse* response) override;
  grpc::ServerUnaryReactor* Stats(
      grpc::CallbackServerContext* context,
      const weightd::v1::StatsRequest* request,
      weightd::v1::StatsResponse* response) override;
  grpc::ServerUnaryReactor* ServerInfo(
      grpc::CallbackServerContext* context,
      const weightd::v1::ServerInfoRequest* request,
      weightd::v1::ServerInfoResponse* response) override;
  grpc::ServerBidiReactor<weightd::v1::LeaseRequest, weightd::v1::LeaseEvent>*
  Lease(grpc::CallbackServerContext* context) override;
  grpc::ServerWriteReactor<weightd::v1::TensorChunk>* ReadTensors(
      grpc::CallbackServerContext* context,
      const weightd::v1::ReadTensorsRequest* request) override;

  // Blocks until every load thread has finished (shutdown).
  void WaitForLoads();
  // Shutdown's first step: every new call is refused (UNAVAILABLE) while the
  // running ones finish, and every Lease stream ends with UNAVAILABLE (they
  // never end on their own, so the grace period would always run out).
  // Clients reopen a session on their next load, at another daemon.
  void Drain();

  int lease_sessions() const { return lease_sessions_.load(); }

 private:
  class LoadReactor;
  class LeaseReactor;
  class ReadTensorsReactor;

  // The caller, or PERMISSION_DENIED for a peer the policy refuses.
  absl::StatusOr<Caller> Authorize(grpc::CallbackServerContext* context) const;
  // PERMISSION_DENIED when `session` is open on another connection than
  // `caller`'s (unknown sessions are left to the cache to refuse).
  absl::Status CheckSessionOwner(const std::string& session,
                                 const Caller& caller);

  ModelManager* const manager_;
  const AccessPolicy* const access_policy_;
  const std::string version_;
  std::atomic<int> lease_sessions_{0};

  Mutex leases_mu_;
  std::set<LeaseReactor*> lease_reactors_ ABSL_GUARDED_BY(leases_mu_);
  // Open session id -> the connection that opened it.
  std::map<std::string, std::string> session_connections_
      ABSL_GUARDED_BY(leases_mu_);
  std::atomic<bool> draining_{false};  // Drain()

  Mutex threads_mu_;
  CondVar threads_done_;
  int running_loads_ ABSL_GUARDED_BY(threads_mu_) = 0;

  Counter* load_requests_;
  Counter* load_errors_;
  Histogram* load_seconds_;
  Counter* lease_opened_;
  Counter* read_tensor_bytes_;
};

}  // namespace weightd

#endif  // WEIGHTD_SERVER_WEIGHT_SERVICE_H_
