// Fuzzes request handling: a LoadRequest as it arrives on the wire, through
// validation, the proto mapping, canonical placement and planning over a
// checkpoint with storages on every kind of saved location. No request may
// crash the daemon, and a plan must only name what the checkpoint has.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "loader/cache/load_plan.h"
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
  return 0;
}
