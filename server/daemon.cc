#include "server/daemon.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "loader/common/logging.h"
#include "loader/common/status_macros.h"
#include "server/http_endpoint.h"
#include "server/metrics.h"
#include "server/weight_service.h"

namespace weightd {

constexpr char kVersion[] = "0.1.0";

// Everything the gRPC server dispatches to.
class DaemonServices {
 public:
  static absl::StatusOr<std::unique_ptr<DaemonServices>> Create(
      const ServerConfig& config, MetricsRegistry* metrics) {
    auto services = std::unique_ptr<DaemonServices>(new DaemonServices());
    DeviceSet::Options device_options;
    device_options.fake_gpus = config.fake_gpus;
    device_options.fake_gpu_copy_delay =
        absl::Microseconds(config.fake_gpu_copy_delay_us);
    device_options.io_backend = config.io_backend;
    device_options.staging_chunk_bytes = config.staging_chunk_bytes;
    device_options.staging_buffers = config.staging_buffers;
    ASSIGN_OR_RETURN(std::unique_ptr<DeviceSet> devices,
                     DeviceSet::Create(device_options));
    ModelManager::Options options;
    options.model_roots = config.model_roots;
    options.host_budget_bytes = config.host_budget_bytes;
    options.gpu_budget_bytes = config.gpu_budget_bytes;
    options.max_concurrent_loads = config.max_concurrent_loads;
    ASSIGN_OR_RETURN(services->manager,
                     ModelManager::Create(options, std::move(devices)));
    services->weight_service = std::make_unique<WeightServiceImpl>(
        services->manager.get(), metrics, kVersion);
    services->RegisterMetrics(metrics);
    return services;
  }

  void RegisterMetrics(MetricsRegistry* metrics) {
    ModelManager* manager = this->manager.get();
    WeightServiceImpl* service = weight_service.get();
    auto stat = [manager](auto field) {
      return [manager, field] {
        return MetricsRegistry::GaugeSamples{
            {{}, static_cast<double>(field(manager->Stats()))}};
      };
    };
    metrics->AddCounterCallback(
        "weightd_cache_loads_total", "Loads that read a checkpoint file.",
        stat([](const CacheStats& s) { return s.loads; }));
    metrics->AddCounterCallback(
        "weightd_cache_hits_total", "Load requests answered from the cache.",
        stat([](const CacheStats& s) { return s.hits; }));
    metrics->AddCounterCallback(
        "weightd_cache_load_failures_total", "Loads that failed.",
        stat([](const CacheStats& s) { return s.load_failures; }));
    metrics->AddCounterCallback(
        "weightd_cache_evictions_total", "Models evicted or dropped.",
        stat([](const CacheStats& s) { return s.evictions; }));
    metrics->AddGaugeCallback(
        "weightd_models", "Models in the cache.",
        stat([](const CacheStats& s) { return s.models; }));
    metrics->AddGaugeCallback(
        "weightd_loads_in_flight", "Checkpoint loads running now.",
        stat([](const CacheStats& s) { return s.loads_in_flight; }));
    metrics->AddGaugeCallback(
        "weightd_load_waiters",
        "Load requests waiting for an identical load in flight.",
        stat([](const CacheStats& s) { return s.waiting_requests; }));
    metrics->AddGaugeCallback(
        "weightd_active_leases", "Leases held by clients.",
        stat([](const CacheStats& s) { return s.active_leases; }));
    metrics->AddGaugeCallback(
        "weightd_lease_sessions", "Open lease streams.", [service] {
          return MetricsRegistry::GaugeSamples{
              {{}, static_cast<double>(service->lease_sessions())}};
        });
    metrics->AddCounterCallback(
        "weightd_bytes_read_total", "Checkpoint bytes read from files.",
        [manager] {
          return MetricsRegistry::GaugeSamples{
              {{}, static_cast<double>(manager->BytesRead())}};
        });
    metrics->AddGaugeCallback(
        "weightd_tier_used_bytes", "Bytes held per memory tier.", [manager] {
          MetricsRegistry::GaugeSamples samples;
          for (const auto& [tier, bytes] : manager->Stats().used) {
            samples.push_back({{{"tier", tier}}, static_cast<double>(bytes)});
          }
          return samples;
        });
    metrics->AddGaugeCallback(
        "weightd_tier_budget_bytes", "Budget per memory tier.", [manager] {
          MetricsRegistry::GaugeSamples samples;
          for (const auto& [tier, bytes] : manager->Budgets()) {
            samples.push_back({{{"tier", tier}}, static_cast<double>(bytes)});
          }
          return samples;
        });
    metrics->AddGaugeCallback(
        "weightd_gpus", "GPUs the daemon uses.", [manager] {
          return MetricsRegistry::GaugeSamples{
              {{}, static_cast<double>(manager->Info().gpus.size())}};
        });
  }

  std::unique_ptr<ModelManager> manager;
  std::unique_ptr<WeightServiceImpl> weight_service;

