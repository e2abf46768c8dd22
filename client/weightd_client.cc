#include "client/weightd_client.h"

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "loader/common/status_macros.h"
#include "loader/device/arena_handle.h"
#include "loader/device/shared_memory.h"
#include "loader/format/tensor_bytes.h"
#include "loader/io/mapped_file.h"

namespace weightd {

namespace v1 = ::weightd::v1;

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      status.error_message());
}

// The client's end of one Lease stream: opened on the client's first load and
// kept while it lasts; when it ends (the daemon restarted), the next load opens
// a new one.
class LeaseSession {
 public:
  static absl::StatusOr<std::shared_ptr<LeaseSession>> Open(
      v1::WeightService::Stub* stub) {
    auto session = std::shared_ptr<LeaseSession>(new LeaseSession());
    session->stream_ = stub->Lease(&session->context_);
    v1::LeaseEvent opened;
    if (!session->stream_->Read(&opened) ||
        opened.kind() != v1::LeaseEvent::OPENED) {
      return FromGrpcStatus(session->stream_->Finish());
    }
    session->id_ = opened.session_id();
    // Acknowledgements are not needed: loads lease atomically through
    // LoadRequest.
    session->reader_ = std::thread([raw = session.get()] {
      v1::LeaseEvent event;
      while (raw->stream_->Read(&event)) {
      }
      raw->ended_.store(true);
    });
    return session;
  }

  ~LeaseSession() {
    {
      MutexLock lock(&mu_);
      stream_->WritesDone();
    }
    reader_.join();
    (void)stream_->Finish();
  }

  const std::string& id() const { return id_; }
  // The stream ended: the daemon no longer knows the session.
  bool ended() const { return ended_.load(); }

  void Release(const std::string& model_id) {
    v1::LeaseRequest request;
    request.set_release_model_id(model_id);
    MutexLock lock(&mu_);
    stream_->Write(request);
  }

 private:
  LeaseSession() = default;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::LeaseRequest, v1::LeaseEvent>>
      stream_;
  std::string id_;
  std::thread reader_;
  std::atomic<bool> ended_{false};
  Mutex mu_;  // serializes writes
};

namespace {

// Host bytes owned by `owner` (a mapping that unmaps itself when released).
template <typename Mapping>
OpenedBuffer HostBuffer(std::unique_ptr<Mapping> mapping, uint64_t size) {
  static const uint8_t kEmpty = 0;  // a zero-byte buffer still needs an address
  OpenedBuffer buffer;
  buffer.host = mapping->data() != nullptr ? mapping->data() : &kEmpty;
  buffer.size = size;
  buffer.owner = std::shared_ptr<Mapping>(std::move(mapping));
  return buffer;
}

absl::StatusOr<OpenedBuffer> OpenFile(const v1::FileRegion& file) {
  ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> mapped,
                   MappedFile::Open(file.path()));
  const v1::FileIdentity& id = file.identity();
  const FileIdentity expected{id.device(), id.inode(), id.size(), id.mtime_ns(),
                              id.ctime_ns()};
  if (mapped->identity() != expected) {
    return absl::FailedPreconditionError(absl::StrCat(
        file.path(),
        " changed on disk since the daemon loaded it; load it again"));
  }
  return HostBuffer(std::move(mapped), id.size());
}

absl::StatusOr<OpenedBuffer> OpenSegment(const std::string& name,
                                         uint64_t size) {
  ASSIGN_OR_RETURN(std::unique_ptr<SharedMapping> mapping,
                   OpenSharedSegment(name, size));
  return HostBuffer(std::move(mapping), size);
}

