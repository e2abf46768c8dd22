#include "server/auth.h"

#include <openssl/crypto.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "loader/common/logging.h"
#include "loader/common/sha256.h"

namespace weightd {
namespace {

constexpr char kBearerPrefix[] = "Bearer ";

}  // namespace

std::string Caller::Describe() const {
  if (!unix_socket) return absl::StrCat("tcp ", connection);
  return absl::StrCat("uid ", credentials.uid, " gid ", credentials.gid,
                      " pid ", credentials.pid);
}

AccessPolicy::AccessPolicy(Options options, const UnixPeerRegistry* registry)
    : allow_uids_(options.allow_uids.begin(), options.allow_uids.end()),
      allow_gids_(options.allow_gids.begin(), options.allow_gids.end()),
      admin_uids_(options.admin_uids.begin(), options.admin_uids.end()),
      tcp_authenticated_(options.tcp_authenticated),
      registry_(registry) {
  if (admin_uids_.empty()) admin_uids_ = {0, static_cast<uint32_t>(getuid())};
}

absl::StatusOr<Caller> AccessPolicy::Authorize(
    absl::string_view grpc_peer) const {
  Caller caller;
  if (absl::StartsWith(grpc_peer, "fd:")) {
    std::optional<PeerCredentials> found = registry_->Find(grpc_peer);
    if (!found.has_value()) {
      return absl::PermissionDeniedError(
          "weightd: the credentials of this connection are unknown");
    }
    caller.unix_socket = true;
    caller.credentials = *found;
    caller.connection = absl::StrCat("unix#", found->connection);
    const bool allowed = (allow_uids_.empty() && allow_gids_.empty()) ||
                         allow_uids_.count(found->uid) > 0 ||
                         allow_gids_.count(found->gid) > 0;
    if (!allowed) {
      return absl::PermissionDeniedError(
          absl::StrCat("weightd: ", caller.Describe(),
                       " is not allowed (see the daemon's --allow_uid and "
                       "--allow_gid)"));
    }
    caller.admin = admin_uids_.count(found->uid) > 0;
    return caller;
  }
  // TCP: TLS and the token were checked before the call reached the service.
  caller.connection = std::string(grpc_peer);
  caller.admin = tcp_authenticated_;
  return caller;
}

absl::Status AccessPolicy::AuthorizeAdmin(const Caller& caller,
                                          absl::string_view what) const {
  if (caller.admin) return absl::OkStatus();
  if (!caller.unix_socket) {
    return absl::PermissionDeniedError(absl::StrCat(
        "weightd: ", what,
        " is refused over unauthenticated TCP (--insecure_tcp); use the Unix "
        "socket or TLS with a token"));
  }
  return absl::PermissionDeniedError(
      absl::StrCat("weightd: ", what, " is for admins; ", caller.Describe(),
                   " is not one (see the daemon's --admin_uid)"));
}

absl::StatusOr<std::string> ReadTokenFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot read token file ", path, ": ", std::strerror(errno)));
  }
  std::stringstream contents;
  contents << in.rdbuf();
  std::string token(absl::StripAsciiWhitespace(contents.str()));
  if (token.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("token file ", path, " is empty"));
  }
  if (token.find_first_of("\r\n") != std::string::npos) {
    return absl::FailedPreconditionError(absl::StrCat(
        "token file ", path, " holds more than one line; a token is one line"));
  }
  struct stat info;
  if (stat(path.c_str(), &info) == 0 && (info.st_mode & 0077) != 0) {
    LogWarning("token file %s is readable by group or others (mode %o)", path,
               info.st_mode & 0777);
  }
  return token;
}

absl::StatusOr<std::string> NewSessionId() {
  unsigned char bytes[16];
  size_t filled = 0;
  while (filled < sizeof(bytes)) {
    ssize_t got = getrandom(bytes + filled, sizeof(bytes) - filled, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(
          absl::StrCat("getrandom: ", std::strerror(errno)));
    }
    filled += static_cast<size_t>(got);
  }
  return absl::StrCat(
      "session-", absl::BytesToHexString(absl::string_view(
                      reinterpret_cast<const char*>(bytes), sizeof(bytes))));
}

bool TokensEqual(absl::string_view a, absl::string_view b) {
  // Digests have one length, so the comparison's time says nothing about the
  // token's length or contents.
  const std::string da = Sha256Hex(a);
  const std::string db = Sha256Hex(b);
  return CRYPTO_memcmp(da.data(), db.data(), da.size()) == 0;
}

BearerTokenProcessor::BearerTokenProcessor(std::string token,
                                           bool accept_client_certificates)
    : token_(std::move(token)),
      has_token_(!token_.empty()),
      accept_client_certificates_(accept_client_certificates) {}

grpc::Status BearerTokenProcessor::Process(
    const InputMetadata& auth_metadata, grpc::AuthContext* context,
    OutputMetadata* consumed_auth_metadata, OutputMetadata* response_metadata) {
  // The listener only completes a handshake with a verified certificate when
  // it asks for one, so an authenticated peer identity is that certificate.
  if (accept_client_certificates_ && context != nullptr &&
      context->IsPeerAuthenticated()) {
    return grpc::Status::OK;
  }
  if (!has_token_) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "weightd: a client certificate is required");
  }
  auto it = auth_metadata.find("authorization");
  if (it == auth_metadata.end()) {
    return grpc::Status(
        grpc::StatusCode::UNAUTHENTICATED,
        "weightd: no authorization metadata; TCP clients must send "
        "\"authorization: Bearer <token>\" (weightctl --token_file or "
        "$WEIGHTD_TOKEN_FILE)");
  }
  absl::string_view value(it->second.data(), it->second.size());
  if (!absl::ConsumePrefix(&value, kBearerPrefix) ||
      !TokensEqual(value, token_)) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "weightd: the bearer token is not valid");
  }
  consumed_auth_metadata->insert(
      std::make_pair(std::string(it->first.data(), it->first.size()),
                     std::string(it->second.data(), it->second.size())));
  return grpc::Status::OK;
}

}  // namespace weightd
