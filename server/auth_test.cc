#include "server/auth.h"

#include <unistd.h>

#include <fstream>

#include "gtest/gtest.h"

namespace weightd {
namespace {

TEST(AccessPolicyTest, UnixPeersAreCheckedAgainstTheAllowlists) {
  UnixPeerRegistry registry;
  registry.Add(5, {1000, 100, 11, 1});
  registry.Add(6, {2000, 200, 12, 2});
  registry.Add(8, {3000, 300, 13, 3});
  AccessPolicy::Options options;
  options.allow_uids = {1000};
  options.allow_gids = {300};
  options.admin_uids = {1000};
  AccessPolicy policy(options, &registry);

  auto by_uid = policy.Authorize("fd:5");
  ASSERT_TRUE(by_uid.ok()) << by_uid.status();
  EXPECT_TRUE(by_uid->unix_socket);
  EXPECT_TRUE(by_uid->admin);
  EXPECT_EQ(by_uid->connection, "unix#1");
  EXPECT_TRUE(policy.AuthorizeAdmin(*by_uid, "Unload with force").ok());

  auto by_gid = policy.Authorize("fd:8");
  ASSERT_TRUE(by_gid.ok()) << by_gid.status();
  EXPECT_FALSE(by_gid->admin);
  absl::Status admin = policy.AuthorizeAdmin(*by_gid, "Unload with force");
  EXPECT_EQ(admin.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(admin.message().find("uid 3000"), absl::string_view::npos);

  auto outsider = policy.Authorize("fd:6");
  EXPECT_EQ(outsider.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(outsider.status().message().find("uid 2000 gid 200 pid 12"),
            absl::string_view::npos);
  EXPECT_EQ(policy.Authorize("fd:99").status().code(),
            absl::StatusCode::kPermissionDenied);
}

TEST(AccessPolicyTest, DefaultsAdmitEveryoneAndMakeTheDaemonsUidAdmin) {
  UnixPeerRegistry registry;
  registry.Add(5, {getuid(), getgid(), 1, 1});
  registry.Add(6, {getuid() + 1, getgid(), 2, 2});
  AccessPolicy policy(AccessPolicy::Options(), &registry);
  EXPECT_TRUE(policy.Authorize("fd:5")->admin);
  auto other = policy.Authorize("fd:6");
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(other->admin, getuid() + 1 == 0);
}

TEST(AccessPolicyTest, TcpAdminOnlyWhenAuthenticated) {
  UnixPeerRegistry registry;
  AccessPolicy::Options options;
  options.tcp_authenticated = false;
  AccessPolicy insecure(options, &registry);
  auto caller = insecure.Authorize("ipv4:10.0.0.1:5000");
  ASSERT_TRUE(caller.ok());
  EXPECT_FALSE(caller->unix_socket);
  EXPECT_EQ(caller->connection, "ipv4:10.0.0.1:5000");
  EXPECT_EQ(insecure.AuthorizeAdmin(*caller, "x").code(),
            absl::StatusCode::kPermissionDenied);
  options.tcp_authenticated = true;
  AccessPolicy secure(options, &registry);
  EXPECT_TRUE(secure.Authorize("ipv4:10.0.0.1:5000")->admin);
}

TEST(SessionIdTest, IsRandomAnd128Bits) {
  auto a = NewSessionId();
  auto b = NewSessionId();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->size(), std::string("session-").size() + 32);
  EXPECT_NE(*a, *b);
}

TEST(TokenTest, ComparesWholeTokens) {
  EXPECT_TRUE(TokensEqual("secret", "secret"));
  EXPECT_FALSE(TokensEqual("secret", "secreT"));
  EXPECT_FALSE(TokensEqual("secret", "secret2"));
  EXPECT_FALSE(TokensEqual("", "secret"));
}

TEST(TokenTest, TokenFileIsTrimmedAndMustHoldOneLine) {
  const char* dir = std::getenv("TEST_TMPDIR");
  std::string path = std::string(dir != nullptr ? dir : "/tmp") + "/token";
  std::ofstream(path) << "  abc123\n";
  EXPECT_EQ(*ReadTokenFile(path), "abc123");
  std::ofstream(path) << "\n\n";
  EXPECT_FALSE(ReadTokenFile(path).ok());
  std::ofstream(path) << "a\nb\n";
  EXPECT_FALSE(ReadTokenFile(path).ok());
  EXPECT_FALSE(ReadTokenFile(path + ".missing").ok());
}

}  // namespace
}  // namespace weightd