 private:
  DaemonServices() = default;
};

namespace {

constexpr char kUnixPrefix[] = "unix:";

// Makes room for a Unix socket: creates its directory and removes a stale
// socket file. Refuses to remove anything that is not a socket.
absl::Status PrepareUnixSocketPath(const std::string& path) {
  constexpr size_t kMaxUnixPath = sizeof(sockaddr_un::sun_path) - 1;
  if (path.size() > kMaxUnixPath) {
    return absl::InvalidArgumentError(
        absl::StrCat("unix socket path ", path, " is ", path.size(),
                     " bytes; the limit is ", kMaxUnixPath));
  }
  std::error_code error;
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent, error);
  if (error) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot create directory ", parent.string(), ": ", error.message()));
  }
  struct stat info;
  if (lstat(path.c_str(), &info) == 0) {
    if (!S_ISSOCK(info.st_mode)) {
      return absl::FailedPreconditionError(absl::StrCat(
          path, " exists and is not a socket; refusing to replace it"));
    }
    if (unlink(path.c_str()) != 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot remove stale socket ", path, ": ", std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Create(
    const ServerConfig& config) {
  auto daemon = std::unique_ptr<Daemon>(new Daemon());
  daemon->config_ = config;
  daemon->metrics_ = std::make_unique<MetricsRegistry>();
  ASSIGN_OR_RETURN(daemon->services_,
                   DaemonServices::Create(config, daemon->metrics_.get()));

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.SetMaxReceiveMessageSize(static_cast<int>(config.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(config.max_message_bytes));
  builder.RegisterService(daemon->services_->weight_service.get());
  std::vector<int> bound_ports(config.listen.size(), 0);
  for (size_t i = 0; i < config.listen.size(); ++i) {
    const std::string& address = config.listen[i];
    if (absl::StartsWith(address, kUnixPrefix)) {
      std::string path = address.substr(strlen(kUnixPrefix));
      RETURN_IF_ERROR(PrepareUnixSocketPath(path));
      daemon->unix_socket_paths_.push_back(path);
      builder.AddListeningPort(address, grpc::InsecureServerCredentials());
    } else {
      builder.AddListeningPort(address, grpc::InsecureServerCredentials(),
                               &bound_ports[i]);
    }
  }
  daemon->grpc_server_ = builder.BuildAndStart();
  if (daemon->grpc_server_ == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", absl::StrJoin(config.listen, ", ")));
  }
  for (size_t i = 0; i < config.listen.size(); ++i) {
    if (absl::StartsWith(config.listen[i], kUnixPrefix)) continue;
    if (bound_ports[i] == 0) {
      daemon->grpc_server_->Shutdown();
      return absl::UnavailableError(
          absl::StrCat("cannot listen on ", config.listen[i]));
    }
    daemon->tcp_ports_.push_back(bound_ports[i]);
  }
  for (const std::string& path : daemon->unix_socket_paths_) {
    if (chmod(path.c_str(), config.unix_socket_mode) != 0) {
      LogWarning("cannot chmod %s: %s", path, std::strerror(errno));
    }
  }
  daemon->grpc_server_->GetHealthCheckService()->SetServingStatus(true);

  if (!config.metrics_address.empty()) {
    MetricsRegistry* metrics = daemon->metrics_.get();
    ASSIGN_OR_RETURN(
        daemon->http_,
        HttpEndpoint::Start(config.metrics_address,
                            {[metrics] { return metrics->RenderText(); },
                             [] { return true; }}));
  }
  return daemon;
}

std::string Daemon::ReadyLine() const {
  std::string line = absl::StrCat("weightd ready: grpc on ",
                                  absl::StrJoin(config_.listen, ", "));
  if (http_ != nullptr) {
    size_t colon = config_.metrics_address.rfind(':');
    absl::StrAppend(&line, "; metrics on http://",
                    config_.metrics_address.substr(0, colon), ":",
                    http_->port(), "/metrics");
  }
  absl::StrAppend(&line, "; model roots ",
                  absl::StrJoin(config_.model_roots, ", "));
  return line;
}

int Daemon::metrics_port() const {
  return http_ == nullptr ? 0 : http_->port();
}

void Daemon::Shutdown() {
  if (grpc_server_ != nullptr) {
    grpc_server_->GetHealthCheckService()->SetServingStatus(false);
    if (services_ != nullptr) {
      services_->weight_service->EndLeaseStreams();
      // Queued loads are answered UNAVAILABLE now, not after the grace.
      services_->manager->Shutdown();
    }
    grpc_server_->Shutdown(std::chrono::system_clock::now() +
                           std::chrono::seconds(5));
    grpc_server_->Wait();
    grpc_server_.reset();
  }
  if (services_ != nullptr) services_->weight_service->WaitForLoads();
  if (http_ != nullptr) {
    http_->Stop();
    http_.reset();
  }
  for (const std::string& path : unix_socket_paths_) unlink(path.c_str());
  unix_socket_paths_.clear();
}

Daemon::~Daemon() { Shutdown(); }

}  // namespace weightd