// A GPU arena, opened by its handle kind alone.
absl::StatusOr<OpenedBuffer> OpenGpuArena(const v1::GpuArena& arena) {
  ArenaHandle handle;
  switch (arena.handle_kind()) {
    case v1::GpuArena::CUDA_IPC:
      handle.kind = ArenaHandleKind::kCudaIpc;
      break;
    case v1::GpuArena::SHARED_MEMORY:
      handle.kind = ArenaHandleKind::kSharedMemory;
      break;
    case v1::GpuArena::HANDLE_KIND_UNSPECIFIED:
      return absl::FailedPreconditionError(absl::StrCat(
          "the GPU arena on ", arena.gpu_uuid(),
          " names no handle kind (a weightd older than this client); "
          "upgrade the daemon"));
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "the GPU arena on ", arena.gpu_uuid(), " has handle kind ",
          static_cast<int>(arena.handle_kind()),
          ", which this client does not know; upgrade the client"));
  }
  ASSIGN_OR_RETURN(handle.bytes, IpcHandle::FromString(arena.ipc_handle()));
  ASSIGN_OR_RETURN(std::unique_ptr<OpenedArena> opened,
                   OpenArenaHandle(handle, arena.size(), arena.gpu_uuid()));
  OpenedBuffer buffer;
  buffer.host = opened->host_data();
  buffer.device = opened->device_pointer();
  buffer.size = arena.size();
  buffer.arena = opened.get();
  buffer.owner = std::shared_ptr<OpenedArena>(std::move(opened));
  return buffer;
}

}  // namespace

ClientModel::~ClientModel() {
  MutexLock lock(&mu_);
  opened_.clear();  // unmaps files and segments, closes IPC handles
  if (lease_ != nullptr) lease_->Release(description_.model_id());
}

absl::StatusOr<OpenedBuffer*> ClientModel::Buffer(int index) {
  if (index < 0 || index >= description_.buffers_size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor has no bytes (buffer ", index, ")"));
  }
  MutexLock lock(&mu_);
  auto it = opened_.find(index);
  if (it != opened_.end()) return &it->second;
  const v1::Buffer& buffer = description_.buffers(index);
  absl::StatusOr<OpenedBuffer> opened;
  switch (buffer.kind_case()) {
    case v1::Buffer::kFile:
      opened = OpenFile(buffer.file());
      break;
    case v1::Buffer::kSharedMemory:
      opened = OpenSegment(buffer.shared_memory().name(),
                           buffer.shared_memory().size());
      break;
    case v1::Buffer::kGpu:
      opened = OpenGpuArena(buffer.gpu());
      break;
    default:
      opened = absl::InvalidArgumentError("buffer of unknown kind");
  }
  if (!opened.ok()) return opened.status();
  return &opened_.emplace(index, *std::move(opened)).first->second;
}

absl::StatusOr<const uint8_t*> ClientModel::HostStorage(
    const v1::Tensor& tensor) {
  ASSIGN_OR_RETURN(OpenedBuffer * buffer, Buffer(tensor.buffer_index()));
  if (buffer->host == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("tensor ", tensor.name(), " lives on a GPU"));
  }
  return buffer->host + tensor.storage_byte_offset();
}

absl::StatusOr<TensorInfo> TensorInfoFromProto(const v1::Tensor& tensor) {
  TensorInfo info;
  info.name = tensor.name();
  ASSIGN_OR_RETURN(info.dtype, DTypeFromName(tensor.dtype()));
  info.shape.assign(tensor.shape().begin(), tensor.shape().end());
  info.stride.assign(tensor.stride().begin(), tensor.stride().end());
  info.storage_offset = tensor.storage_offset();
  return info;
}

