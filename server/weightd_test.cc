// weightd as operators run it: the real binary's --help, --version, flag and
// config file errors, a config file starting it, and /readyz answering from
// the daemon's state, through a SIGTERM drain included.
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <httplib.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "proto/weightd/v1/weightd.grpc.pb.h"
#include "server/version.h"

extern char** environ;

namespace weightd {
namespace {

namespace fs = std::filesystem;
namespace v1 = ::weightd::v1;

constexpr char kWeightd[] = "server/weightd";

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

void WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << contents;
}

// A safetensors file of `count` float32s.
void WriteSafetensors(const std::string& path, uint64_t count) {
  std::string header =
      absl::StrCat("{\"w\":{\"dtype\":\"F32\",\"shape\":[", count,
                   "],\"data_offsets\":[0,", count * 4, "]}}");
  while (header.size() % 8) header += ' ';
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  const uint64_t size = header.size();
  out.write(reinterpret_cast<const char*>(&size), 8);
  out << header;
  const std::vector<float> block(1 << 16, 0.5f);
  for (uint64_t done = 0; done < count; done += block.size()) {
    out.write(reinterpret_cast<const char*>(block.data()),
              std::min<uint64_t>(block.size(), count - done) * 4);
  }
}

// One HTTP answer; status 0 when none came.
struct Answer {
  int status = 0;
  std::string body;
};
Answer Get(httplib::Client& http, const std::string& path) {
  auto result = http.Get(path.c_str());
  if (!result) return {};
  return {result->status, result->body};
}

// Waits (up to a generous bound) until `condition` holds.
bool WaitFor(const std::function<bool()>& condition,
             absl::Duration bound = absl::Seconds(60)) {
  const absl::Time deadline = absl::Now() + bound;
  while (absl::Now() < deadline) {
    if (condition()) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return condition();
}

// weightd with `args`, stdout and stderr to files.
class WeightdProcess {
 public:
  WeightdProcess(const std::string& dir, std::vector<std::string> args)
      : stdout_(dir + "/stdout"), stderr_(dir + "/stderr") {
    args.insert(args.begin(), kWeightd);
    std::vector<char*> argv;
    for (std::string& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, stdout_.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&actions, 2, stderr_.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int error =
        posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    EXPECT_EQ(error, 0) << "posix_spawn " << kWeightd;
    if (error != 0) pid_ = -1;
  }
  ~WeightdProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }

  // Waits for the ready line; false (with the log) if weightd exits first.
  ::testing::AssertionResult WaitUntilReady() {
    const bool ready = WaitFor(
        [&] { return absl::StrContains(err(), "weightd ready") || Exited(); });
    if (!ready || !absl::StrContains(err(), "weightd ready")) {
      return ::testing::AssertionFailure() << "weightd did not start:\n"
                                           << err();
    }
    return ::testing::AssertionSuccess();
  }

  // The exit status once weightd ends (-1: not within the bound).
  int Wait(absl::Duration bound = absl::Seconds(60)) {
    if (!WaitFor([&] { return Exited(); }, bound)) return -1;
    return WIFEXITED(status_) ? WEXITSTATUS(status_) : 128 + WTERMSIG(status_);
  }

  void Signal(int signal_number) { kill(pid_, signal_number); }

  // The HTTP endpoint's port, from the ready line.
  int MetricsPort() {
    const std::string log = err();
    const std::string marker = "metrics on http://127.0.0.1:";
    const size_t at = log.find(marker);
    return at == std::string::npos
               ? 0
               : std::atoi(log.c_str() + at + marker.size());
  }

  std::string out() const { return ReadFile(stdout_); }
  std::string err() const { return ReadFile(stderr_); }

 private:
  bool Exited() {
    if (pid_ < 0) return true;
    if (waitpid(pid_, &status_, WNOHANG) != pid_) return false;
    pid_ = -1;
    return true;
  }

  const std::string stdout_;
  const std::string stderr_;
  pid_t pid_ = -1;
  int status_ = 0;
};

class WeightdTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static int counter = 0;
    const char* tmp = std::getenv("TEST_TMPDIR");
    dir_ = absl::StrCat(tmp != nullptr ? tmp : "/tmp", "/weightd-", getpid(),
                        "-", counter);
    root_ = dir_ + "/models";
    fs::create_directories(root_);
    // Unix socket paths are limited to 107 bytes; TEST_TMPDIR is longer.
    socket_dir_ = absl::StrCat("/tmp/weightd-binary-", getpid(), "-", counter);
    ++counter;
    fs::create_directories(socket_dir_);
    socket_ = socket_dir_ + "/w.sock";
  }
  void TearDown() override {
    fs::remove_all(dir_);
    fs::remove_all(socket_dir_);
  }

