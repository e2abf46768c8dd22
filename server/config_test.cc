#include "server/config.h"

#include "gtest/gtest.h"

namespace weightd {
namespace {

TEST(ServerConfigTest, ParsesRepeatableAndValuedFlags) {
  auto config = ParseServerConfig(
      {"--listen=unix:/tmp/a.sock", "--listen", "127.0.0.1:0",
       "--model_root=/models", "--model_root=/more", "--host_budget=2G",
       "--fake_gpus=2", "--io_backend=pread", "--insecure_tcp"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->listen.size(), 2u);
  EXPECT_EQ(config->listen[1], "127.0.0.1:0");
  EXPECT_EQ(config->model_roots.size(), 2u);
  EXPECT_EQ(config->host_budget_bytes, 2ull << 30);
  EXPECT_EQ(config->fake_gpus, 2);
  EXPECT_EQ(config->io_backend, "pread");
}

TEST(ServerConfigTest, RejectsUnknownAndBadValues) {
  EXPECT_EQ(ParseServerConfig({"--bogus=1"}).status().message(),
            "unknown flag --bogus");
  auto bad_budget = ParseServerConfig(
      {"--listen=unix:x", "--model_root=/m", "--host_budget=12Q"});
  EXPECT_EQ(bad_budget.status().message(),
            "--host_budget=12Q: bad size suffix in \"12Q\"");
  EXPECT_EQ(ParseServerConfig({"--model_root=/m"}).status().message(),
            "at least one --listen address is needed");
  EXPECT_EQ(ParseServerConfig({"--listen=unix:x"}).status().message(),
            "at least one --model_root directory is needed");
  EXPECT_EQ(ParseServerConfig({"--listen"}).status().message(),
            "--listen needs a value");
}

TEST(ServerConfigTest, TcpNeedsTlsAndAuthenticationOrTheInsecureFlag) {
  auto plain = ParseServerConfig({"--listen=0.0.0.0:7000", "--model_root=/m"});
  ASSERT_FALSE(plain.ok());
  EXPECT_NE(plain.status().message().find("--insecure_tcp"),
            absl::string_view::npos)
      << plain.status();
  auto tls_only =
      ParseServerConfig({"--listen=0.0.0.0:7000", "--model_root=/m",
                         "--tls_cert_file=c.pem", "--tls_key_file=k.pem"});
  EXPECT_EQ(tls_only.status().message(),
            "TLS alone authenticates no client: add --auth_token_file and/or "
            "--tls_client_ca_file");
  EXPECT_FALSE(ParseServerConfig({"--listen=0.0.0.0:7000", "--model_root=/m",
                                  "--tls_cert_file=c.pem"})
                   .ok());
  EXPECT_FALSE(ParseServerConfig({"--listen=unix:x", "--model_root=/m",
                                  "--auth_token_file=t"})
                   .ok());
  auto secure = ParseServerConfig(
      {"--listen=0.0.0.0:7000", "--model_root=/m", "--tls_cert_file=c.pem",
       "--tls_key_file=k.pem", "--auth_token_file=t", "--keepalive_time=2s",
       "--keepalive_timeout=500ms", "--allow_uid=1000", "--allow_uid", "1001",
       "--allow_gid=50", "--admin_uid=0"});
  ASSERT_TRUE(secure.ok()) << secure.status();
  EXPECT_EQ(secure->keepalive_time_ms, 2000);
  EXPECT_EQ(secure->keepalive_timeout_ms, 500);
  EXPECT_EQ(secure->allow_uids, (std::vector<uint32_t>{1000, 1001}));
  EXPECT_EQ(secure->allow_gids, (std::vector<uint32_t>{50}));
  EXPECT_EQ(secure->admin_uids, (std::vector<uint32_t>{0}));
  EXPECT_FALSE(secure->insecure_tcp);
  // A Unix socket alone needs none of it; the bool flag takes no value.
  auto unix_only = ParseServerConfig(
      {"--listen=unix:x", "--insecure_tcp", "--model_root=/m"});
  ASSERT_TRUE(unix_only.ok()) << unix_only.status();
  EXPECT_TRUE(unix_only->insecure_tcp);
  EXPECT_EQ(unix_only->model_roots, (std::vector<std::string>{"/m"}));
  EXPECT_FALSE(ParseServerConfig(
                   {"--listen=unix:x", "--model_root=/m", "--keepalive_time=1"})
                   .ok());
  EXPECT_FALSE(ParseServerConfig(
                   {"--listen=unix:x", "--model_root=/m", "--allow_uid=alice"})
                   .ok());
}

TEST(ServerConfigTest, ByteSizes) {
  EXPECT_EQ(*ParseByteSize("512M"), 512ull << 20);
  EXPECT_EQ(*ParseByteSize("17"), 17u);
  EXPECT_FALSE(ParseByteSize("99999999999999T").ok());
  EXPECT_FALSE(ParseByteSize("").ok());
}

}  // namespace
}  // namespace weightd