absl::StatusOr<std::string> ClientModel::ReadTensorBytes(
    const v1::Tensor& tensor) {
  ASSIGN_OR_RETURN(TensorInfo info, TensorInfoFromProto(tensor));
  uint64_t extent = info.ExtentBytes();
  ASSIGN_OR_RETURN(OpenedBuffer * buffer, Buffer(tensor.buffer_index()));
  if (tensor.storage_byte_offset() > buffer->size ||
      extent > buffer->size - tensor.storage_byte_offset()) {
    return absl::OutOfRangeError(
        absl::StrCat("tensor ", tensor.name(), " extends past its buffer"));
  }
  std::string storage_copy;
  const uint8_t* storage = nullptr;
  if (buffer->host != nullptr) {
    storage = buffer->host + tensor.storage_byte_offset();
  } else {
    // Device memory: copied out by the arena that opened it.
    storage_copy.resize(extent);
    RETURN_IF_ERROR(buffer->arena->CopyToHost(tensor.storage_byte_offset(),
                                              extent, storage_copy.data()));
    storage = reinterpret_cast<const uint8_t*>(storage_copy.data());
  }
  std::string out;
  RETURN_IF_ERROR(
      GatherTensorBytes(info, storage, extent, ByteOrder::kLittle, &out));
  return out;
}

WeightdClient::~WeightdClient() = default;

namespace {

absl::StatusOr<std::string> ReadClientFile(const char* what,
                                           const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot read ", what, " ", path, ": ", std::strerror(errno)));
  }
  std::stringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

std::string EnvOrEmpty(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr ? value : "";
}

// Sends the token on every call.
class BearerToken : public grpc::MetadataCredentialsPlugin {
 public:
  explicit BearerToken(std::string token) : token_(std::move(token)) {}
  grpc::Status GetMetadata(
      grpc::string_ref service_url, grpc::string_ref method_name,
      const grpc::AuthContext& channel_auth_context,
      std::multimap<grpc::string, grpc::string>* metadata) override {
    metadata->insert(std::make_pair("authorization", "Bearer " + token_));
    return grpc::Status::OK;
  }
  bool IsBlocking() const override { return false; }

 private:
  const std::string token_;
};

}  // namespace

ConnectionOptions ConnectionOptions::FromEnvironment() {
  ConnectionOptions options;
  options.tls_ca_file = EnvOrEmpty("WEIGHTD_TLS_CA_FILE");
  options.tls_cert_file = EnvOrEmpty("WEIGHTD_TLS_CERT_FILE");
  options.tls_key_file = EnvOrEmpty("WEIGHTD_TLS_KEY_FILE");
  options.token_file = EnvOrEmpty("WEIGHTD_TOKEN_FILE");
  return options;
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateWeightdChannel(
    const std::string& address, const ConnectionOptions& options) {
  grpc::ChannelArguments arguments;
  arguments.SetMaxReceiveMessageSize(-1);
  // Notice a vanished daemon while a call (the Lease stream) is open; slower
  // than the daemon's ping policy allows (one per 10 s while calls are open,
  // none without), so it never answers GOAWAY too_many_pings.
  arguments.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  arguments.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  arguments.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
  arguments.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  std::shared_ptr<grpc::ChannelCredentials> credentials =
      grpc::InsecureChannelCredentials();
  const bool unix_socket = address.rfind("unix:", 0) == 0;
  const bool tls = !options.tls_ca_file.empty() ||
                   !options.tls_cert_file.empty() ||
                   !options.tls_key_file.empty();
  if (!unix_socket && tls) {
    grpc::SslCredentialsOptions ssl;
    if (!options.tls_ca_file.empty()) {
      ASSIGN_OR_RETURN(ssl.pem_root_certs,
                       ReadClientFile("TLS CA file", options.tls_ca_file));
    }
    if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
      return absl::InvalidArgumentError(
          "a TLS client certificate and its key go together (--tls_cert_file "
          "and --tls_key_file)");
    }
    if (!options.tls_cert_file.empty()) {
      ASSIGN_OR_RETURN(
          ssl.pem_cert_chain,
          ReadClientFile("TLS certificate", options.tls_cert_file));
      ASSIGN_OR_RETURN(ssl.pem_private_key,
                       ReadClientFile("TLS key", options.tls_key_file));
    }
    credentials = grpc::SslCredentials(ssl);
  }
  if (!unix_socket && !options.token_file.empty()) {
    if (!tls) {
      return absl::InvalidArgumentError(
          absl::StrCat("refusing to send the token to ", address,
                       " in plaintext: give the daemon's CA (--tls_ca_file or "
                       "$WEIGHTD_TLS_CA_FILE)"));
    }
    ASSIGN_OR_RETURN(std::string token,
                     ReadClientFile("token file", options.token_file));
    token = std::string(absl::StripAsciiWhitespace(token));
    if (token.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("token file ", options.token_file, " is empty"));
    }
    credentials = grpc::CompositeChannelCredentials(
        credentials, grpc::MetadataCredentialsFromPlugin(
                         std::make_unique<BearerToken>(std::move(token))));
  }
  return grpc::CreateCustomChannel(address, credentials, arguments);
}