  // weightd serving on socket_ with a metrics endpoint on a free port and a
  // slow fake GPU (each 64 KiB chunk copied takes 100 ms: a 4 MiB load runs
  // for seconds, until its client cancels it).
  std::unique_ptr<WeightdProcess> StartSlowDaemon(
      const std::vector<std::string>& extra) {
    std::vector<std::string> args = {
        "--listen=unix:" + socket_,        "--model_root=" + root_,
        "--metrics_address=127.0.0.1:0",   "--fake_gpus=1",
        "--fake_gpu_copy_delay_us=100000", "--staging_chunk=64K"};
    args.insert(args.end(), extra.begin(), extra.end());
    auto daemon = std::make_unique<WeightdProcess>(dir_, args);
    EXPECT_TRUE(daemon->WaitUntilReady());
    return daemon;
  }

  std::unique_ptr<v1::WeightService::Stub> Connect() {
    return v1::WeightService::NewStub(grpc::CreateChannel(
        "unix:" + socket_, grpc::InsecureChannelCredentials()));
  }

  std::string dir_;
  std::string root_;
  std::string socket_dir_;
  std::string socket_;
};

// A Load RPC to the fake GPU, running until cancelled.
struct RunningLoad {
  RunningLoad(v1::WeightService::Stub* stub, const std::string& path) {
    v1::LoadRequest request;
    request.set_path(path);
    request.mutable_placement()->set_target("cuda:0");
    reader = stub->Load(&context, request);
  }
  // The first progress event: the load is placing bytes.
  bool Started() {
    v1::LoadEvent event;
    return reader->Read(&event) && event.has_progress();
  }
  grpc::StatusCode CancelAndFinish() {
    context.TryCancel();
    v1::LoadEvent event;
    while (reader->Read(&event)) {
    }
    return reader->Finish().error_code();
  }

  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReader<v1::LoadEvent>> reader;
};

const std::vector<std::string>& AllFlags() {
  static const auto* flags = new std::vector<std::string>{
      "listen",
      "model_root",
      "metrics_address",
      "host_budget",
      "gpu_budget",
      "max_concurrent_loads",
      "max_queued_loads",
      "max_models",
      "worker_threads",
      "io_backend",
      "staging_chunk",
      "staging_buffers",
      "fake_gpus",
      "fake_gpu_copy_delay_us",
      "max_message_bytes",
      "unix_socket_mode",
      "log_level",
      "tls_cert_file",
      "tls_key_file",
      "auth_token_file",
      "tls_client_ca_file",
      "insecure_tcp",
      "allow_uid",
      "allow_gid",
      "admin_uid",
      "keepalive_time",
      "keepalive_timeout",
      "shutdown_grace",
      "config_file",
  };
  return *flags;
}

TEST_F(WeightdTest, HelpListsEveryFlagWithItsDefault) {
  WeightdProcess help(dir_, {"--help"});
  EXPECT_EQ(help.Wait(), 1);  // absl's --help exit status
  const std::string text = help.out();
  EXPECT_TRUE(absl::StrContains(text, "usage: weightd --listen=")) << text;
  for (const std::string& flag : AllFlags()) {
    EXPECT_TRUE(absl::StrContains(text, absl::StrCat("--", flag, " (")))
        << flag << " missing from --help:\n"
        << text;
  }
  EXPECT_TRUE(absl::StrContains(text, "default: 8M;")) << text;
  EXPECT_TRUE(absl::StrContains(text, "default: 20s;")) << text;
  EXPECT_TRUE(absl::StrContains(text, "default: \"127.0.0.1:9464\";"));
}

TEST_F(WeightdTest, VersionIsTheVersionFile) {
  const std::string version(
      absl::StripAsciiWhitespace(ReadFile("VERSION")));  // //:VERSION
  ASSERT_FALSE(version.empty());
  EXPECT_EQ(version, kVersion);
  WeightdProcess process(dir_, {"--version"});
  EXPECT_EQ(process.Wait(), 0);
  EXPECT_EQ(process.out(), absl::StrCat("weightd ", version, "\n"));
}

