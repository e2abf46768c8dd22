// Access control and connection robustness against the real weightd binary:
// TLS + bearer token and mTLS on TCP (certificates made by the `openssl`
// command at test time), Unix peer allowlists and admin calls, lease sessions
// bound to their connection, model ids across restarts, keepalive releasing a
// frozen client's leases, prompt shutdown, malformed requests.
#include <fcntl.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "client/weightd_client.h"
#include "gtest/gtest.h"
#include "loader/common/mutex.h"
#include "proto/grpc/health/v1/health.grpc.pb.h"

extern char** environ;

namespace weightd {
namespace {

namespace fs = std::filesystem;
namespace v1 = ::weightd::v1;

constexpr char kWeightd[] = "server/weightd";
constexpr char kLeaseHolder[] = "tests/integration/lease_holder";

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in),
                     std::istreambuf_iterator<char>());
}

// Runs `argv` with stdout and stderr into `log_path`; returns the pid.
pid_t Spawn(const std::vector<std::string>& argv, const std::string& log_path) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  std::vector<char*> args;
  for (const std::string& arg : argv)
    args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  int error =
      posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  EXPECT_EQ(error, 0) << "posix_spawn " << argv[0];
  return error == 0 ? pid : -1;
}

// Waits (up to a generous bound) until `condition` holds.
bool WaitFor(const std::function<bool()>& condition,
             absl::Duration bound = absl::Seconds(30)) {
  absl::Time deadline = absl::Now() + bound;
  while (absl::Now() < deadline) {
    if (condition()) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return condition();
}

// Exit status of `pid` once it ends within `bound`, or -1 (then killed).
int WaitForExit(pid_t pid, absl::Duration bound) {
  int status = 0;
  bool exited =
      WaitFor([&] { return waitpid(pid, &status, WNOHANG) == pid; }, bound);
  if (!exited) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return -1;
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// One weightd process.
class DaemonProcess {
 public:
  ~DaemonProcess() { Kill(); }

  // Starts weightd with `flags` and waits for its ready line.
  ::testing::AssertionResult Start(const std::string& dir,
                                   const std::vector<std::string>& flags) {
    log_ = dir + "/weightd.log";
    std::vector<std::string> argv = {kWeightd, "--metrics_address="};
    argv.insert(argv.end(), flags.begin(), flags.end());
    pid_ = Spawn(argv, log_);
    if (pid_ < 0) return ::testing::AssertionFailure() << "spawn failed";
    bool ready = WaitFor([&] {
      return absl::StrContains(ReadFile(log_), "weightd ready") ||
             waitpid(pid_, &exit_status_, WNOHANG) == pid_;
    });
    if (!ready || !absl::StrContains(ReadFile(log_), "weightd ready")) {
      pid_ = -1;
      return ::testing::AssertionFailure() << "weightd did not start:\n"
                                           << ReadFile(log_);
    }
    return ::testing::AssertionSuccess();
  }

  // The TCP port of the first TCP listener, from the ready line.
  int TcpPort() const {
    std::string log = ReadFile(log_);
    size_t at = log.find("127.0.0.1:", log.find("weightd ready"));
    if (at == std::string::npos) return 0;
    return std::atoi(log.c_str() + at + strlen("127.0.0.1:"));
  }

  // SIGTERM; the exit status once it stops within `bound`, else -1.
  int Stop(absl::Duration bound = absl::Seconds(30)) {
    if (pid_ < 0) return -1;
    kill(pid_, SIGTERM);
    int status = WaitForExit(pid_, bound);
    pid_ = -1;
    return status;
  }

  void Kill() {
    if (pid_ < 0) return;
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

  pid_t pid() const { return pid_; }
  std::string log() const { return ReadFile(log_); }

 private:
  pid_t pid_ = -1;
  int exit_status_ = 0;
  std::string log_;
};

// A channel of its own (its own connection: gRPC would otherwise share one
// subchannel between channels with equal arguments).
std::shared_ptr<grpc::Channel> OwnChannel(
    const std::string& address,
    std::shared_ptr<grpc::ChannelCredentials> credentials =
        grpc::InsecureChannelCredentials()) {
  grpc::ChannelArguments arguments;
  arguments.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(address, credentials, arguments);
}

grpc::Status CallList(grpc::Channel* channel,
                      absl::Duration deadline = absl::Seconds(10)) {
  auto stub = v1::WeightService::NewStub(
      std::shared_ptr<grpc::ChannelInterface>(channel, [](auto*) {}));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  v1::ListResponse response;
  return stub->List(&context, v1::ListRequest(), &response);
}

class AccessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static int counter = 0;
    // Unix socket paths are limited to 107 bytes; TEST_TMPDIR is longer.
    dir_ = absl::StrCat("/tmp/weightd-access-", getpid(), "-", counter++);
    fs::create_directories(dir_ + "/models");
    socket_ = dir_ + "/w.sock";
    model_ = dir_ + "/models/model.safetensors";
    WriteModel(model_, 1 << 10);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A safetensors file with one float32 tensor of `count` elements.
  static void WriteModel(const std::string& path, uint64_t count) {
    std::string header =
        absl::StrCat("{\"w\":{\"dtype\":\"F32\",\"shape\":[", count,
                     "],\"data_offsets\":[0,", count * 4, "]}}");
    while (header.size() % 8) header += ' ';
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    uint64_t size = header.size();
    out.write(reinterpret_cast<const char*>(&size), 8);
    out << header << std::string(count * 4, '\x01');
  }

  std::vector<std::string> UnixFlags() const {
    return {"--listen=unix:" + socket_, "--model_root=" + dir_ + "/models"};
  }

  // A CA, a server certificate for 127.0.0.1/localhost and a client
  // certificate, made with the openssl command.
  void MakeCertificates() {
    const std::string d = dir_;
    const std::string script = absl::StrCat(
        "set -e; cd ", d, "; exec >openssl.log 2>&1; ",
        "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca "
        "-keyout ca.key -out ca.pem; ",
        "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > san.ext; ",
        "openssl req -newkey rsa:2048 -nodes -subj /CN=weightd -keyout "
        "server.key -out server.csr; ",
        "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key "
        "-CAcreateserial -days 2 -extfile san.ext -out server.pem; ",
        "openssl req -newkey rsa:2048 -nodes -subj /CN=trainer -keyout "
        "client.key -out client.csr; ",
        "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key "
        "-CAcreateserial -days 2 -out client.pem; ",
        "printf 'the-token-1234\\n' > token; printf 'wrong' > wrong_token; "
        "chmod 600 token");
    ASSERT_EQ(std::system(script.c_str()), 0) << "openssl failed:\n"
                                              << ReadFile(d + "/openssl.log");
  }

  std::vector<std::string> TlsFlags() const {
    return {"--listen=127.0.0.1:0", "--model_root=" + dir_ + "/models",
            "--tls_cert_file=" + dir_ + "/server.pem",
            "--tls_key_file=" + dir_ + "/server.key"};
  }

  std::shared_ptr<grpc::ChannelCredentials> TlsCredentials(
      bool client_certificate) const {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = ReadFile(dir_ + "/ca.pem");
    if (client_certificate) {
      ssl.pem_cert_chain = ReadFile(dir_ + "/client.pem");
      ssl.pem_private_key = ReadFile(dir_ + "/client.key");
    }
    return grpc::SslCredentials(ssl);
  }

  std::string dir_;
  std::string socket_;
  std::string model_;
};

TEST_F(AccessTest, TcpWithoutTlsOrTheInsecureFlagRefusesToStart) {
  pid_t pid = Spawn({kWeightd, "--listen=127.0.0.1:0",
                     "--model_root=" + dir_ + "/models", "--metrics_address="},
                    dir_ + "/log");
  EXPECT_EQ(WaitForExit(pid, absl::Seconds(30)), 2);
  std::string log = ReadFile(dir_ + "/log");
  EXPECT_TRUE(absl::StrContains(log, "needs TLS")) << log;
  EXPECT_TRUE(absl::StrContains(log, "--insecure_tcp")) << log;
}

TEST_F(AccessTest, InsecureTcpIsLoggedLoudly) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start(dir_, {"--listen=127.0.0.1:0", "--insecure_tcp",
                                  "--model_root=" + dir_ + "/models"}));
  EXPECT_TRUE(
      absl::StrContains(daemon.log(), "PLAINTEXT WITHOUT AUTHENTICATION"))
      << daemon.log();
  auto channel = OwnChannel(absl::StrCat("127.0.0.1:", daemon.TcpPort()));
  EXPECT_TRUE(CallList(channel.get()).ok());
  EXPECT_EQ(daemon.Stop(), 0);
}

