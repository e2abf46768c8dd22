#include "client/commands.h"

#include <grpcpp/grpcpp.h>

#include <chrono>

#include "proto/grpc/health/v1/health.grpc.pb.h"

namespace weightd {
namespace {

int Health(const std::string& address, const std::vector<std::string>& args,
           std::ostream& out, std::ostream& err) {
  auto channel =
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(5));
  grpc::health::v1::HealthCheckRequest request;
  if (!args.empty()) request.set_service(args[0]);
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) {
    err << "weightctl: health check of " << address
        << " failed: " << status.error_message() << "\n";
    return 1;
  }
  out << grpc::health::v1::HealthCheckResponse::ServingStatus_Name(
             response.status())
      << "\n";
  return response.status() == grpc::health::v1::HealthCheckResponse::SERVING
             ? 0
             : 1;
}

}  // namespace

const std::map<std::string, WeightctlCommand>& WeightctlCommands() {
  static const auto* commands = new std::map<std::string, WeightctlCommand>{
      {"health", Health},
  };
  return *commands;
}

}  // namespace weightd
