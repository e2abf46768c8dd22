#include "server/request_validation.h"

#include "absl/strings/str_cat.h"
#include "loader/cache/shard.h"

namespace weightd {
namespace {

namespace v1 = ::weightd::v1;

// The largest prefix length <= `limit` that does not split a UTF-8 sequence.
size_t Utf8Prefix(absl::string_view text, size_t limit) {
  if (limit >= text.size()) return text.size();
  size_t cut = limit;
  // Step back over continuation bytes (10xxxxxx) to a sequence start.
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80)
    --cut;
  return cut;
}

absl::Status CheckName(absl::string_view field, absl::string_view value,
                       size_t limit) {
  if (value.size() > limit) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " is ", value.size(), " bytes; the limit is ",
                     limit, ": \"", BoundForMessage(value), "\""));
  }
  if (value.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, " holds a NUL byte: \"", BoundForMessage(value), "\""));
  }
  return absl::OkStatus();
}

}  // namespace

std::string BoundForMessage(absl::string_view input) {
  if (input.size() <= kMaxEchoBytes) return std::string(input);
  return absl::StrCat(input.substr(0, Utf8Prefix(input, kMaxEchoBytes)), "...(",
                      input.size(), " bytes)");
}

std::string BoundStatusMessage(absl::string_view message) {
  if (message.size() <= kMaxStatusMessageBytes) return std::string(message);
  const size_t tail = kMaxStatusMessageBytes / 4;
  const size_t head = Utf8Prefix(message, kMaxStatusMessageBytes - tail);
  size_t tail_start = message.size() - tail;
  while (tail_start < message.size() &&
         (static_cast<unsigned char>(message[tail_start]) & 0xC0) == 0x80)
    ++tail_start;
  return absl::StrCat(message.substr(0, head), "...(", tail_start - head,
                      " bytes cut)...", message.substr(tail_start));
}

absl::Status ValidateLoadRequest(const v1::LoadRequest& request) {
  if (request.path().empty()) {
    return absl::InvalidArgumentError("LoadRequest.path is empty");
  }
  if (absl::Status path =
          CheckName("LoadRequest.path", request.path(), kMaxPathBytes);
      !path.ok()) {
    return path;
  }
  if (absl::Status session = CheckName("LoadRequest.lease_session",
                                       request.lease_session(), kMaxNameBytes);
      !session.ok()) {
    return session;
  }
  if (absl::Status dtype = CheckName("LoadRequest.cast_dtype",
                                     request.cast_dtype(), kMaxNameBytes);
      !dtype.ok()) {
    return dtype;
  }
  if (absl::Status target =
          CheckName("LoadRequest.placement.target",
                    request.placement().target(), kMaxNameBytes);
      !target.ok()) {
    return target;
  }
  for (const auto& [from, to] : request.placement().remap()) {
    if (absl::Status entry =
            CheckName("LoadRequest.placement.remap key", from, kMaxNameBytes);
        !entry.ok()) {
      return entry;
    }
    if (absl::Status entry =
            CheckName("LoadRequest.placement.remap value", to, kMaxNameBytes);
        !entry.ok()) {
      return entry;
    }
  }
  if (static_cast<size_t>(request.tensor_filter_size()) >
      kMaxTensorFilterEntries) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LoadRequest.tensor_filter has ", request.tensor_filter_size(),
        " entries; the limit is ", kMaxTensorFilterEntries));
  }
  for (const std::string& entry : request.tensor_filter()) {
    if (absl::Status name =
            CheckName("LoadRequest.tensor_filter entry", entry, kMaxNameBytes);
        !name.ok()) {
      return name;
    }
  }
  if (request.has_shard()) {
    const v1::ShardSpec& shard = request.shard();
    if (shard.world_size() <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("LoadRequest.shard.world_size is ", shard.world_size(),
                       "; give 1 or more (or no shard)"));
    }
    if (static_cast<size_t>(shard.rules_size()) > kMaxShardRules) {
      return absl::InvalidArgumentError(
          absl::StrCat("LoadRequest.shard.rules has ", shard.rules_size(),
                       " entries; the limit is ", kMaxShardRules));
    }
    for (const v1::ShardRule& rule : shard.rules()) {
      if (rule.pattern().empty()) {
        return absl::InvalidArgumentError(
            "LoadRequest.shard.rules pattern is empty");
      }
      if (absl::Status name = CheckName("LoadRequest.shard.rules pattern",
                                        rule.pattern(), kMaxShardPatternLength);
          !name.ok()) {
        return name;
      }
    }
    if (absl::Status name = CheckName("LoadRequest.shard.rule_set",
                                      shard.rule_set(), kMaxNameBytes);
        !name.ok()) {
      return name;
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateModelId(absl::string_view model_id) {
  if (model_id.empty()) return absl::InvalidArgumentError("model_id is empty");
  return CheckName("model_id", model_id, kMaxNameBytes);
}

absl::Status ValidateReadTensorsRequest(const v1::ReadTensorsRequest& request) {
  if (absl::Status id = ValidateModelId(request.model_id()); !id.ok()) {
    return id;
  }
  for (const std::string& name : request.names()) {
    if (absl::Status checked =
            CheckName("ReadTensorsRequest.names entry", name, kMaxNameBytes);
        !checked.ok()) {
      return checked;
    }
  }
  return absl::OkStatus();
}

namespace {

class UnknownMethodReactor : public grpc::ServerGenericBidiReactor {
 public:
  explicit UnknownMethodReactor(const std::string& method) {
    Finish(grpc::Status(
        grpc::StatusCode::UNIMPLEMENTED,
        absl::StrCat("weightd has no method \"", BoundForMessage(method),
                     "\" (its service is weightd.v1.WeightService)")));
  }
  void OnDone() override { delete this; }
};

}  // namespace

grpc::ServerGenericBidiReactor* UnknownMethodService::CreateReactor(
    grpc::GenericCallbackServerContext* context) {
  return new UnknownMethodReactor(context->method());
}

}  // namespace weightd
