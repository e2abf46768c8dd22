#include "server/peer_credentials.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "loader/common/logging.h"

namespace weightd {
namespace {

// Makes room for a Unix socket: creates its directory and removes a stale
// socket file. Refuses to remove anything that is not a socket.
absl::Status PrepareUnixSocketPath(const std::string& path) {
  constexpr size_t kMaxUnixPath = sizeof(sockaddr_un::sun_path) - 1;
  if (path.empty()) return absl::InvalidArgumentError("empty unix socket path");
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

void UnixPeerRegistry::Add(int fd, const PeerCredentials& credentials) {
  MutexLock lock(&mu_);
  by_fd_[fd] = credentials;
}

std::optional<PeerCredentials> UnixPeerRegistry::Find(
    absl::string_view grpc_peer) const {
  int fd = -1;
  if (!absl::ConsumePrefix(&grpc_peer, "fd:") ||
      !absl::SimpleAtoi(grpc_peer, &fd)) {
    return std::nullopt;
  }
  MutexLock lock(&mu_);
  auto it = by_fd_.find(fd);
  if (it == by_fd_.end()) return std::nullopt;
  return it->second;
}

absl::StatusOr<std::unique_ptr<UnixSocketListener>> UnixSocketListener::Create(
    const std::string& path, uint32_t mode) {
  if (absl::Status prepared = PrepareUnixSocketPath(path); !prepared.ok()) {
    return prepared;
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    return absl::InternalError(
        absl::StrCat("socket(AF_UNIX): ", std::strerror(errno)));
  }
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.data(), path.size());
  // The mode is applied before listen(): nobody can connect earlier.
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
      chmod(path.c_str(), mode) != 0 || listen(fd, SOMAXCONN) != 0) {
    std::string error = std::strerror(errno);
    close(fd);
    return absl::UnavailableError(
        absl::StrCat("cannot listen on unix:", path, ": ", error));
  }
  int wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake < 0) {
    std::string error = std::strerror(errno);
    close(fd);
    return absl::InternalError(absl::StrCat("eventfd: ", error));
  }
  return std::unique_ptr<UnixSocketListener>(
      new UnixSocketListener(path, fd, wake));
}

UnixSocketListener::UnixSocketListener(std::string path, int listen_fd,
                                       int wake_fd)
    : path_(std::move(path)), listen_fd_(listen_fd), wake_fd_(wake_fd) {}

UnixSocketListener::~UnixSocketListener() {
  Stop();
  close(wake_fd_);
}

void UnixSocketListener::Start(OnConnection on_connection) {
  on_connection_ = std::move(on_connection);
  thread_ = std::thread([this] { AcceptLoop(); });
}

void UnixSocketListener::Stop() {
  if (thread_.joinable()) {
    uint64_t one = 1;
    (void)!write(wake_fd_, &one, sizeof(one));
    thread_.join();
  }
  if (listen_fd_ >= 0) {
    close(listen_fd_);
    listen_fd_ = -1;
  }
}

void UnixSocketListener::AcceptLoop() {
  for (;;) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      LogError("unix:%s: poll: %s; no longer accepting", path_,
               std::strerror(errno));
      return;
    }
    if (fds[1].revents != 0) return;
    int fd =
        accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED) continue;
      // Out of descriptors or memory: wait a little instead of spinning.
      LogWarning("unix:%s: accept: %s", path_, std::strerror(errno));
      pollfd wake = {wake_fd_, POLLIN, 0};
      if (poll(&wake, 1, 100) > 0) return;
      continue;
    }
    ucred peer{};
    socklen_t length = sizeof(peer);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &length) != 0) {
      LogWarning("unix:%s: SO_PEERCRED: %s; connection refused", path_,
                 std::strerror(errno));
      close(fd);
      continue;
    }
    PeerCredentials credentials;
    credentials.uid = peer.uid;
    credentials.gid = peer.gid;
    credentials.pid = peer.pid;
    credentials.connection = next_connection_++;
    on_connection_(fd, credentials);
  }
}

}  // namespace weightd
