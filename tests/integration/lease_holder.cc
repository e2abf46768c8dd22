// Loads a model through the daemon, holds its lease, prints "leased MODEL_ID"
// and sleeps until killed. The integration test kills it with SIGKILL to check
// that a dead client's leases go.
#include <unistd.h>

#include <cstdio>
#include <string>

#include "client/weightd_client.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: lease_holder ADDRESS FILE DEVICE\n");
    return 2;
  }
  auto client = weightd::WeightdClient::Connect(argv[1]);
  if (!client.ok()) {
    std::fprintf(stderr, "%s\n",
                 std::string(client.status().message()).c_str());
    return 1;
  }
  weightd::ClientLoadOptions options;
  options.path = argv[2];
  options.device = argv[3];
  auto model = (*client)->Load(options);
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  std::printf("leased %s\n", (*model)->model_id().c_str());
  std::fflush(stdout);
  for (;;) pause();
}