TEST_F(WeightdTest, BadFlagsAreRefusedNamingTheFlag) {
  WeightdProcess range(dir_, {"--max_models=0"});
  EXPECT_EQ(range.Wait(), 1);
  EXPECT_TRUE(absl::StrContains(
      range.err(),
      "Illegal value '0' specified for flag 'max_models'; expected an integer "
      "in [1, 1048576]"))
      << range.err();
  WeightdProcess unknown(dir_, {"--nope=1"});
  EXPECT_EQ(unknown.Wait(), 1);
  EXPECT_TRUE(absl::StrContains(unknown.err(), "Unknown command line flag"))
      << unknown.err();
  // absl refuses what does not parse (1); the config is checked after (2).
  WeightdProcess no_root(dir_, {"--listen=unix:" + socket_});
  EXPECT_EQ(no_root.Wait(), 2);
  EXPECT_EQ(no_root.err(),
            "weightd: at least one --model_root directory is needed (see "
            "--help)\n");
  WeightdProcess positional(dir_, {"--model_root=" + root_, "serve"});
  EXPECT_EQ(positional.Wait(), 2);
  EXPECT_TRUE(absl::StrContains(positional.err(), "unexpected argument"));
}

TEST_F(WeightdTest, ConfigFileErrorsNameTheFileAndLine) {
  const std::string config = dir_ + "/weightd.conf";
  WriteFile(config, "# the daemon\n--listen=unix:" + socket_ +
                        "\n\n--model_root=" + root_ + "\n--max_modles=10\n");
  WeightdProcess process(dir_, {"--config_file=" + config});
  EXPECT_EQ(process.Wait(), 2);
  EXPECT_EQ(process.err(), absl::StrCat("weightd: ", config,
                                        ":5: unknown flag --max_modles (see "
                                        "--help)\n"));
  WriteFile(config, "--fake_gpus=99\n");
  WeightdProcess bad_value(dir_, {"--config_file=" + config});
  EXPECT_EQ(bad_value.Wait(), 2);
  EXPECT_TRUE(absl::StrContains(
      bad_value.err(),
      absl::StrCat(config,
                   ":1: Illegal value '99' specified for flag "
                   "'fake_gpus'; expected an integer in [0, 16]")))
      << bad_value.err();
}

TEST_F(WeightdTest, ConfigFileConfiguresTheDaemonAndLaterFlagsOverrideIt) {
  const std::string more_root = dir_ + "/more";
  fs::create_directories(more_root);
  const std::string config = dir_ + "/weightd.conf";
  WriteFile(config, absl::StrCat("# weightd\n--listen=unix:", socket_,
                                 "\n--model_root=", root_,
                                 "\n--metrics_address=127.0.0.1:9\n"
                                 "--fake_gpus=2\n"));
  WeightdProcess daemon(dir_,
                        {"--config_file=" + config, "--model_root=" + more_root,
                         "--metrics_address=127.0.0.1:0"});
  ASSERT_TRUE(daemon.WaitUntilReady());
  EXPECT_TRUE(absl::StrContains(daemon.err(), "grpc on unix:" + socket_));
  EXPECT_TRUE(absl::StrContains(daemon.err(),
                                "model roots " + root_ + ", " + more_root))
      << daemon.err();
  EXPECT_NE(daemon.MetricsPort(), 9);
  grpc::ClientContext context;
  v1::ServerInfoResponse info;
  ASSERT_TRUE(
      Connect()->ServerInfo(&context, v1::ServerInfoRequest(), &info).ok());
  EXPECT_EQ(info.version(), kVersion);
  int fake_gpus = 0;
  for (const v1::GpuInfo& gpu : info.gpus()) fake_gpus += gpu.fake();
  EXPECT_EQ(fake_gpus, 2);
  daemon.Signal(SIGTERM);
  EXPECT_EQ(daemon.Wait(), 0);
}

TEST_F(WeightdTest, TheSampleConfigFileStartsTheDaemon) {
  // deploy/weightd.conf as the systemd unit uses it, with its socket and root
  // replaced (an empty value drops a repeatable flag's earlier values).
  WeightdProcess daemon(dir_, {"--config_file=deploy/weightd.conf",
                               "--listen=", "--listen=unix:" + socket_,
                               "--model_root=", "--model_root=" + root_,
                               "--metrics_address=127.0.0.1:0"});
  ASSERT_TRUE(daemon.WaitUntilReady());
  EXPECT_TRUE(absl::StrContains(
      daemon.err(), absl::StrCat("weightd ready: grpc on unix:", socket_,
                                 "; metrics on http://127.0.0.1:")))
      << daemon.err();
  EXPECT_TRUE(absl::StrContains(daemon.err(), "model roots " + root_ + "\n"))
      << daemon.err();
  daemon.Signal(SIGTERM);
  EXPECT_EQ(daemon.Wait(), 0);
}

