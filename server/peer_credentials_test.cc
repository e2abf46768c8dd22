#include "server/peer_credentials.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <string>

#include "gtest/gtest.h"
#include "loader/common/mutex.h"

namespace weightd {
namespace {

std::string SocketDir() {
  static int counter = 0;
  return "/tmp/weightd-peer-test-" + std::to_string(getpid()) + "-" +
         std::to_string(counter++);
}

int ConnectTo(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, path.c_str(), sizeof(address.sun_path) - 1);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) !=
      0) {
    close(fd);
    return -1;
  }
  return fd;
}

TEST(UnixPeerRegistryTest, FindsOnlyFdPeersItKnows) {
  UnixPeerRegistry registry;
  registry.Add(7, {1000, 100, 42, 1});
  auto found = registry.Find("fd:7");
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->uid, 1000u);
  EXPECT_EQ(found->pid, 42);
  EXPECT_FALSE(registry.Find("fd:8").has_value());
  EXPECT_FALSE(registry.Find("ipv4:127.0.0.1:7").has_value());
  EXPECT_FALSE(registry.Find("fd:7x").has_value());
  // A reused descriptor names its newest connection.
  registry.Add(7, {1001, 101, 43, 2});
  EXPECT_EQ(registry.Find("fd:7")->connection, 2u);
}

TEST(UnixSocketListenerTest, AcceptsWithThePeersCredentialsAndTheMode) {
  const std::string dir = SocketDir();
  const std::string path = dir + "/s.sock";
  auto listener = UnixSocketListener::Create(path, 0660);
  ASSERT_TRUE(listener.ok()) << listener.status();
  struct stat info;
  ASSERT_EQ(stat(path.c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0660u);

  Mutex mu;
  CondVar accepted;
  std::vector<PeerCredentials> peers;
  (*listener)->Start([&](int fd, const PeerCredentials& peer) {
    close(fd);
    MutexLock lock(&mu);
    peers.push_back(peer);
    accepted.SignalAll();
  });
  int first = ConnectTo(path);
  int second = ConnectTo(path);
  ASSERT_GE(first, 0);
  ASSERT_GE(second, 0);
  {
    MutexLock lock(&mu);
    while (peers.size() < 2) accepted.Wait(&mu);
    EXPECT_EQ(peers[0].uid, getuid());
    EXPECT_EQ(peers[0].gid, getgid());
    EXPECT_EQ(peers[0].pid, getpid());
    EXPECT_NE(peers[0].connection, peers[1].connection);
  }
  close(first);
  close(second);
  (*listener)->Stop();
  EXPECT_LT(ConnectTo(path), 0);  // no longer listening
  unlink(path.c_str());
  rmdir(dir.c_str());
}

TEST(UnixSocketListenerTest, ReplacesAStaleSocketButNeverAFile) {
  const std::string dir = SocketDir();
  const std::string path = dir + "/s.sock";
  {
    auto stale = UnixSocketListener::Create(path, 0600);
    ASSERT_TRUE(stale.ok()) << stale.status();
  }  // closed without unlinking: a stale socket file stays
  auto again = UnixSocketListener::Create(path, 0600);
  ASSERT_TRUE(again.ok()) << again.status();
  again->reset();
  unlink(path.c_str());
  std::ofstream(path) << "not a socket";
  auto refused = UnixSocketListener::Create(path, 0600);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("is not a socket"),
            absl::string_view::npos);
  unlink(path.c_str());
  rmdir(dir.c_str());
}

}  // namespace
}  // namespace weightd
