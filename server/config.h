// The daemon's configuration, parsed from its command line.
#ifndef WEIGHTD_SERVER_CONFIG_H_
#define WEIGHTD_SERVER_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace weightd {

struct ServerConfig {
  // "unix:PATH" or "HOST:PORT"; repeatable. TCP is served only when listed
  // here.
  std::vector<std::string> listen;
  // Directories whose files may be loaded; repeatable.
  std::vector<std::string> model_roots;
  // Prometheus /metrics plus /healthz and /readyz; empty disables.
  std::string metrics_address = "127.0.0.1:9464";
  uint64_t host_budget_bytes = 0;  // 0: unlimited
  uint64_t gpu_budget_bytes = 0;   // per GPU; 0: 90% of the GPU's memory
  int max_concurrent_loads = 4;
  int fake_gpus = 0;  // test GPUs with their own memory, after the real ones
  int fake_gpu_copy_delay_us = 0;   // per staged chunk copied to a fake GPU
  std::string io_backend = "auto";  // auto | io_uring | pread
  uint64_t staging_chunk_bytes = 8ull << 20;
  int staging_buffers = 4;
  uint32_t max_message_bytes = 64u << 20;
  uint32_t unix_socket_mode = 0660;
  std::string log_level = "info";  // debug | info | warning | error
};

// Parses `--flag=value` / `--flag value`. Unknown flags and bad values are
// errors naming the flag. `--help` yields a NotFound status whose message is
// the usage text.
absl::StatusOr<ServerConfig> ParseServerConfig(
    const std::vector<std::string>& args);

std::string ServerUsage();

// "512M", "4G", "1073741824" -> bytes.
absl::StatusOr<uint64_t> ParseByteSize(const std::string& text);

}  // namespace weightd

#endif  // WEIGHTD_SERVER_CONFIG_H_
