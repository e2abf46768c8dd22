// The C++ client: connect to weightd, load models (with progress), hold leases,
// and reach tensor bytes: host tensors by mapping the checkpoint file or a
// shared-memory segment, GPU tensors by opening each arena once by its handle
// kind (OpenArenaHandle: CUDA IPC, or shared memory for the fake GPU).
#ifndef WEIGHTD_CLIENT_WEIGHTD_CLIENT_H_
#define WEIGHTD_CLIENT_WEIGHTD_CLIENT_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "loader/common/mutex.h"
#include "loader/format/checkpoint.h"
#include "proto/weightd/v1/weightd.grpc.pb.h"

namespace weightd {

class LeaseSession;

class OpenedArena;

// One opened buffer of a model: host bytes (mapped file, segment, or a
// shared-memory GPU arena) or a device pointer.
struct OpenedBuffer {
  // Readable by this process; null for an arena in device memory.
  const uint8_t* host = nullptr;
  void* device = nullptr;  // CUDA device pointer in this process (CUDA IPC)
  uint64_t size = 0;
  const OpenedArena* arena = nullptr;  // GPU arenas: what opened it (in owner)
  std::shared_ptr<void> owner;  // releasing it unmaps or closes the buffer
};

class ClientModel {
 public:
  ~ClientModel();
  const weightd::v1::ModelDescription& description() const {
    return description_;
  }
  const std::string& model_id() const { return description_.model_id(); }

  // The tensor's elements, row-major, little-endian (a copy; from the GPU for
  // GPU tensors).
  absl::StatusOr<std::string> ReadTensorBytes(
      const weightd::v1::Tensor& tensor);
  // Where the tensor's storage starts in this process: host pointer or device
  // pointer.
  absl::StatusOr<const uint8_t*> HostStorage(const weightd::v1::Tensor& tensor);

 private:
  friend class WeightdClient;
  ClientModel() = default;
  absl::StatusOr<OpenedBuffer*> Buffer(int index);

  weightd::v1::ModelDescription description_;
  std::shared_ptr<LeaseSession> lease_;
  Mutex mu_;
  std::map<int, OpenedBuffer> opened_ ABSL_GUARDED_BY(mu_);
};

struct ClientLoadOptions {
  std::string path;
  std::string device;  // "cpu", "cuda:0", "meta", "" (keep saved locations)
  std::map<std::string, std::string> remap;
  std::string cast_dtype;
  std::vector<std::string> filter;
  std::string format_hint;
  // Host storages copied into daemon-owned shared memory instead of views of
  // the checkpoint file (a view of a file truncated under it raises SIGBUS
  // when read).
  bool host_copy = false;
  // Tensor parallelism: this rank's slices (LoadRequest.shard); unset: whole.
  std::optional<weightd::v1::ShardSpec> shard;
};

// How to reach a TCP daemon: TLS (server verified against tls_ca_file; a
// client certificate for mTLS) and a bearer token sent as `authorization:
// Bearer <token>` metadata. Unix sockets need none of it (the daemon knows
// its Unix peers by their uid) and ignore it.
struct ConnectionOptions {
  std::string tls_ca_file;    // PEM; TLS when set (or a cert is set)
  std::string tls_cert_file;  // PEM client certificate chain (mTLS)
  std::string tls_key_file;   // PEM client key (mTLS)
  std::string token_file;     // one line: the daemon's --auth_token_file

  // $WEIGHTD_TLS_CA_FILE, $WEIGHTD_TLS_CERT_FILE, $WEIGHTD_TLS_KEY_FILE and
  // $WEIGHTD_TOKEN_FILE.
  static ConnectionOptions FromEnvironment();
};

// A channel to the daemon at `address` with `options`' credentials and
// keepalive settings the daemon's ping policy accepts. A token without TLS on
// TCP is refused (it would travel in plaintext).
absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateWeightdChannel(
    const std::string& address, const ConnectionOptions& options);

class WeightdClient {
 public:
  // Connects with ConnectionOptions::FromEnvironment().
  static absl::StatusOr<std::unique_ptr<WeightdClient>> Connect(
      const std::string& address);
  static absl::StatusOr<std::unique_ptr<WeightdClient>> Connect(
      const std::string& address, const ConnectionOptions& options);
  ~WeightdClient();

  // Loads through the daemon and leases the model for as long as the
  // ClientModel lives.
  absl::StatusOr<std::unique_ptr<ClientModel>> Load(
      const ClientLoadOptions& options,
      const std::function<void(uint64_t done, uint64_t total)>& progress =
          nullptr);

  absl::StatusOr<weightd::v1::ListResponse> List();
  absl::StatusOr<weightd::v1::ModelDescription> Describe(
      const std::string& model_id);
  absl::StatusOr<weightd::v1::UnloadResponse> Unload(
      const std::string& model_id, bool force);
  absl::StatusOr<weightd::v1::StatsResponse> Stats();
  absl::StatusOr<weightd::v1::ServerInfoResponse> ServerInfo();
  // Streams tensors over the wire; `on_tensor` gets each tensor and its full
  // bytes.
  absl::Status ReadTensors(
      const std::string& model_id, const std::vector<std::string>& names,
      const std::function<absl::Status(const weightd::v1::Tensor&,
                                       std::string bytes)>& on_tensor);
  // Streams tensors chunk by chunk with one chunk in memory: `on_chunk` gets
  // each chunk's tensor (the one its first chunk described), the chunk's
  // offset into that tensor's bytes and its data, in order; a chunk out of
  // order, or a stream that ends inside a tensor, is DATA_LOSS. An error from
  // `on_chunk` cancels the stream and is returned.
  absl::Status StreamTensors(
      const std::string& model_id, const std::vector<std::string>& names,
      const std::function<absl::Status(const weightd::v1::Tensor& tensor,
                                       uint64_t offset, absl::string_view data,
                                       bool last)>& on_chunk);

  weightd::v1::WeightService::Stub* stub() { return stub_.get(); }

 private:
  WeightdClient() = default;
  absl::StatusOr<std::shared_ptr<LeaseSession>> Session();

  std::string address_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<weightd::v1::WeightService::Stub> stub_;
  Mutex mu_;
  std::shared_ptr<LeaseSession> session_ ABSL_GUARDED_BY(mu_);
};

// The view a described tensor has (name, dtype, shape, stride, storage offset).
absl::StatusOr<TensorInfo> TensorInfoFromProto(
    const weightd::v1::Tensor& tensor);

// grpc::Status -> absl::Status, prefixed with what was being done.
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace weightd

#endif  // WEIGHTD_CLIENT_WEIGHTD_CLIENT_H_