TEST_F(WeightdTest, ReadyzIsNotReadyWhileDrainingAfterSigterm) {
  const std::string path = root_ + "/slow.safetensors";
  WriteSafetensors(path, 1u << 20);  // 4 MiB: 64 chunks of 100 ms
  auto daemon = StartSlowDaemon({"--shutdown_grace=10m"});
  ASSERT_NE(daemon->MetricsPort(), 0) << daemon->err();
  httplib::Client http("127.0.0.1", daemon->MetricsPort());
  auto ready = http.Get("/readyz");
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->status, 200);
  EXPECT_EQ(ready->body, "ready\n");

  auto stub = Connect();
  RunningLoad load(stub.get(), path);
  ASSERT_TRUE(load.Started());
  EXPECT_EQ(http.Get("/readyz")->status, 200);  // one load is work, not full

  daemon->Signal(SIGTERM);
  // The running load holds the shutdown (its grace is long): the daemon is
  // alive, and no longer ready.
  Answer draining;
  ASSERT_TRUE(WaitFor([&] {
    draining = Get(http, "/readyz");
    return draining.status == 503;
  })) << daemon->err();
  EXPECT_EQ(draining.body, "not ready: shutting down\n");
  auto health = http.Get("/healthz");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);

  EXPECT_EQ(load.CancelAndFinish(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(daemon->Wait(), 0) << daemon->err();
}

TEST_F(WeightdTest, ReadyzNamesAFullLoadQueue) {
  const std::string path = root_ + "/slow.safetensors";
  WriteSafetensors(path, 1u << 20);
  auto daemon =
      StartSlowDaemon({"--max_concurrent_loads=1", "--max_queued_loads=1"});
  ASSERT_NE(daemon->MetricsPort(), 0) << daemon->err();
  httplib::Client http("127.0.0.1", daemon->MetricsPort());
  auto stub = Connect();
  RunningLoad running(stub.get(), path);
  ASSERT_TRUE(running.Started());
  EXPECT_EQ(http.Get("/readyz")->status, 200);
  // The only load thread is busy: the next load waits in the queue's one
  // place, and a third would be refused.
  RunningLoad queued(stub.get(), path);
  Answer full;
  ASSERT_TRUE(WaitFor([&] {
    full = Get(http, "/readyz");
    return full.status == 503;
  }));
  EXPECT_EQ(full.body,
            "not ready: the load queue is full (1 waiting, "
            "--max_queued_loads=1)\n");
  EXPECT_EQ(http.Get("/healthz")->status, 200);

  running.CancelAndFinish();
  queued.CancelAndFinish();
  EXPECT_TRUE(WaitFor([&] { return Get(http, "/readyz").status == 200; }));
  daemon->Signal(SIGTERM);
  EXPECT_EQ(daemon->Wait(), 0) << daemon->err();
}

TEST_F(WeightdTest, ReadyzNamesAModelRootThatIsGone) {
  const std::string second_root = dir_ + "/second";
  fs::create_directories(second_root);
  auto daemon = StartSlowDaemon({"--model_root=" + second_root});
  ASSERT_NE(daemon->MetricsPort(), 0) << daemon->err();
  httplib::Client http("127.0.0.1", daemon->MetricsPort());
  EXPECT_EQ(http.Get("/readyz")->status, 200);

  fs::remove(second_root);
  auto gone = http.Get("/readyz");
  ASSERT_TRUE(gone);
  EXPECT_EQ(gone->status, 503);
  EXPECT_EQ(gone->body, absl::StrCat("not ready: model root ", second_root,
                                     ": No such file or directory\n"));
  WriteFile(second_root, "a file now");
  auto file = http.Get("/readyz");
  ASSERT_TRUE(file);
  EXPECT_EQ(file->body, absl::StrCat("not ready: model root ", second_root,
                                     ": not a directory\n"));
  EXPECT_EQ(http.Get("/healthz")->status, 200);

  fs::remove(second_root);
  fs::create_directories(second_root);
  EXPECT_EQ(http.Get("/readyz")->status, 200);
  daemon->Signal(SIGTERM);
  EXPECT_EQ(daemon->Wait(), 0) << daemon->err();
}

}  // namespace
}  // namespace weightd
