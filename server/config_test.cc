#include "server/config.h"

#include "gtest/gtest.h"

namespace weightd {
namespace {

ServerConfig UnixConfig() {
  ServerConfig config;
  config.listen = {"unix:/tmp/w.sock"};
  config.manager.model_roots = {"/models"};
  return config;
}

TEST(ServerConfigTest, NeedsAListenerAndAModelRoot) {
  EXPECT_TRUE(ValidateServerConfig(UnixConfig()).ok());
  ServerConfig no_listener = UnixConfig();
  no_listener.listen.clear();
  EXPECT_EQ(ValidateServerConfig(no_listener).message(),
            "at least one --listen address is needed");
  ServerConfig no_root = UnixConfig();
  no_root.manager.model_roots.clear();
  EXPECT_EQ(ValidateServerConfig(no_root).message(),
            "at least one --model_root directory is needed");
}

TEST(ServerConfigTest, TcpNeedsTlsAndAuthenticationOrTheInsecureFlag) {
  ServerConfig plain = UnixConfig();
  plain.listen.push_back("0.0.0.0:7000");
  EXPECT_NE(ValidateServerConfig(plain).message().find("--insecure_tcp"),
            absl::string_view::npos);
  ServerConfig tls_only = plain;
  tls_only.tls_cert_file = "c.pem";
  tls_only.tls_key_file = "k.pem";
  EXPECT_EQ(ValidateServerConfig(tls_only).message(),
            "TLS alone authenticates no client: add --auth_token_file and/or "
            "--tls_client_ca_file");
  ServerConfig half_tls = plain;
  half_tls.tls_cert_file = "c.pem";
  EXPECT_EQ(ValidateServerConfig(half_tls).message(),
            "--tls_cert_file and --tls_key_file go together");
  ServerConfig token_without_tls = UnixConfig();
  token_without_tls.auth_token_file = "t";
  EXPECT_FALSE(ValidateServerConfig(token_without_tls).ok());
  ServerConfig secure = tls_only;
  secure.auth_token_file = "t";
  EXPECT_TRUE(ValidateServerConfig(secure).ok());
  ServerConfig contradiction = secure;
  contradiction.insecure_tcp = true;
  EXPECT_EQ(ValidateServerConfig(contradiction).message(),
            "--insecure_tcp contradicts --tls_cert_file: choose one");
  ServerConfig insecure = plain;
  insecure.insecure_tcp = true;
  EXPECT_TRUE(ValidateServerConfig(insecure).ok());
  EXPECT_TRUE(IsTcpListenAddress("[::1]:7000"));
  EXPECT_FALSE(IsTcpListenAddress("unix:/run/w.sock"));
}

TEST(ServerConfigTest, ByteSizes) {
  EXPECT_EQ(*ParseByteSize("512M"), 512ull << 20);
  EXPECT_EQ(*ParseByteSize("17"), 17u);
  EXPECT_EQ(*ParseByteSize("2GiB"), 2ull << 30);
  EXPECT_EQ(ParseByteSize("12Q").status().message(),
            "bad size suffix in \"12Q\"");
  EXPECT_FALSE(ParseByteSize("99999999999999T").ok());
  EXPECT_FALSE(ParseByteSize("").ok());
  EXPECT_FALSE(ParseByteSize("G").ok());
}

TEST(ServerConfigTest, FormatByteSizeIsTheInverseOfParse) {
  EXPECT_EQ(FormatByteSize(0), "0");
  EXPECT_EQ(FormatByteSize(8ull << 20), "8M");
  EXPECT_EQ(FormatByteSize(3ull << 40), "3T");
  EXPECT_EQ(FormatByteSize(1536), "1536");  // 1.5K: not a whole number of K
  EXPECT_EQ(FormatByteSize(4097), "4097");
  EXPECT_EQ(FormatByteSize(~uint64_t{0}), "18446744073709551615");
  for (uint64_t bytes :
       {uint64_t{1}, uint64_t{1} << 10, uint64_t{65539}, uint64_t{5} << 30,
        ~uint64_t{0}, (~uint64_t{0} >> 10) << 10}) {
    EXPECT_EQ(*ParseByteSize(FormatByteSize(bytes)), bytes) << bytes;
  }
}

}  // namespace
}  // namespace weightd
