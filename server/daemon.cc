#include "server/daemon.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/server_posix.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "loader/common/logging.h"
#include "loader/common/status_macros.h"
#include "server/auth.h"
#include "server/call_interceptor.h"
#include "server/callback_poller_keepalive.h"
#include "server/http_endpoint.h"
#include "server/metrics.h"
#include "server/peer_credentials.h"
#include "server/request_validation.h"
#include "server/version.h"
#include "server/weight_service.h"

namespace weightd {

// Everything the gRPC server dispatches to.
class DaemonServices {
 public:
  static absl::StatusOr<std::unique_ptr<DaemonServices>> Create(
      const ServerConfig& config, MetricsRegistry* metrics,
      const AccessPolicy* access_policy) {
    auto services = std::unique_ptr<DaemonServices>(new DaemonServices());
    ASSIGN_OR_RETURN(std::unique_ptr<DeviceSet> devices,
                     DeviceSet::Create(config.devices));
    ASSIGN_OR_RETURN(services->manager,
                     ModelManager::Create(config.manager, std::move(devices)));
    services->weight_service = std::make_unique<WeightServiceImpl>(
        services->manager.get(), metrics, access_policy, kVersion);
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
    metrics->AddCounterCallback(
        "weightd_shared_read_bytes_total",
        "Replicated tensor bytes tensor-parallel ranks took from another "
        "rank's read instead of reading the file again.",
        [manager] {
          return MetricsRegistry::GaugeSamples{
              {{},
               static_cast<double>(manager->SharedReadStats().bytes_shared)}};
        });
    metrics->AddGaugeCallback(
        "weightd_shared_read_held_bytes",
        "Host bytes of shared reads kept for ranks that have yet to take "
        "them; 0 once every rank of each group has loaded or failed.",
        [manager] {
          return MetricsRegistry::GaugeSamples{
              {{}, static_cast<double>(manager->SharedReadStats().held_bytes)}};
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

absl::StatusOr<std::string> ReadPemFile(const char* flag,
                                        const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--", flag, "=", path, ": cannot read: ", std::strerror(errno)));
  }
  std::stringstream contents;
  contents << in.rdbuf();
  if (contents.str().find("-----BEGIN") == std::string::npos) {
    return absl::FailedPreconditionError(
        absl::StrCat("--", flag, "=", path, ": not a PEM file"));
  }
  return contents.str();
}

// TLS for every TCP listener, or plaintext under --insecure_tcp.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> TcpCredentials(
    const ServerConfig& config) {
  if (config.insecure_tcp) return grpc::InsecureServerCredentials();
  ASSIGN_OR_RETURN(std::string cert,
                   ReadPemFile("tls_cert_file", config.tls_cert_file));
  ASSIGN_OR_RETURN(std::string key,
                   ReadPemFile("tls_key_file", config.tls_key_file));
  std::string client_ca;
  if (!config.tls_client_ca_file.empty()) {
    ASSIGN_OR_RETURN(client_ca, ReadPemFile("tls_client_ca_file",
                                            config.tls_client_ca_file));
  }
  std::string token;
  if (!config.auth_token_file.empty()) {
    ASSIGN_OR_RETURN(token, ReadTokenFile(config.auth_token_file));
  }
  grpc::SslServerCredentialsOptions options(
      client_ca.empty()
          ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
          : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  options.pem_root_certs = client_ca;
  options.pem_key_cert_pairs.push_back({key, cert});
  std::shared_ptr<grpc::ServerCredentials> credentials =
      grpc::SslServerCredentials(options);
  credentials->SetAuthMetadataProcessor(std::make_shared<BearerTokenProcessor>(
      std::move(token), !client_ca.empty()));
  return credentials;
}

// Keepalive: the daemon pings each connection with a call open (a Lease
// stream) when it is silent and drops it when the ping goes unanswered, so a
// frozen or vanished client's Lease stream ends (releasing its leases) within
// keepalive_time + keepalive_timeout. Connections without calls are not
// pinged: an idle client channel is not polled, would not answer, and its next
// call would fail instead of reconnecting. The ping policy lets clients ping
// every kMinClientPingIntervalMs while they have calls; our clients ping less
// often than that, and never without calls.
void SetKeepalive(const ServerConfig& config, grpc::ServerBuilder* builder) {
  const int time_ms = static_cast<int>(config.keepalive_time_ms);
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, time_ms);
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                              static_cast<int>(config.keepalive_timeout_ms));
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
  // Keep pinging a connection that sends nothing else (an idle Lease stream).
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  builder->AddChannelArgument(
      GRPC_ARG_HTTP2_MIN_SENT_PING_INTERVAL_WITHOUT_DATA_MS, time_ms);
  builder->AddChannelArgument(
      GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
      static_cast<int>(kMinClientPingIntervalMs));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Create(
    const ServerConfig& config) {
  RETURN_IF_ERROR(ValidateServerConfig(config));
  auto daemon = std::unique_ptr<Daemon>(new Daemon());
  daemon->config_ = config;
  daemon->metrics_ = std::make_unique<MetricsRegistry>();
  daemon->unix_peers_ = std::make_unique<UnixPeerRegistry>();
  daemon->running_calls_ = std::make_unique<RunningCalls>();
  AccessPolicy::Options access;
  access.allow_uids = config.allow_uids;
  access.allow_gids = config.allow_gids;
  access.admin_uids = config.admin_uids;
  access.tcp_authenticated = !config.insecure_tcp;
  daemon->access_policy_ =
      std::make_unique<AccessPolicy>(access, daemon->unix_peers_.get());
  ASSIGN_OR_RETURN(daemon->services_,
                   DaemonServices::Create(config, daemon->metrics_.get(),
                                          daemon->access_policy_.get()));

  bool any_tcp = false;
  for (const std::string& address : config.listen)
    any_tcp |= IsTcpListenAddress(address);
  std::shared_ptr<grpc::ServerCredentials> tcp_credentials;
  if (any_tcp) {
    ASSIGN_OR_RETURN(tcp_credentials, TcpCredentials(config));
    if (config.insecure_tcp) {
      LogWarning(
          "weightd: --insecure_tcp: TCP is served in PLAINTEXT WITHOUT "
          "AUTHENTICATION; anyone who can reach %s can read every file under "
          "the model roots",
          absl::StrJoin(config.listen, ", "));
    }
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.SetMaxReceiveMessageSize(static_cast<int>(config.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(config.max_message_bytes));
  SetKeepalive(config, &builder);
  std::vector<
      std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
      interceptors;
  interceptors.push_back(
      std::make_unique<CallInterceptorFactory>(daemon->running_calls_.get()));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  builder.RegisterService(daemon->services_->weight_service.get());
  daemon->unknown_methods_ = std::make_unique<UnknownMethodService>();
  builder.RegisterCallbackGenericService(daemon->unknown_methods_.get());
  std::vector<int> bound_ports(config.listen.size(), 0);
  for (size_t i = 0; i < config.listen.size(); ++i) {
    const std::string& address = config.listen[i];
    if (absl::StartsWith(address, kUnixPrefix)) {
      // Accepted by the daemon itself, for the peer's credentials.
      ASSIGN_OR_RETURN(
          std::unique_ptr<UnixSocketListener> listener,
          UnixSocketListener::Create(address.substr(strlen(kUnixPrefix)),
                                     config.unix_socket_mode));
      daemon->unix_socket_paths_.push_back(listener->path());
      daemon->unix_listeners_.push_back(std::move(listener));
    } else {
      builder.AddListeningPort(address, tcp_credentials, &bound_ports[i]);
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
  grpc::Server* server = daemon->grpc_server_.get();
  UnixPeerRegistry* peers = daemon->unix_peers_.get();
  for (const auto& listener : daemon->unix_listeners_) {
    listener->Start([server, peers](int fd, const PeerCredentials& peer) {
      // Recorded first: the connection's first call may come at once.
      peers->Add(fd, peer);
      grpc::AddInsecureChannelFromFd(server, fd);
    });
  }
  ASSIGN_OR_RETURN(daemon->poller_keepalive_,
                   CallbackPollerKeepalive::Start(
                       server->InProcessChannel(grpc::ChannelArguments())));
  daemon->grpc_server_->GetHealthCheckService()->SetServingStatus(true);
  daemon->serving_.store(true);

  if (!config.metrics_address.empty()) {
    MetricsRegistry* metrics = daemon->metrics_.get();
    const Daemon* self = daemon.get();
    ASSIGN_OR_RETURN(
        daemon->http_,
        HttpEndpoint::Start(config.metrics_address,
                            {[metrics] { return metrics->RenderText(); },
                             [self] { return self->Readiness(); }}));
  }
  return daemon;
}

std::string Daemon::ReadyLine() const {
  // TCP addresses with the ports bound (HOST:0 picks one).
  std::vector<std::string> addresses;
  size_t tcp_index = 0;
  for (const std::string& address : config_.listen) {
    if (!IsTcpListenAddress(address) || tcp_index >= tcp_ports_.size()) {
      addresses.push_back(address);
      continue;
    }
    addresses.push_back(absl::StrCat(
        address.substr(0, address.rfind(':')), ":", tcp_ports_[tcp_index++],
        config_.insecure_tcp ? " (insecure)" : " (TLS)"));
  }
  std::string line =
      absl::StrCat("weightd ready: grpc on ", absl::StrJoin(addresses, ", "));
  if (http_ != nullptr) {
    size_t colon = config_.metrics_address.rfind(':');
    absl::StrAppend(&line, "; metrics on http://",
                    config_.metrics_address.substr(0, colon), ":",
                    http_->port(), "/metrics");
  }
  absl::StrAppend(&line, "; model roots ",
                  absl::StrJoin(config_.manager.model_roots, ", "));
  return line;
}

absl::Status Daemon::Readiness() const {
  if (draining_.load()) return absl::UnavailableError("shutting down");
  if (!serving_.load()) return absl::UnavailableError("gRPC is not serving");
  const ModelManager::Options& loader = config_.manager;
  const int queued = services_->manager->queued_loads();
  if (loader.max_queued_loads > 0 &&
      static_cast<size_t>(queued) >= loader.max_queued_loads) {
    return absl::UnavailableError(absl::StrCat(
        "the load queue is full (", queued,
        " waiting, --max_queued_loads=", loader.max_queued_loads, ")"));
  }
  for (const std::string& root : loader.model_roots) {
    struct stat info;
    if (stat(root.c_str(), &info) != 0) {
      return absl::UnavailableError(
          absl::StrCat("model root ", root, ": ", std::strerror(errno)));
    }
    if (!S_ISDIR(info.st_mode)) {
      return absl::UnavailableError(
          absl::StrCat("model root ", root, ": not a directory"));
    }
    if (access(root.c_str(), R_OK | X_OK) != 0) {
      return absl::UnavailableError(
          absl::StrCat("model root ", root, ": ", std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

int Daemon::metrics_port() const {
  return http_ == nullptr ? 0 : http_->port();
}

// How long shutdown lets connections flush after the last answered call
// ended before it stops gRPC (see Shutdown).
constexpr absl::Duration kShutdownLinger = absl::Milliseconds(500);

void Daemon::Shutdown() {
  // Not ready from here on: /readyz answers 503 while running calls drain.
  draining_.store(true);
  poller_keepalive_.reset();  // its calls would hold the drain below
  for (const auto& listener : unix_listeners_) listener->Stop();
  if (grpc_server_ != nullptr) {
    grpc_server_->GetHealthCheckService()->SetServingStatus(false);
    if (services_ != nullptr) {
      services_->weight_service->Drain();
      // Queued loads are answered UNAVAILABLE now, not after the grace.
      services_->manager->Shutdown();
    }
    const absl::Time deadline =
        absl::Now() + absl::Milliseconds(config_.shutdown_grace_ms);
    // New calls are refused from Drain() on (UNAVAILABLE). Running calls
    // finish, and their last bytes reach their clients, before gRPC's
    // Shutdown: it sends GOAWAY, after which a connection whose last
    // stream ends is closed at once, and a client still acknowledging the
    // data it was reading then writes to a closed socket and fails a call
    // that succeeded (UNAVAILABLE, broken pipe; about 1 in 20 under load).
    // A call ends once its status is handed to the transport, before its
    // last bytes are written: hence kShutdownLinger after the last one.
    if (running_calls_->WaitUntilIdle(deadline)) {
      const absl::Time quiet =
          running_calls_->LastAnsweredEnd() + kShutdownLinger;
      if (quiet < deadline) absl::SleepFor(quiet - absl::Now());
    }
    std::atomic<bool> stopped{false};
    grpc::Server* server = grpc_server_.get();
    std::thread stopper([server, deadline, &stopped] {
      server->Shutdown(absl::ToChronoTime(deadline));
      stopped.store(true);
    });
    // gRPC's Shutdown waits for running calls and also for every client to
    // hang up, idle ones included. Once no call runs, drop the connections
    // (repeatedly: a client may still have been connecting).
    while (!stopped.load()) {
      if (running_calls_->WaitUntilIdle(
              std::min(deadline, absl::Now() + absl::Milliseconds(50)))) {
        grpc_server_cancel_all_calls(server->c_server());
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
    stopper.join();
    grpc_server_->Wait();
    grpc_server_.reset();
  }
  unix_listeners_.clear();
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
