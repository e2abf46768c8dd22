#include "server/config_flags.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/reflection.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace weightd {
namespace {

// Each test starts from the flags' defaults and leaves them so.
class ConfigFlagsTest : public ::testing::Test {
 protected:
  // Sets one flag as the command line would (`value` parsed, callbacks run).
  static std::string Set(const std::string& name, const std::string& value) {
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr) return "no flag --" + name;
    std::string error;
    return flag->ParseFrom(value, &error) ? "" : error;
  }
  static void SetMinimal() {
    ASSERT_EQ(Set("listen", "unix:/tmp/w.sock"), "");
    ASSERT_EQ(Set("model_root", "/models"), "");
  }
  std::string WriteFile(const std::string& name, const std::string& contents) {
    const char* tmp = std::getenv("TEST_TMPDIR");
    std::string path =
        absl::StrCat(tmp != nullptr ? tmp : "/tmp", "/", getpid(), "-", name);
    std::ofstream(path, std::ios::binary | std::ios::trunc) << contents;
    return path;
  }

  absl::FlagSaver saver_;
};

TEST_F(ConfigFlagsTest, DefaultsAreTheConfigStructsOwn) {
  SetMinimal();
  auto config = ServerConfigFromFlags();
  ASSERT_TRUE(config.ok()) << config.status();
  const ServerConfig defaults;
  EXPECT_EQ(config->metrics_address, defaults.metrics_address);
  EXPECT_EQ(config->max_message_bytes, defaults.max_message_bytes);
  EXPECT_EQ(config->unix_socket_mode, defaults.unix_socket_mode);
  EXPECT_EQ(config->log_level, defaults.log_level);
  EXPECT_EQ(config->insecure_tcp, defaults.insecure_tcp);
  EXPECT_EQ(config->keepalive_time_ms, defaults.keepalive_time_ms);
  EXPECT_EQ(config->keepalive_timeout_ms, defaults.keepalive_timeout_ms);
  EXPECT_EQ(config->shutdown_grace_ms, defaults.shutdown_grace_ms);
  const ModelManager::Options manager;
  EXPECT_EQ(config->manager.host_budget_bytes, manager.host_budget_bytes);
  EXPECT_EQ(config->manager.gpu_budget_bytes, manager.gpu_budget_bytes);
  EXPECT_EQ(config->manager.max_concurrent_loads, manager.max_concurrent_loads);
  EXPECT_EQ(config->manager.max_queued_loads, manager.max_queued_loads);
  EXPECT_EQ(config->manager.max_models, manager.max_models);
  EXPECT_EQ(config->manager.worker_threads, manager.worker_threads);
  const DeviceSet::Options devices;
  EXPECT_EQ(config->devices.fake_gpus, devices.fake_gpus);
  EXPECT_EQ(config->devices.fake_gpu_copy_delay, devices.fake_gpu_copy_delay);
  EXPECT_EQ(config->devices.io_backend, devices.io_backend);
  EXPECT_EQ(config->devices.staging_chunk_bytes, devices.staging_chunk_bytes);
  EXPECT_EQ(config->devices.staging_buffers, devices.staging_buffers);
  EXPECT_TRUE(config->allow_uids.empty());
  EXPECT_TRUE(config->admin_uids.empty());
  // --help shows the same defaults, written the way flags take them.
  EXPECT_EQ(absl::FindCommandLineFlag("staging_chunk")->DefaultValue(), "8M");
  EXPECT_EQ(absl::FindCommandLineFlag("max_message_bytes")->DefaultValue(),
            "64M");
  EXPECT_EQ(absl::FindCommandLineFlag("keepalive_time")->DefaultValue(), "20s");
  EXPECT_EQ(absl::FindCommandLineFlag("unix_socket_mode")->DefaultValue(),
            "0660");
}

