// Request checks that run before a request reaches the cache, and the bound on
// request input echoed in error messages: a 100 KB path echoed whole would
// push the reply's status past gRPC's metadata limit and the client would see
// a useless error instead.
#ifndef WEIGHTD_SERVER_REQUEST_VALIDATION_H_
#define WEIGHTD_SERVER_REQUEST_VALIDATION_H_

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "proto/weightd/v1/weightd.pb.h"

namespace weightd {

// Echoed request strings keep at most this many bytes.
inline constexpr size_t kMaxEchoBytes = 256;
// Whole status messages keep at most this many bytes (head and tail).
inline constexpr size_t kMaxStatusMessageBytes = 2048;
// Longest accepted path, model id, tensor name, dtype or session id.
inline constexpr size_t kMaxPathBytes = 4096;
inline constexpr size_t kMaxNameBytes = 1024;
inline constexpr size_t kMaxTensorFilterEntries = 1 << 16;

// `input` as it may appear in a message: whole when short, else its first
// kMaxEchoBytes bytes (cut on a UTF-8 boundary) plus "...(N bytes)".
std::string BoundForMessage(absl::string_view input);

// A status message cut to kMaxStatusMessageBytes, keeping its start (what
// failed) and its end (why), for messages built deeper in the daemon.
std::string BoundStatusMessage(absl::string_view message);

// INVALID_ARGUMENT naming the field for an empty, oversized or NUL-holding
// path and for oversized names; OK otherwise. format_hint is not checked here.
absl::Status ValidateLoadRequest(const weightd::v1::LoadRequest& request);
absl::Status ValidateModelId(absl::string_view model_id);
absl::Status ValidateReadTensorsRequest(
    const weightd::v1::ReadTensorsRequest& request);

// Answers calls to methods the daemon does not have: UNIMPLEMENTED naming the
// method (gRPC's own answer carries no message).
class UnknownMethodService : public grpc::CallbackGenericService {
 public:
  grpc::ServerGenericBidiReactor* CreateReactor(
      grpc::GenericCallbackServerContext* context) override;
};

}  // namespace weightd

#endif  // WEIGHTD_SERVER_REQUEST_VALIDATION_H_
