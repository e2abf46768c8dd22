// Unix-socket listening with peer credentials. gRPC 1.51 tells a call neither
// its Unix peer's uid nor pid, so the daemon accepts Unix connections itself,
// records each one's SO_PEERCRED, and hands the connected socket to the gRPC
// server (grpc::AddInsecureChannelFromFd). Calls on such a connection report
// the peer "fd:N", which UnixPeerRegistry maps back to the credentials.
#ifndef WEIGHTD_SERVER_PEER_CREDENTIALS_H_
#define WEIGHTD_SERVER_PEER_CREDENTIALS_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "loader/common/mutex.h"

namespace weightd {

struct PeerCredentials {
  uint32_t uid = 0;
  uint32_t gid = 0;  // primary group
  int32_t pid = 0;
  // Unique per accepted connection for the daemon's life (fds are reused).
  uint64_t connection = 0;
};

// The credentials of every connection accepted on the daemon's Unix sockets,
// by file descriptor. A descriptor's entry is replaced when the number is
// reused: gRPC closes a connection's descriptor only once no call on it is
// left, so a running call always finds its own connection's entry.
class UnixPeerRegistry {
 public:
  void Add(int fd, const PeerCredentials& credentials);
  // `grpc_peer` is ServerContext::peer(): "fd:N" for the connections added
  // here; anything else (TCP peers) is nullopt.
  std::optional<PeerCredentials> Find(absl::string_view grpc_peer) const;

 private:
  mutable Mutex mu_;
  std::map<int, PeerCredentials> by_fd_ ABSL_GUARDED_BY(mu_);
};

// One listening Unix socket and the thread that accepts on it.
class UnixSocketListener {
 public:
  using OnConnection = std::function<void(int fd, const PeerCredentials&)>;

  // Creates `path`'s directory, removes a stale socket there (nothing else),
  // binds, applies `mode` and listens.
  static absl::StatusOr<std::unique_ptr<UnixSocketListener>> Create(
      const std::string& path, uint32_t mode);
  ~UnixSocketListener();

  // Accepts until Stop(); each connection (non-blocking, close-on-exec) goes to
  // `on_connection`, which takes ownership of the descriptor.
  void Start(OnConnection on_connection);
  // Stops accepting and closes the listening socket (the socket file stays).
  void Stop();

  const std::string& path() const { return path_; }

 private:
  UnixSocketListener(std::string path, int listen_fd, int wake_fd);
  void AcceptLoop();

  const std::string path_;
  int listen_fd_;
  int wake_fd_;  // eventfd: written by Stop() to end AcceptLoop's poll
  OnConnection on_connection_;
  std::thread thread_;
  uint64_t next_connection_ = 1;  // touched by the accept thread only
};

}  // namespace weightd

#endif  // WEIGHTD_SERVER_PEER_CREDENTIALS_H_
