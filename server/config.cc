#include "server/config.h"

#include <cctype>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace weightd {

absl::StatusOr<uint64_t> ParseByteSize(const std::string& text) {
  if (text.empty()) return absl::InvalidArgumentError("empty size");
  size_t digits = 0;
  while (digits < text.size() &&
         std::isdigit(static_cast<unsigned char>(text[digits]))) {
    ++digits;
  }
  uint64_t value = 0;
  if (digits == 0 || !absl::SimpleAtoi(text.substr(0, digits), &value)) {
    return absl::InvalidArgumentError(absl::StrCat("bad size \"", text, "\""));
  }
  std::string suffix = text.substr(digits);
  int shift = 0;
  if (suffix.empty() || suffix == "B") {
    shift = 0;
  } else if (suffix == "K" || suffix == "KiB" || suffix == "k") {
    shift = 10;
  } else if (suffix == "M" || suffix == "MiB") {
    shift = 20;
  } else if (suffix == "G" || suffix == "GiB") {
    shift = 30;
  } else if (suffix == "T" || suffix == "TiB") {
    shift = 40;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("bad size suffix in \"", text, "\""));
  }
  if (shift > 0 && value > (~uint64_t{0} >> shift)) {
    return absl::InvalidArgumentError(
        absl::StrCat("size \"", text, "\" overflows"));
  }
  return value << shift;
}

std::string FormatByteSize(uint64_t bytes) {
  if (bytes == 0) return "0";
  static constexpr struct {
    int shift;
    const char* suffix;
  } kUnits[] = {{40, "T"}, {30, "G"}, {20, "M"}, {10, "K"}};
  for (const auto& unit : kUnits) {
    if (bytes % (uint64_t{1} << unit.shift) == 0) {
      return absl::StrCat(bytes >> unit.shift, unit.suffix);
    }
  }
  return absl::StrCat(bytes);
}

bool IsTcpListenAddress(const std::string& address) {
  return !absl::StartsWith(address, "unix:");
}

absl::Status ValidateServerConfig(const ServerConfig& config) {
  if (config.listen.empty()) {
    return absl::InvalidArgumentError(
        "at least one --listen address is needed");
  }
  if (config.manager.model_roots.empty()) {
    return absl::InvalidArgumentError(
        "at least one --model_root directory is needed");
  }
  const bool tls =
      !config.tls_cert_file.empty() || !config.tls_key_file.empty();
  if (tls && (config.tls_cert_file.empty() || config.tls_key_file.empty())) {
    return absl::InvalidArgumentError(
        "--tls_cert_file and --tls_key_file go together");
  }
  if (!tls &&
      (!config.tls_client_ca_file.empty() || !config.auth_token_file.empty())) {
    return absl::InvalidArgumentError(
        "--tls_client_ca_file and --auth_token_file need TLS: give "
        "--tls_cert_file and --tls_key_file (a token in plaintext protects "
        "nothing)");
  }
  if (tls && config.insecure_tcp) {
    return absl::InvalidArgumentError(
        "--insecure_tcp contradicts --tls_cert_file: choose one");
  }
  if (tls && config.tls_client_ca_file.empty() &&
      config.auth_token_file.empty()) {
    return absl::InvalidArgumentError(
        "TLS alone authenticates no client: add --auth_token_file and/or "
        "--tls_client_ca_file");
  }
  for (const std::string& address : config.listen) {
    if (IsTcpListenAddress(address) && !tls && !config.insecure_tcp) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--listen=", address,
          " is TCP, which needs TLS and client authentication "
          "(--tls_cert_file, --tls_key_file and --auth_token_file or "
          "--tls_client_ca_file); pass --insecure_tcp to serve it in "
          "plaintext without authentication anyway"));
    }
  }
  return absl::OkStatus();
}

}  // namespace weightd
