// Fuzzes request handling: a LoadRequest as it arrives on the wire, through
// validation, the proto mapping, canonical placement and planning over a
// checkpoint with storages on every kind of saved location. No request may
// crash the daemon, and a plan must only name what the checkpoint has. The
// description the request asks for (compact_description: the packed table)
// must say exactly what the repeated Tensor messages say, for the planned
// tensors and for tensors with the request's hostile names and numbers.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "loader/cache/load_plan.h"
#include "loader/cache/loaded_model.h"
#include "proto/weightd/v1/weightd.pb.h"
#include "server/proto_mapping.h"
#include "server/request_validation.h"

namespace {

using weightd::Checkpoint;
using weightd::DType;
using weightd::GpuDescription;

const std::vector<GpuDescription>& Gpus() {
  static const auto* gpus = [] {
    auto* list = new std::vector<GpuDescription>(2);
    (*list)[0].index = 0;
    (*list)[0].uuid = "GPU-00000000-0000-0000-0000-000000000000";
    (*list)[1].index = 1;
    (*list)[1].uuid = "GPU-11111111-1111-1111-1111-111111111111";
    return list;
  }();
  return *gpus;
}

const Checkpoint& Sample() {
  static const Checkpoint* checkpoint = [] {
    auto* c = new Checkpoint();
    const char* locations[] = {"cpu", "cuda:0", "cuda:1", "cuda:7", "mps", ""};
    const DType dtypes[] = {DType::kFloat32, DType::kBFloat16, DType::kInt64,
                            DType::kFloat16, DType::kFloat64,  DType::kUInt8};
    for (int i = 0; i < 6; ++i) {
      weightd::StorageInfo storage;
      storage.key = std::to_string(i);
      storage.location = locations[i];
      storage.dtype = dtypes[i];
      storage.num_bytes = 64u * weightd::DTypeSize(dtypes[i]);
      storage.file_offset = 4096u * i;
      storage.byte_order =
          i == 3 ? weightd::ByteOrder::kBig : weightd::ByteOrder::kLittle;
      c->storages.push_back(storage);
      for (int j = 0; j < 2; ++j) {
        weightd::TensorInfo tensor;
        tensor.name = "layers." + std::to_string(i) + (j ? ".bias" : ".weight");
        tensor.dtype = dtypes[i];
        tensor.shape = {8, 8};
        tensor.stride = {8, 1};
        tensor.storage_index = i;
        c->tensors.push_back(tensor);
      }
    }
    return c;
  }();
  return *checkpoint;
}

void Check(bool condition) {
  if (!condition) std::abort();
}

// Little-endian reads at `at` of the packed table, bounds checked.
uint64_t Le(const std::string& data, size_t at, int bytes) {
  Check(at + bytes <= data.size());
  uint64_t value = 0;
  for (int i = bytes - 1; i >= 0; --i)
    value = (value << 8) | static_cast<uint8_t>(data[at + i]);
  return value;
}

// The packed table decoded as weightd.proto documents it, one Tensor each.
std::vector<weightd::v1::Tensor> Unpack(
    const weightd::v1::ModelDescription& d) {
  const std::string& data = d.packed_tensors();
  Check(Le(data, 0, 4) == 1);  // version
  const uint64_t record = Le(data, 4, 4);
  const uint64_t count = Le(data, 8, 4);
  const uint64_t dims = Le(data, 12, 4);
  Check(record >= 48);
  Check(data.size() == 16 + count * record + dims * 16);
  std::vector<std::string> names = count == 0
                                       ? std::vector<std::string>()
                                       : absl::StrSplit(d.packed_names(), '\0');
  Check(names.size() == count);
  auto text = [&](uint64_t index) {
    Check(index < static_cast<uint64_t>(d.packed_strings_size()));
    return d.packed_strings(static_cast<int>(index));
  };
  std::vector<weightd::v1::Tensor> out(count);
  size_t dim = 0;
  const size_t sizes_at = 16 + count * record;
  for (size_t i = 0; i < count; ++i) {
    const size_t at = 16 + i * record;
    weightd::v1::Tensor& t = out[i];
    t.set_name(names[i]);
    t.set_dtype(text(Le(data, at, 4)));
    t.set_saved_location(text(Le(data, at + 4, 4)));
    t.set_placed_location(text(Le(data, at + 8, 4)));
    t.set_buffer_index(static_cast<int32_t>(Le(data, at + 12, 4)));
    const uint64_t ndim = Le(data, at + 16, 4);
    t.set_requires_grad((Le(data, at + 20, 4) & 1) != 0);
    t.set_storage_offset(static_cast<int64_t>(Le(data, at + 24, 8)));
    t.set_storage_byte_offset(Le(data, at + 32, 8));
    t.set_byte_size(Le(data, at + 40, 8));
    for (uint64_t k = 0; k < ndim; ++k, ++dim) {
      Check(dim < dims);
      t.add_shape(static_cast<int64_t>(Le(data, sizes_at + dim * 8, 8)));
      t.add_stride(
          static_cast<int64_t>(Le(data, sizes_at + (dims + dim) * 8, 8)));
    }
  }
  Check(dim == dims);
  return out;
}

// FillModelDescription in the form `request` asks for: the packed table (or,
// where it cannot pack, the repeated form) equal to the repeated form's
// Tensor messages, field by field, in order.
void CheckDescriptionForms(const weightd::v1::LoadRequest& request,
                           const std::vector<weightd::PlacedTensor>& tensors) {
  weightd::LoadedModel model;
  model.path = request.path();
  model.tensors = tensors;
  weightd::v1::ModelDescription repeated;
  weightd::FillModelDescription("m1", model, nullptr,
                                weightd::TensorListForm::kRepeated, &repeated);
  Check(repeated.tensors_size() == static_cast<int>(tensors.size()));
  Check(repeated.packed_tensors().empty() && repeated.packed_names().empty() &&
        repeated.packed_strings_size() == 0);
  if (!request.compact_description()) return;
  weightd::v1::ModelDescription compact;
  weightd::FillModelDescription("m1", model, nullptr,
                                weightd::TensorListForm::kCompact, &compact);
  bool packable = true;
  for (const weightd::PlacedTensor& t : tensors) {
    packable = packable && t.info.name.find('\0') == std::string::npos &&
               t.info.stride.size() == t.info.shape.size();
  }
  if (!packable) {  // the repeated form, with no half-written table
    Check(compact.SerializeAsString() == repeated.SerializeAsString());
    return;
  }
  Check(compact.tensors_size() == 0);
  const std::vector<weightd::v1::Tensor> unpacked = Unpack(compact);
  Check(unpacked.size() == tensors.size());
  for (size_t i = 0; i < unpacked.size(); ++i) {
    Check(unpacked[i].SerializeAsString() ==
          repeated.tensors(static_cast<int>(i)).SerializeAsString());
  }
  compact.clear_packed_tensors();
  compact.clear_packed_names();
  compact.clear_packed_strings();
  repeated.clear_tensors();
  Check(compact.SerializeAsString() == repeated.SerializeAsString());
}

// Tensors whose names and numbers come from the request: its filter entries
// and shard rules (any bytes, NULs included; any ints, stride lists of the
// wrong length).
std::vector<weightd::PlacedTensor> HostileTensors(
    const weightd::v1::LoadRequest& request) {
  std::vector<weightd::PlacedTensor> out;
  const std::string locations[] = {request.placement().target(),
                                   request.cast_dtype(), request.path()};
  int i = 0;
  for (const std::string& name : request.tensor_filter()) {
    weightd::PlacedTensor t;
    t.info.name = name;
    t.info.dtype = static_cast<DType>(i % 6);
    t.info.shape = {static_cast<int64_t>(name.size()), i};
    t.info.stride = {i, 1};
    t.saved_location = locations[i % 3];
    t.placed_location = locations[(i + 1) % 3];
    t.buffer_index = i % 3 - 1;
    out.push_back(std::move(t));
    ++i;
  }
  for (const weightd::v1::ShardRule& rule : request.shard().rules()) {
    weightd::PlacedTensor t;
    t.info.name = rule.pattern();
    t.info.shape = {rule.dim(), request.shard().world_size()};
    t.info.stride.assign(static_cast<size_t>(rule.dim() & 3), rule.dim());
    t.info.storage_offset = -static_cast<int64_t>(request.shard().rank());
    t.info.requires_grad = (rule.dim() & 4) != 0;
    t.buffer_index = rule.dim();
    t.storage_byte_offset = static_cast<uint64_t>(rule.dim()) << 40;
    t.byte_size = ~static_cast<uint64_t>(request.shard().rank());
    t.saved_location = rule.pattern();
    out.push_back(std::move(t));
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  weightd::v1::LoadRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  const absl::Status valid = weightd::ValidateLoadRequest(request);
  Check(weightd::BoundForMessage(request.path()).size() <=
        weightd::kMaxEchoBytes + 32);
  Check(weightd::ToGrpcStatus(valid).error_message().size() <=
        weightd::kMaxStatusMessageBytes + 64);
  const weightd::LoadSpec spec = weightd::SpecFromRequest(request);
  auto placement = weightd::CanonicalPlacement(spec, Gpus());
  if (!placement.ok()) return 0;
  // Canonical means idempotent: the canonical form, asked for again, is
  // itself.
  weightd::LoadSpec again;
  again.path = spec.path;
  if (placement->map.kind == weightd::MapLocation::Kind::kAll ||
      placement->map.kind == weightd::MapLocation::Kind::kMeta) {
    again.target = placement->map.target;
  }
  for (const auto& [from, to] : placement->map.remap) again.remap[from] = to;
  if (placement->cast)
    again.cast_dtype = std::string(weightd::DTypeName(*placement->cast));
  again.filter = placement->filter;
  again.host_copy = placement->host_copy;
  again.shard.rank = placement->shard.rank;
  again.shard.world_size = placement->shard.world_size;
  again.shard.rules = placement->shard.rules;  // the rule set expanded
  auto canonical_again = weightd::CanonicalPlacement(again, Gpus());
  Check(canonical_again.ok() && canonical_again->Key() == placement->Key());
  // ... and so is that form sent as a request over the wire, which keeps the
  // description form the original asked for.
  weightd::v1::LoadRequest resent;
  resent.set_path(again.path);
  resent.mutable_placement()->set_target(again.target);
  for (const auto& [from, to] : again.remap)
    (*resent.mutable_placement()->mutable_remap())[from] = to;
  resent.set_cast_dtype(again.cast_dtype);
  for (const std::string& entry : again.filter) resent.add_tensor_filter(entry);
  resent.set_host_copy(again.host_copy);
  if (again.shard.enabled()) {
    resent.mutable_shard()->set_rank(again.shard.rank);
    resent.mutable_shard()->set_world_size(again.shard.world_size);
    for (const auto& [pattern, dim] : again.shard.rules) {
      weightd::v1::ShardRule* rule = resent.mutable_shard()->add_rules();
      rule->set_pattern(pattern);
      rule->set_dim(dim);
    }
  }
  resent.set_compact_description(request.compact_description());
  weightd::v1::LoadRequest received;
  Check(received.ParseFromString(resent.SerializeAsString()));
  Check(received.compact_description() == request.compact_description());
  auto canonical_resent =
      weightd::CanonicalPlacement(weightd::SpecFromRequest(received), Gpus());
  Check(canonical_resent.ok() && canonical_resent->Key() == placement->Key());
  CheckDescriptionForms(received, HostileTensors(request));
  auto plan = weightd::PlanLoad(*placement, Sample(), Gpus(), spec.path);
  if (!plan.ok()) return 0;
  const Checkpoint& checkpoint = Sample();
  for (size_t t : plan->tensors) Check(t < checkpoint.tensors.size());
  uint64_t total = 0;
  size_t previous = 0;
  for (size_t i = 0; i < plan->storages.size(); ++i) {
    const weightd::PlannedStorage& s = plan->storages[i];
    Check(s.index < checkpoint.storages.size());
    Check(i == 0 || s.index > previous);  // sorted, unique
    previous = s.index;
    Check(plan->ForStorage(s.index) == &s);
    if (s.target.kind == weightd::StorageTarget::Kind::kGpu)
      Check(s.target.gpu >= 0 && s.target.gpu < 2);
    if (s.target.kind != weightd::StorageTarget::Kind::kMeta)
      total += s.placed_bytes;
  }
  for (const weightd::PlannedSlice& s : plan->slices) {
    Check(plan->ForTensor(s.tensor) == &s);
    if (s.target.kind != weightd::StorageTarget::Kind::kMeta)
      total += s.placed_bytes;
  }
  Check(total == plan->bytes_total);
  for (const auto& [tier, bytes] : plan->expected) Check(bytes > 0);
  // The planned tensors as a load places them, described.
  std::vector<weightd::PlacedTensor> placed;
  for (size_t t : plan->tensors) {
    weightd::PlacedTensor p;
    p.info = checkpoint.tensors[t];
    if (placement->cast) p.info.dtype = *placement->cast;
    const weightd::PlannedStorage* s = plan->ForStorage(p.info.storage_index);
    p.saved_location = checkpoint.storages[p.info.storage_index].location;
    const bool meta =
        s == nullptr || s->target.kind == weightd::StorageTarget::Kind::kMeta;
    p.placed_location = meta ? "meta" : s->target.Name();
    p.buffer_index = meta ? -1 : static_cast<int>(p.info.storage_index);
    p.storage_byte_offset =
        checkpoint.storages[p.info.storage_index].file_offset;
    p.byte_size = static_cast<uint64_t>(p.info.NumElements()) *
                  weightd::DTypeSize(p.info.dtype);
    placed.push_back(std::move(p));
  }
  CheckDescriptionForms(request, placed);
  return 0;
}
