// Who may call the daemon. Unix-socket peers are identified by their
// SO_PEERCRED credentials and checked against uid/gid allowlists; TCP peers
// are authenticated by TLS plus a bearer token or a client certificate
// (BearerTokenProcessor), unless the operator chose --insecure_tcp.
#ifndef WEIGHTD_SERVER_AUTH_H_
#define WEIGHTD_SERVER_AUTH_H_

#include <grpcpp/security/auth_metadata_processor.h>

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/peer_credentials.h"

namespace weightd {

// One call's caller.
struct Caller {
  bool unix_socket = false;
  PeerCredentials credentials;  // Unix-socket callers only
  // Names the caller's connection; lease sessions are bound to it.
  std::string connection;
  bool admin = false;
  // "uid 1000 gid 1000 pid 4242" or "tcp ipv4:10.0.0.1:5000", for messages.
  std::string Describe() const;
};

class AccessPolicy {
 public:
  struct Options {
    std::vector<uint32_t> allow_uids;  // empty with allow_gids: everyone
    std::vector<uint32_t> allow_gids;
    std::vector<uint32_t> admin_uids;  // empty: the daemon's uid and root
    // TCP callers passed TLS and BearerTokenProcessor (false: --insecure_tcp).
    bool tcp_authenticated = false;
  };
  // `registry` (not owned) maps "fd:N" peers to credentials.
  AccessPolicy(Options options, const UnixPeerRegistry* registry);

  // The caller of a call whose ServerContext::peer() is `grpc_peer`, or
  // PERMISSION_DENIED for a Unix peer outside the allowlists.
  absl::StatusOr<Caller> Authorize(absl::string_view grpc_peer) const;
  // PERMISSION_DENIED unless `caller` may make admin call `what`.
  absl::Status AuthorizeAdmin(const Caller& caller,
                              absl::string_view what) const;

 private:
  std::set<uint32_t> allow_uids_;
  std::set<uint32_t> allow_gids_;
  std::set<uint32_t> admin_uids_;
  bool tcp_authenticated_;
  const UnixPeerRegistry* registry_;
};

// Reads a bearer token file (surrounding whitespace trimmed). Empty tokens are
// refused; a file others can read draws a warning.
absl::StatusOr<std::string> ReadTokenFile(const std::string& path);

// TCP calls: accepts a verified client certificate (when the listener asks for
// one) or `authorization: Bearer <token>` metadata, compared in constant time;
// anything else is UNAUTHENTICATED with a message saying what is missing.
class BearerTokenProcessor : public grpc::AuthMetadataProcessor {
 public:
  // `token` empty: only client certificates authenticate.
  BearerTokenProcessor(std::string token, bool accept_client_certificates);
  bool IsBlocking() const override { return false; }
  grpc::Status Process(const InputMetadata& auth_metadata,
                       grpc::AuthContext* context,
                       OutputMetadata* consumed_auth_metadata,
                       OutputMetadata* response_metadata) override;

 private:
  const std::string token_;
  const bool has_token_;
  const bool accept_client_certificates_;
};

// A fresh lease session id: "session-" + 128 random bits (getrandom) in hex,
// so a session cannot be guessed by another client.
absl::StatusOr<std::string> NewSessionId();

// Constant-time equality of two strings (of any lengths).
bool TokensEqual(absl::string_view a, absl::string_view b);

}  // namespace weightd

#endif  // WEIGHTD_SERVER_AUTH_H_