absl::StatusOr<std::unique_ptr<WeightdClient>> WeightdClient::Connect(
    const std::string& address) {
  return Connect(address, ConnectionOptions::FromEnvironment());
}

absl::StatusOr<std::unique_ptr<WeightdClient>> WeightdClient::Connect(
    const std::string& address, const ConnectionOptions& options) {
  auto client = std::unique_ptr<WeightdClient>(new WeightdClient());
  client->address_ = address;
  ASSIGN_OR_RETURN(client->channel_, CreateWeightdChannel(address, options));
  if (!client->channel_->WaitForConnected(std::chrono::system_clock::now() +
                                          std::chrono::seconds(10))) {
    return absl::UnavailableError(
        absl::StrCat("cannot connect to weightd at ", address,
                     " (for TLS on TCP: is the CA right, or is the daemon "
                     "plaintext?)"));
  }
  client->stub_ = v1::WeightService::NewStub(client->channel_);
  return client;
}

absl::StatusOr<std::shared_ptr<LeaseSession>> WeightdClient::Session() {
  MutexLock lock(&mu_);
  // Models loaded on an ended session keep it (and its stream) alive until
  // they go.
  if (session_ == nullptr || session_->ended()) {
    ASSIGN_OR_RETURN(session_, LeaseSession::Open(stub_.get()));
  }
  return session_;
}

absl::StatusOr<std::unique_ptr<ClientModel>> WeightdClient::Load(
    const ClientLoadOptions& options,
    const std::function<void(uint64_t, uint64_t)>& progress) {
  ASSIGN_OR_RETURN(std::shared_ptr<LeaseSession> session, Session());
  v1::LoadRequest request;
  // The daemon resolves paths in its own working directory: send an absolute
  // one.
  request.set_path(options.path.empty() || options.path[0] == '/'
                       ? options.path
                       : std::filesystem::absolute(options.path)
                             .lexically_normal()
                             .string());
  request.set_format_hint(options.format_hint);
  request.mutable_placement()->set_target(options.device);
  for (const auto& [from, to] : options.remap) {
    (*request.mutable_placement()->mutable_remap())[from] = to;
  }
  request.set_cast_dtype(options.cast_dtype);
  request.set_host_copy(options.host_copy);
  if (options.shard) *request.mutable_shard() = *options.shard;
  for (const std::string& name : options.filter)
    request.add_tensor_filter(name);
  request.set_lease_session(session->id());
  grpc::ClientContext context;
  auto reader = stub_->Load(&context, request);
  auto model = std::unique_ptr<ClientModel>(new ClientModel());
  bool got_model = false;
  v1::LoadEvent event;
  while (reader->Read(&event)) {
    if (event.has_progress()) {
      if (progress)
        progress(event.progress().bytes_done(), event.progress().bytes_total());
    } else if (event.has_model()) {
      model->description_ = std::move(*event.mutable_model());
      got_model = true;
    }
  }
  RETURN_IF_ERROR(FromGrpcStatus(reader->Finish()));
  if (!got_model)
    return absl::InternalError("the daemon ended Load without a model");
  model->lease_ = session;
  return model;
}

