#include "server/config.h"

#include "gtest/gtest.h"

namespace weightd {
namespace {

TEST(ServerConfigTest, ParsesRepeatableAndValuedFlags) {
  auto config = ParseServerConfig({"--listen=unix:/tmp/a.sock", "--listen",
                                   "127.0.0.1:0", "--model_root=/models",
                                   "--model_root=/more", "--host_budget=2G",
                                   "--fake_gpus=2", "--io_backend=pread"});
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

TEST(ServerConfigTest, ByteSizes) {
  EXPECT_EQ(*ParseByteSize("512M"), 512ull << 20);
  EXPECT_EQ(*ParseByteSize("17"), 17u);
  EXPECT_FALSE(ParseByteSize("99999999999999T").ok());
  EXPECT_FALSE(ParseByteSize("").ok());
}

}  // namespace
}  // namespace weightd