TEST_F(ConfigFlagsTest, EveryFlagFillsItsField) {
  const std::vector<std::pair<std::string, std::string>> settings = {
      {"listen", "unix:/tmp/a.sock"},
      {"listen", "127.0.0.1:0"},
      {"model_root", "/models"},
      {"model_root", "/more"},
      {"metrics_address", ""},
      {"host_budget", "2G"},
      {"gpu_budget", "512M"},
      {"max_concurrent_loads", "3"},
      {"max_queued_loads", "0"},
      {"max_models", "9"},
      {"worker_threads", "5"},
      {"io_backend", "pread"},
      {"staging_chunk", "65539"},
      {"staging_buffers", "6"},
      {"fake_gpus", "2"},
      {"fake_gpu_copy_delay_us", "2000"},
      {"max_message_bytes", "1M"},
      {"unix_socket_mode", "0600"},
      {"log_level", "debug"},
      {"tls_cert_file", "c.pem"},
      {"tls_key_file", "k.pem"},
      {"auth_token_file", "t"},
      {"tls_client_ca_file", "ca.pem"},
      {"allow_uid", "1000"},
      {"allow_uid", "1001"},
      {"allow_gid", "50"},
      {"admin_uid", "0"},
      {"keepalive_time", "2s"},
      {"keepalive_timeout", "500ms"},
      {"shutdown_grace", "1m"},
  };
  for (const auto& [name, value] : settings)
    ASSERT_EQ(Set(name, value), "") << name;
  auto config = ServerConfigFromFlags();
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->listen,
            (std::vector<std::string>{"unix:/tmp/a.sock", "127.0.0.1:0"}));
  EXPECT_EQ(config->manager.model_roots,
            (std::vector<std::string>{"/models", "/more"}));
  EXPECT_EQ(config->metrics_address, "");
  EXPECT_EQ(config->manager.host_budget_bytes, 2ull << 30);
  EXPECT_EQ(config->manager.gpu_budget_bytes, 512ull << 20);
  EXPECT_EQ(config->manager.max_concurrent_loads, 3);
  EXPECT_EQ(config->manager.max_queued_loads, 0u);
  EXPECT_EQ(config->manager.max_models, 9u);
  EXPECT_EQ(config->manager.worker_threads, 5);
  EXPECT_EQ(config->devices.io_backend, "pread");
  EXPECT_EQ(config->devices.staging_chunk_bytes, 65539u);
  EXPECT_EQ(config->devices.staging_buffers, 6);
  EXPECT_EQ(config->devices.fake_gpus, 2);
  EXPECT_EQ(config->devices.fake_gpu_copy_delay, absl::Milliseconds(2));
  EXPECT_EQ(config->max_message_bytes, 1u << 20);
  EXPECT_EQ(config->unix_socket_mode, 0600u);
  EXPECT_EQ(config->log_level, "debug");
  EXPECT_EQ(config->tls_cert_file, "c.pem");
  EXPECT_EQ(config->tls_key_file, "k.pem");
  EXPECT_EQ(config->auth_token_file, "t");
  EXPECT_EQ(config->tls_client_ca_file, "ca.pem");
  EXPECT_EQ(config->allow_uids, (std::vector<uint32_t>{1000, 1001}));
  EXPECT_EQ(config->allow_gids, (std::vector<uint32_t>{50}));
  EXPECT_EQ(config->admin_uids, (std::vector<uint32_t>{0}));
  EXPECT_EQ(config->keepalive_time_ms, 2000);
  EXPECT_EQ(config->keepalive_timeout_ms, 500);
  EXPECT_EQ(config->shutdown_grace_ms, 60000);
  EXPECT_FALSE(config->insecure_tcp);
}

TEST_F(ConfigFlagsTest, RepeatableFlagsCollectAndAnEmptyValueClears) {
  ASSERT_EQ(Set("model_root", "/models"), "");
  ASSERT_EQ(Set("listen", "unix:/a"), "");
  ASSERT_EQ(Set("listen", "unix:/b"), "");
  EXPECT_EQ(ServerConfigFromFlags()->listen,
            (std::vector<std::string>{"unix:/a", "unix:/b"}));
  ASSERT_EQ(Set("listen", ""), "");
  EXPECT_EQ(ServerConfigFromFlags().status().message(),
            "at least one --listen address is needed");
  ASSERT_EQ(Set("listen", "unix:/c"), "");
  ASSERT_EQ(Set("admin_uid", "7"), "");
  ASSERT_EQ(Set("admin_uid", ""), "");
  ASSERT_EQ(Set("admin_uid", "8"), "");
  auto config = ServerConfigFromFlags();
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->listen, (std::vector<std::string>{"unix:/c"}));
  EXPECT_EQ(config->admin_uids, (std::vector<uint32_t>{8}));
}