absl::StatusOr<v1::ListResponse> WeightdClient::List() {
  grpc::ClientContext context;
  v1::ListResponse response;
  RETURN_IF_ERROR(
      FromGrpcStatus(stub_->List(&context, v1::ListRequest(), &response)));
  return response;
}

absl::StatusOr<v1::ModelDescription> WeightdClient::Describe(
    const std::string& model_id) {
  grpc::ClientContext context;
  v1::DescribeRequest request;
  request.set_model_id(model_id);
  v1::ModelDescription response;
  RETURN_IF_ERROR(
      FromGrpcStatus(stub_->Describe(&context, request, &response)));
  return response;
}

absl::StatusOr<v1::UnloadResponse> WeightdClient::Unload(
    const std::string& model_id, bool force) {
  grpc::ClientContext context;
  v1::UnloadRequest request;
  request.set_model_id(model_id);
  request.set_force(force);
  v1::UnloadResponse response;
  RETURN_IF_ERROR(FromGrpcStatus(stub_->Unload(&context, request, &response)));
  return response;
}

absl::StatusOr<v1::StatsResponse> WeightdClient::Stats() {
  grpc::ClientContext context;
  v1::StatsResponse response;
  RETURN_IF_ERROR(
      FromGrpcStatus(stub_->Stats(&context, v1::StatsRequest(), &response)));
  return response;
}

absl::StatusOr<v1::ServerInfoResponse> WeightdClient::ServerInfo() {
  grpc::ClientContext context;
  v1::ServerInfoResponse response;
  RETURN_IF_ERROR(FromGrpcStatus(
      stub_->ServerInfo(&context, v1::ServerInfoRequest(), &response)));
  return response;
}

absl::Status WeightdClient::ReadTensors(
    const std::string& model_id, const std::vector<std::string>& names,
    const std::function<absl::Status(const v1::Tensor&, std::string)>&
        on_tensor) {
  std::string bytes;
  return StreamTensors(model_id, names,
                       [&](const v1::Tensor& tensor, uint64_t offset,
                           absl::string_view data, bool last) -> absl::Status {
                         if (offset == 0) {
                           bytes.clear();
                           bytes.reserve(tensor.byte_size());
                         }
                         bytes.append(data.data(), data.size());
                         if (last) return on_tensor(tensor, std::move(bytes));
                         return absl::OkStatus();
                       });
}

absl::Status WeightdClient::StreamTensors(
    const std::string& model_id, const std::vector<std::string>& names,
    const std::function<absl::Status(const v1::Tensor&, uint64_t,
                                     absl::string_view, bool)>& on_chunk) {
  grpc::ClientContext context;
  v1::ReadTensorsRequest request;
  request.set_model_id(model_id);
  for (const std::string& name : names) request.add_names(name);
  auto reader = stub_->ReadTensors(&context, request);
  v1::TensorChunk chunk;
  v1::Tensor current;
  bool inside = false;  // a tensor began and its last chunk has not come
  uint64_t received = 0;
  absl::Status callback_status;
  while (callback_status.ok() && reader->Read(&chunk)) {
    if (chunk.has_tensor()) {
      current = chunk.tensor();
      received = 0;
      inside = true;
    }
    if (!inside || chunk.offset() != received) {
      callback_status = absl::DataLossError("ReadTensors chunk out of order");
      break;
    }
    received += chunk.data().size();
    if (chunk.last()) inside = false;
    callback_status =
        on_chunk(current, chunk.offset(), chunk.data(), chunk.last());
  }
  if (!callback_status.ok()) {
    context.TryCancel();
    (void)reader->Finish();
    return callback_status;
  }
  RETURN_IF_ERROR(FromGrpcStatus(reader->Finish()));
  if (inside) {
    return absl::DataLossError(absl::StrCat(
        "ReadTensors ended inside tensor \"", current.name(), "\""));
  }
  return absl::OkStatus();
}

}  // namespace weightd