TEST_F(AccessTest, TlsWithTokenServesAndRefusesEveryoneElse) {
  ASSERT_NO_FATAL_FAILURE(MakeCertificates());
  DaemonProcess daemon;
  std::vector<std::string> flags = TlsFlags();
  flags.push_back("--auth_token_file=" + dir_ + "/token");
  ASSERT_TRUE(daemon.Start(dir_, flags));
  const std::string address = absl::StrCat("127.0.0.1:", daemon.TcpPort());

  // The C++ client with the CA and the token: loads, reads bytes, unloads.
  ConnectionOptions options;
  options.tls_ca_file = dir_ + "/ca.pem";
  options.token_file = dir_ + "/token";
  auto client = WeightdClient::Connect(address, options);
  ASSERT_TRUE(client.ok()) << client.status();
  std::string model_id;
  {
    ClientLoadOptions load;
    load.path = model_;
    load.device = "meta";
    auto model = (*client)->Load(load);
    ASSERT_TRUE(model.ok()) << model.status();
    model_id = (*model)->model_id();
  }
  int tensors = 0;
  ASSERT_TRUE(
      (*client)
          ->ReadTensors(model_id, {},
                        [&](const v1::Tensor& tensor, std::string bytes) {
                          ++tensors;
                          EXPECT_EQ(bytes.size(), 4096u);
                          return absl::OkStatus();
                        })
          .ok());
  EXPECT_EQ(tensors, 1);

  // Health checking with the same credentials.
  auto health_channel = CreateWeightdChannel(address, options);
  ASSERT_TRUE(health_channel.ok());
  auto health = grpc::health::v1::Health::NewStub(*health_channel);
  grpc::ClientContext health_context;
  grpc::health::v1::HealthCheckResponse serving;
  ASSERT_TRUE(health->Check(&health_context, {}, &serving).ok());
  EXPECT_EQ(serving.status(), grpc::health::v1::HealthCheckResponse::SERVING);

  // TLS without a token, then with a wrong one: UNAUTHENTICATED, saying why.
  grpc::Status no_token =
      CallList(OwnChannel(address, TlsCredentials(false)).get());
  EXPECT_EQ(no_token.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(absl::StrContains(no_token.error_message(), "Bearer"))
      << no_token.error_message();
  ConnectionOptions wrong = options;
  wrong.token_file = dir_ + "/wrong_token";
  auto wrong_channel = CreateWeightdChannel(address, wrong);
  ASSERT_TRUE(wrong_channel.ok());
  grpc::Status wrong_token = CallList(wrong_channel->get());
  EXPECT_EQ(wrong_token.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(wrong_token.error_message(),
            "weightd: the bearer token is not valid");

  // A plaintext client gets nowhere on the TLS port.
  grpc::Status plaintext =
      CallList(OwnChannel(address).get(), absl::Seconds(3));
  EXPECT_FALSE(plaintext.ok());
  EXPECT_NE(plaintext.error_code(), grpc::StatusCode::UNIMPLEMENTED);

  // The client refuses to send the token in plaintext.
  ConnectionOptions token_only;
  token_only.token_file = dir_ + "/token";
  EXPECT_FALSE(CreateWeightdChannel(address, token_only).ok());

  // Token holders are admins: a forced unload is allowed.
  EXPECT_TRUE((*client)->Unload(model_id, true).ok());
  client->reset();
  EXPECT_EQ(daemon.Stop(), 0);
}

TEST_F(AccessTest, MutualTlsNeedsAClientCertificate) {
  ASSERT_NO_FATAL_FAILURE(MakeCertificates());
  DaemonProcess daemon;
  std::vector<std::string> flags = TlsFlags();
  flags.push_back("--tls_client_ca_file=" + dir_ + "/ca.pem");
  ASSERT_TRUE(daemon.Start(dir_, flags));
  const std::string address = absl::StrCat("127.0.0.1:", daemon.TcpPort());

  EXPECT_TRUE(CallList(OwnChannel(address, TlsCredentials(true)).get()).ok());
  grpc::Status without = CallList(
      OwnChannel(address, TlsCredentials(false)).get(), absl::Seconds(3));
  EXPECT_FALSE(without.ok());
  EXPECT_NE(without.error_code(), grpc::StatusCode::UNIMPLEMENTED);

  ConnectionOptions options;
  options.tls_ca_file = dir_ + "/ca.pem";
  options.tls_cert_file = dir_ + "/client.pem";
  options.tls_key_file = dir_ + "/client.key";
  auto client = WeightdClient::Connect(address, options);
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_TRUE((*client)->Stats().ok());
  client->reset();
  EXPECT_EQ(daemon.Stop(), 0);
}

TEST_F(AccessTest, UnixPeersOutsideTheAllowlistAreDenied) {
  DaemonProcess daemon;
  std::vector<std::string> flags = UnixFlags();
  flags.push_back(absl::StrCat("--allow_uid=", getuid() + 4242));
  ASSERT_TRUE(daemon.Start(dir_, flags));
  grpc::Status denied = CallList(OwnChannel("unix:" + socket_).get());
  EXPECT_EQ(denied.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(absl::StrContains(denied.error_message(),
                                absl::StrCat("uid ", getuid(), " gid ")))
      << denied.error_message();
  daemon.Kill();

  // Allowed by gid instead.
  DaemonProcess by_gid;
  flags.push_back(absl::StrCat("--allow_gid=", getgid()));
  ASSERT_TRUE(by_gid.Start(dir_, flags));
  EXPECT_TRUE(CallList(OwnChannel("unix:" + socket_).get()).ok());
  EXPECT_EQ(by_gid.Stop(), 0);
}

TEST_F(AccessTest, ForcedUnloadIsForAdminsOnly) {
  DaemonProcess daemon;
  std::vector<std::string> flags = UnixFlags();
  flags.push_back(absl::StrCat("--admin_uid=", getuid() + 4242));
  ASSERT_TRUE(daemon.Start(dir_, flags));
  auto client = WeightdClient::Connect("unix:" + socket_, ConnectionOptions());
  ASSERT_TRUE(client.ok()) << client.status();
  ClientLoadOptions load;
  load.path = model_;
  auto model = (*client)->Load(load);
  ASSERT_TRUE(model.ok()) << model.status();
  auto forced = (*client)->Unload((*model)->model_id(), true);
  EXPECT_EQ(forced.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(absl::StrContains(forced.status().message(), "--admin_uid"));
  // An unforced unload is anyone's, and still refused while leased.
  EXPECT_EQ((*client)->Unload((*model)->model_id(), false).status().code(),
            absl::StatusCode::kFailedPrecondition);
  const std::string id = (*model)->model_id();
  model->reset();
  EXPECT_TRUE(WaitFor([&] { return (*client)->Unload(id, false).ok(); }));
  client->reset();
  EXPECT_EQ(daemon.Stop(), 0);
}

TEST_F(AccessTest, LeaseSessionsAreRandomAndBoundToTheirConnection) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start(dir_, UnixFlags()));
  auto owner_channel = OwnChannel("unix:" + socket_);
  auto owner = v1::WeightService::NewStub(owner_channel);
  grpc::ClientContext lease_context;
  auto stream = owner->Lease(&lease_context);
  v1::LeaseEvent opened;
  ASSERT_TRUE(stream->Read(&opened));
  ASSERT_EQ(opened.kind(), v1::LeaseEvent::OPENED);
  const std::string session = opened.session_id();
  ASSERT_TRUE(absl::StartsWith(session, "session-"));
  EXPECT_EQ(session.size(), strlen("session-") + 32);

  v1::LoadRequest request;
  request.set_path(model_);
  request.set_lease_session(session);
  auto load_on = [&](grpc::Channel* channel) {
    auto stub = v1::WeightService::NewStub(
        std::shared_ptr<grpc::ChannelInterface>(channel, [](auto*) {}));
    grpc::ClientContext context;
    auto reader = stub->Load(&context, request);
    v1::LoadEvent event;
    while (reader->Read(&event)) {
    }
    return reader->Finish();
  };
  // Another connection naming the session is refused; its owner is not.
  auto other_channel = OwnChannel("unix:" + socket_);
  grpc::Status stolen = load_on(other_channel.get());
  EXPECT_EQ(stolen.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(absl::StrContains(stolen.error_message(), "another connection"))
      << stolen.error_message();
  EXPECT_TRUE(load_on(owner_channel.get()).ok());

  // A second session gets another id.
  grpc::ClientContext second_context;
  auto second = owner->Lease(&second_context);
  v1::LeaseEvent second_opened;
  ASSERT_TRUE(second->Read(&second_opened));
  EXPECT_NE(second_opened.session_id(), session);
  second_context.TryCancel();
  lease_context.TryCancel();
  (void)second->Finish();
  (void)stream->Finish();
  EXPECT_EQ(daemon.Stop(), 0);
}

TEST_F(AccessTest, ModelIdsDoNotRepeatAcrossRestarts) {
  std::string first_id;
  for (int run = 0; run < 2; ++run) {
    DaemonProcess daemon;
    ASSERT_TRUE(daemon.Start(dir_, UnixFlags()));
    auto client =
        WeightdClient::Connect("unix:" + socket_, ConnectionOptions());
    ASSERT_TRUE(client.ok()) << client.status();
    ClientLoadOptions load;
    load.path = model_;
    auto model = (*client)->Load(load);
    ASSERT_TRUE(model.ok()) << model.status();
    if (run == 0) {
      first_id = (*model)->model_id();
    } else {
      EXPECT_NE((*model)->model_id(), first_id);
      // The saved id names nothing now, instead of another model.
      EXPECT_EQ((*client)->Describe(first_id).status().code(),
                absl::StatusCode::kNotFound);
    }
    model->reset();
    client->reset();
    EXPECT_EQ(daemon.Stop(), 0);
  }
}

// A lease holder that SIGSTOP freezes loses its leases once the daemon's
// keepalive ping goes unanswered; one that keeps running keeps them.
TEST_F(AccessTest, FrozenClientLosesItsLeasesWithinTheKeepaliveBound) {
  DaemonProcess daemon;
  std::vector<std::string> flags = UnixFlags();
  flags.push_back("--keepalive_time=500ms");
  flags.push_back("--keepalive_timeout=500ms");
  ASSERT_TRUE(daemon.Start(dir_, flags));
  const std::string address = "unix:" + socket_;
  pid_t holder =
      Spawn({kLeaseHolder, address, model_, "cpu"}, dir_ + "/holder.log");
  ASSERT_GT(holder, 0);
  ASSERT_TRUE(WaitFor([&] {
    return absl::StrContains(ReadFile(dir_ + "/holder.log"), "leased");
  })) << ReadFile(dir_ + "/holder.log");
  auto client = WeightdClient::Connect(address, ConnectionOptions());
  ASSERT_TRUE(client.ok());
  auto active_leases = [&] {
    auto stats = (*client)->Stats();
    EXPECT_TRUE(stats.ok()) << stats.status();
    return stats.ok() ? stats->active_leases() : -1;
  };
  // Many keepalive rounds with no other traffic: a healthy client keeps its
  // lease (pings without data keep flowing and are answered).
  absl::SleepFor(absl::Seconds(3));
  EXPECT_EQ(active_leases(), 1);
  kill(holder, SIGSTOP);
  // Bound: keepalive time + timeout (1 s), generously.
  EXPECT_TRUE(WaitFor([&] { return active_leases() == 0; }, absl::Seconds(20)))
      << "the frozen client still holds its lease";
  kill(holder, SIGKILL);
  kill(holder, SIGCONT);
  waitpid(holder, nullptr, 0);
  client->reset();
  EXPECT_EQ(daemon.Stop(), 0);
}

TEST_F(AccessTest, ShutdownIsPromptWithIdleClientsAndLeaseHolders) {
  DaemonProcess daemon;
  std::vector<std::string> flags = UnixFlags();
  // A long grace: stopping within the bound below means nothing waited it out.
  flags.push_back("--shutdown_grace=60s");
  ASSERT_TRUE(daemon.Start(dir_, flags));
  const std::string address = "unix:" + socket_;
  auto idle = WeightdClient::Connect(address, ConnectionOptions());
  ASSERT_TRUE(idle.ok());
  ASSERT_TRUE((*idle)->List().ok());
  pid_t holder =
      Spawn({kLeaseHolder, address, model_, "cpu"}, dir_ + "/holder.log");
  ASSERT_TRUE(WaitFor([&] {
    return absl::StrContains(ReadFile(dir_ + "/holder.log"), "leased");
  }));
  EXPECT_EQ(daemon.Stop(absl::Seconds(20)), 0) << "shutdown waited for clients";
  kill(holder, SIGKILL);
  waitpid(holder, nullptr, 0);
}

TEST_F(AccessTest, ShutdownLetsARunningLoadFinish) {
  const std::string big = dir_ + "/models/big.safetensors";
  WriteModel(big, 2 << 20);  // 8 MB: 128 staged chunks of 64 KB
  DaemonProcess daemon;
  std::vector<std::string> flags = UnixFlags();
  flags.insert(flags.end(),
               {"--fake_gpus=1", "--staging_chunk=64K",
                "--fake_gpu_copy_delay_us=10000", "--shutdown_grace=60s"});
  ASSERT_TRUE(daemon.Start(dir_, flags));
  auto client = WeightdClient::Connect("unix:" + socket_, ConnectionOptions());
  ASSERT_TRUE(client.ok());
  std::atomic<bool> started{false};
  absl::StatusOr<std::unique_ptr<ClientModel>> model;
  std::thread loader([&] {
    ClientLoadOptions load;
    load.path = big;
    load.device = "cuda:0";
    model = (*client)->Load(load, [&](uint64_t, uint64_t) { started = true; });
  });
  // A second client, connected before the daemon stops accepting.
  auto other = WeightdClient::Connect("unix:" + socket_, ConnectionOptions());
  ASSERT_TRUE(other.ok());
  ASSERT_TRUE((*other)->List().ok());
  ASSERT_TRUE(WaitFor([&] { return started.load(); }));
  kill(daemon.pid(), SIGTERM);
  // While the Load runs (and for 0.5 s after it), new calls are refused.
  absl::Status refused;
  EXPECT_TRUE(WaitFor([&] {
    refused = (*other)->List().status();
    return absl::StrContains(refused.message(), "shutting down");
  })) << refused;
  EXPECT_TRUE(absl::IsUnavailable(refused)) << refused;
  loader.join();
  EXPECT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(daemon.Stop(), 0);
  if (!model.ok())
    std::cerr << "weightd log:\n" << ReadFile(dir_ + "/weightd.log");
}

TEST_F(AccessTest, MalformedRequestsGetAClearStatus) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start(dir_, UnixFlags()));
  auto channel = OwnChannel("unix:" + socket_);
  grpc::GenericStub generic(channel);
  auto raw_call = [&](const std::string& method, const std::string& bytes) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    grpc::Slice slice(bytes);
    grpc::ByteBuffer request(&slice, 1);
    grpc::ByteBuffer response;
    grpc::Status status;
    Mutex mu;
    CondVar cv;
    bool done = false;
    generic.UnaryCall(&context, method, grpc::StubOptions(), &request,
                      &response, [&](grpc::Status s) {
                        MutexLock lock(&mu);
                        status = std::move(s);
                        done = true;
                        cv.SignalAll();
                      });
    MutexLock lock(&mu);
    while (!done) cv.Wait(&mu);
    return status;
  };
  grpc::Status garbage =
      raw_call("/weightd.v1.WeightService/Describe", "\xff\xff\xff\xff");
  EXPECT_EQ(garbage.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(garbage.error_message(), "Describe"))
      << garbage.error_message();
  grpc::Status unknown = raw_call("/weightd.v1.WeightService/Nope", "");
  EXPECT_EQ(unknown.error_code(), grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_TRUE(absl::StrContains(unknown.error_message(),
                                "/weightd.v1.WeightService/Nope"))
      << unknown.error_message();

  // 100 KB of path or model id: a short INVALID_ARGUMENT, not a lost reply.
  auto client = WeightdClient::Connect("unix:" + socket_, ConnectionOptions());
  ASSERT_TRUE(client.ok());
  ClientLoadOptions load;
  load.path = "/" + std::string(100000, 'p');
  auto long_path = (*client)->Load(load);
  EXPECT_EQ(long_path.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_LT(long_path.status().message().size(), 1024u);
  EXPECT_TRUE(absl::StrContains(long_path.status().message(), "bytes)"))
      << long_path.status().message().substr(0, 300);
  auto long_id = (*client)->Describe(std::string(100000, 'm'));
  EXPECT_EQ(long_id.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_LT(long_id.status().message().size(), 1024u);
  client->reset();
  EXPECT_EQ(daemon.Stop(), 0);
}

}  // namespace
}  // namespace weightd