TEST_F(ConfigFlagsTest, BadValuesAreRefusedWithTheReason) {
  auto refused = [](const std::string& name, const std::string& value) {
    std::string error = Set(name, value);
    EXPECT_FALSE(error.empty()) << "--" << name << "=" << value;
    return error;
  };
  EXPECT_EQ(refused("max_models", "0"),
            "Illegal value '0' specified for flag 'max_models'; expected an "
            "integer in [1, 1048576]");
  EXPECT_EQ(refused("host_budget", "12Q"),
            "Illegal value '12Q' specified for flag 'host_budget'; bad size "
            "suffix in \"12Q\"");
  EXPECT_TRUE(
      absl::EndsWith(refused("max_message_bytes", "1K"), "; expected 4K..1G"));
  EXPECT_TRUE(
      absl::EndsWith(refused("keepalive_time", "1"),
                     "; expected a duration like 10s or 500ms in [100ms, 2h]"));
  EXPECT_TRUE(absl::EndsWith(refused("shutdown_grace", "11m"), "0, 10m]"));
  EXPECT_TRUE(
      absl::EndsWith(refused("allow_uid", "alice"), "; expected a numeric id"));
  EXPECT_TRUE(absl::EndsWith(refused("unix_socket_mode", "0999"),
                             "; expected an octal mode like 0660"));
  EXPECT_TRUE(absl::EndsWith(refused("unix_socket_mode", "-1"),
                             "; expected an octal mode like 0660"));
  EXPECT_TRUE(absl::EndsWith(refused("io_backend", "mmap"),
                             "; expected auto, io_uring or pread"));
  EXPECT_TRUE(absl::EndsWith(refused("log_level", "loud"),
                             "; expected debug, info, warning or error"));
  EXPECT_FALSE(refused("staging_buffers", "1").empty());
  EXPECT_FALSE(refused("fake_gpus", "17").empty());
  // A refused value leaves the flag as it was.
  SetMinimal();
  EXPECT_EQ(ServerConfigFromFlags()->manager.max_models, 1024u);
}

TEST_F(ConfigFlagsTest, TcpWithoutTlsIsRefusedByValidation) {
  SetMinimal();
  ASSERT_EQ(Set("listen", "0.0.0.0:7000"), "");
  auto plain = ServerConfigFromFlags();
  ASSERT_FALSE(plain.ok());
  EXPECT_TRUE(absl::StrContains(plain.status().message(), "--insecure_tcp"))
      << plain.status();
  ASSERT_EQ(Set("insecure_tcp", "true"), "");
  EXPECT_TRUE(ServerConfigFromFlags().ok());
}

TEST_F(ConfigFlagsTest, ConfigFileSetsFlagsLineByLine) {
  const std::string path =
      WriteFile("good.conf",
                "# weightd config\n"
                "\n"
                "--listen=unix:/run/w.sock\r\n"
                "  --listen=127.0.0.1:0  \n"
                "--model_root=/models\n"
                "--insecure_tcp\n"
                "--max_models=7\n"
                "   # an indented comment\n"
                "--keepalive_time=3s");  // no final newline
  const absl::Status applied = ApplyConfigFile(path);
  ASSERT_TRUE(applied.ok()) << applied;
  auto config = ServerConfigFromFlags();
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->listen,
            (std::vector<std::string>{"unix:/run/w.sock", "127.0.0.1:0"}));
  EXPECT_EQ(config->manager.model_roots, (std::vector<std::string>{"/models"}));
  EXPECT_TRUE(config->insecure_tcp);
  EXPECT_EQ(config->manager.max_models, 7u);
  EXPECT_EQ(config->keepalive_time_ms, 3000);
  // What comes after the file overrides it.
  ASSERT_EQ(Set("max_models", "8"), "");
  EXPECT_EQ(ServerConfigFromFlags()->manager.max_models, 8u);
}

TEST_F(ConfigFlagsTest, ConfigFileErrorsNameTheFileAndLine) {
  auto error = [&](const std::string& contents) {
    const std::string path = WriteFile("bad.conf", contents);
    absl::Status status = ApplyConfigFile(path);
    EXPECT_FALSE(status.ok()) << contents;
    std::string message(status.message());
    EXPECT_TRUE(absl::StartsWith(message, path + ":")) << message;
    return message.substr(std::min(message.size(), path.size()));
  };
  EXPECT_EQ(error("--max_models=3\n# fine\n\n--bogus=1\n"),
            ":4: unknown flag --bogus");
  EXPECT_EQ(error("--max_models=0\n"),
            ":1: Illegal value '0' specified for flag 'max_models'; expected "
            "an integer in [1, 1048576]");
  EXPECT_EQ(error("max_models=3\n"),
            ":1: expected --flag=value, got \"max_models=3\"");
  EXPECT_EQ(error("--\n"), ":1: expected --flag=value, got \"--\"");
  EXPECT_EQ(error("--listen\n"), ":1: --listen needs a value: --listen=VALUE");
  EXPECT_EQ(error("--config_file=/etc/other.conf\n"),
            ":1: --config_file cannot be nested");
  // absl's own flags are not weightd's.
  EXPECT_EQ(error("--flagfile=/etc/other\n"), ":1: unknown flag --flagfile");
  EXPECT_EQ(error(std::string("--a\x01\xff=1\n")),
            ":1: unknown flag --a\\x01\\xff");
  // The lines before the bad one were applied; the file stops at it.
  EXPECT_EQ(error("--max_models=5\n--max_models=x\n--max_models=6\n"),
            ":2: Illegal value 'x' specified for flag 'max_models'; expected "
            "an integer in [1, 1048576]");
  EXPECT_EQ(absl::FindCommandLineFlag("max_models")->CurrentValue(), "5");
}

TEST_F(ConfigFlagsTest, ConfigFileMustBeASmallRegularFile) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string dir = tmp != nullptr ? tmp : "/tmp";
  EXPECT_EQ(ApplyConfigFile(dir).message(),
            absl::StrCat("--config_file=", dir, ": not a regular file"));
  EXPECT_TRUE(absl::StrContains(
      ApplyConfigFile(dir + "/missing.conf").message(),
      "missing.conf: cannot open: No such file or directory"));
  const std::string fifo = absl::StrCat(dir, "/", getpid(), "-fifo.conf");
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_EQ(ApplyConfigFile(fifo).message(),  // at once, no writer needed
            absl::StrCat("--config_file=", fifo, ": not a regular file"));
  unlink(fifo.c_str());
  const std::string big =
      WriteFile("big.conf", std::string(kMaxConfigFileBytes + 1, '#'));
  EXPECT_EQ(ApplyConfigFile(big).message(),
            absl::StrCat("--config_file=", big,
                         ": 1048577 bytes; a config file holds at most 1M"));
}

TEST_F(ConfigFlagsTest, TheConfigFileFlagReportsItsErrorsThroughTheConfig) {
  SetMinimal();
  const std::string path = WriteFile("flag.conf", "--fake_gpus=3\n--nope\n");
  ASSERT_EQ(Set("config_file", path), "");  // applied as it is parsed
  auto config = ServerConfigFromFlags();
  EXPECT_EQ(config.status().message(),
            absl::StrCat(path, ":2: unknown flag --nope"));
  const std::string good = WriteFile("flag-good.conf", "--fake_gpus=3\n");
  ASSERT_EQ(Set("config_file", ""), "");  // forgets the earlier files
  ASSERT_EQ(Set("config_file", good), "");
  config = ServerConfigFromFlags();
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->devices.fake_gpus, 3);
}

}  // namespace
}  // namespace weightd
