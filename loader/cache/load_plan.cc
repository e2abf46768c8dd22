#include "loader/cache/load_plan.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "loader/cache/convert.h"
#include "loader/common/status_macros.h"
#include "loader/format/tensor_bytes.h"

namespace weightd {
namespace {

// A device name as a client may write it, in canonical form ("cpu", "meta",
// "cuda:N"): UUIDs are resolved against the daemon's GPUs, and a GPU index
// the daemon does not have is an error.
absl::StatusOr<std::string> ResolveDeviceName(
    absl::string_view name, absl::Span<const GpuDescription> gpus) {
  name = absl::StripAsciiWhitespace(name);
  absl::string_view uuid = name;
  if (absl::ConsumePrefix(&uuid, "cuda:") && absl::StartsWith(uuid, "GPU-")) {
    for (const GpuDescription& gpu : gpus) {
      if (gpu.uuid == uuid) return absl::StrCat("cuda:", gpu.index);
    }
    return absl::InvalidArgumentError(absl::StrCat("no GPU with UUID ", uuid,
                                                   " (the daemon has ",
                                                   gpus.size(), " GPU(s))"));
  }
  ASSIGN_OR_RETURN(std::string canonical, CanonicalDevice(name));
  absl::string_view index_text = canonical;
  if (absl::ConsumePrefix(&index_text, "cuda:")) {
    size_t index = 0;
    if (!absl::SimpleAtoi(index_text, &index) || index >= gpus.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "no GPU ", canonical, ": the daemon has ", gpus.size(), " GPU(s)"));
    }
  }
  return canonical;
}

absl::StatusOr<StorageTarget> TargetFromCanonical(absl::string_view name) {
  StorageTarget target;
  if (name == "cpu") return target;
  if (name == "meta") {
    target.kind = StorageTarget::Kind::kMeta;
    return target;
  }
  absl::string_view index = name;
  if (absl::ConsumePrefix(&index, "cuda:") &&
      absl::SimpleAtoi(index, &target.gpu)) {
    target.kind = StorageTarget::Kind::kGpu;
    return target;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("cannot place storages on \"", name, "\""));
}

absl::Status InFile(absl::string_view file, const absl::Status& status) {
  return absl::Status(status.code(),
                      absl::StrCat(file, ": ", status.message()));
}

bool Selected(const std::string& name, const std::vector<std::string>& filter) {
  if (filter.empty()) return true;
  for (const std::string& entry : filter) {
    if (name == entry || absl::StartsWith(name, entry + ".")) return true;
  }
  return false;
}

}  // namespace

uint64_t AlignUp(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

std::string StorageTarget::Name() const {
  switch (kind) {
    case Kind::kHost:
      return "cpu";
    case Kind::kMeta:
      return "meta";
    case Kind::kGpu:
      return absl::StrCat("cuda:", gpu);
  }
  return "";
}

std::string Placement::Key() const {
  std::string out;
  switch (map.kind) {
    case MapLocation::Kind::kKeep:
      out = "saved";
      break;
    case MapLocation::Kind::kAll:
    case MapLocation::Kind::kMeta:
      out = map.target;
      break;
    case MapLocation::Kind::kRemap:
      absl::StrAppend(&out, "saved map{", map.ToString(), "}");
      break;
  }
  if (cast) absl::StrAppend(&out, " as ", DTypeName(*cast));
  if (host_copy) absl::StrAppend(&out, " copy");
  if (!filter.empty())
    absl::StrAppend(&out, " only{", absl::StrJoin(filter, ","), "}");
  absl::StrAppend(&out, shard.KeyPart());
  return out;
}

absl::StatusOr<Placement> CanonicalPlacement(
    const LoadSpec& spec, absl::Span<const GpuDescription> gpus) {
  Placement placement;
  if (!spec.target.empty() && !spec.remap.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        spec.path, ": give one target or a remap table, not both"));
  }
  if (!spec.target.empty()) {
    absl::StatusOr<std::string> target = ResolveDeviceName(spec.target, gpus);
    if (!target.ok()) {
      return InFile(spec.path,
                    absl::InvalidArgumentError(absl::StrCat(
                        "bad target device: ", target.status().message())));
    }
    placement.map.kind =
        *target == "meta" ? MapLocation::Kind::kMeta : MapLocation::Kind::kAll;
    placement.map.target = *target;
  } else if (!spec.remap.empty()) {
    placement.map.kind = MapLocation::Kind::kRemap;
    std::map<std::string, std::string> remap;
    for (const auto& [from, to] : spec.remap) {
      // Saved tags are matched in canonical form where they have one, as
      // ResolveLocation does.
      absl::StatusOr<std::string> canonical_from = CanonicalDevice(from);
      std::string key = canonical_from.ok()
                            ? *canonical_from
                            : std::string(absl::StripAsciiWhitespace(from));
      if (key.empty()) {
        return InFile(spec.path, absl::InvalidArgumentError(
                                     "map_location has an empty source"));
      }
      absl::StatusOr<std::string> target = ResolveDeviceName(to, gpus);
      if (!target.ok()) {
        return InFile(spec.path, absl::InvalidArgumentError(absl::StrCat(
                                     "bad map_location entry for \"", key,
                                     "\": ", target.status().message())));
      }
      if (!remap.emplace(key, *target).second) {
        return InFile(spec.path, absl::InvalidArgumentError(absl::StrCat(
                                     "map_location maps \"", key, "\" twice")));
      }
    }
    placement.map.remap.assign(remap.begin(), remap.end());
  }
  if (!spec.cast_dtype.empty()) {
    absl::string_view name = absl::StripAsciiWhitespace(spec.cast_dtype);
    absl::ConsumePrefix(&name, "torch.");
    absl::StatusOr<DType> cast = DTypeFromName(name);
    if (!cast.ok() || !IsCastableFloat(*cast) || *cast == DType::kFloat64) {
      return absl::InvalidArgumentError(absl::StrCat(
          spec.path, ": cannot cast on load to \"", spec.cast_dtype,
          "\"; use bfloat16, float16 or float32"));
    }
    placement.cast = *cast;
  }
  placement.host_copy = spec.host_copy;
  ASSIGN_OR_RETURN(placement.shard, CanonicalShardSpec(spec.shard, spec.path));
  placement.filter = spec.filter;
  std::sort(placement.filter.begin(), placement.filter.end());
  placement.filter.erase(
      std::unique(placement.filter.begin(), placement.filter.end()),
      placement.filter.end());
  return placement;
}

const PlannedStorage* LoadPlan::ForStorage(size_t index) const {
  auto it = std::lower_bound(
      storages.begin(), storages.end(), index,
      [](const PlannedStorage& s, size_t i) { return s.index < i; });
  return it != storages.end() && it->index == index ? &*it : nullptr;
}

const PlannedSlice* LoadPlan::ForTensor(size_t index) const {
  auto it = std::lower_bound(
      slices.begin(), slices.end(), index,
      [](const PlannedSlice& s, size_t i) { return s.tensor < i; });
  return it != slices.end() && it->tensor == index ? &*it : nullptr;
}

absl::StatusOr<LoadPlan> PlanLoad(const Placement& placement,
                                  const Checkpoint& checkpoint,
                                  absl::Span<const GpuDescription> gpus,
                                  absl::string_view file) {
  LoadPlan plan;
  plan.shard_world_size = placement.shard.world_size;
  plan.shard_rank = placement.shard.rank;
  for (size_t i = 0; i < checkpoint.tensors.size(); ++i) {
    if (Selected(checkpoint.tensors[i].name, placement.filter))
      plan.tensors.push_back(i);
  }
  if (plan.tensors.empty() && !placement.filter.empty()) {
    return absl::NotFoundError(absl::StrCat(
        file, ": no tensor matches ", absl::StrJoin(placement.filter, ", ")));
  }
  // Where a storage saved at its location goes.
  auto target_of =
      [&](const StorageInfo& storage) -> absl::StatusOr<StorageTarget> {
    const std::string saved =
        storage.location.empty() ? "cpu" : storage.location;
    absl::StatusOr<std::string> name = ResolveLocation(placement.map, saved);
    if (!name.ok()) return InFile(file, name.status());
    absl::StatusOr<StorageTarget> target = TargetFromCanonical(*name);
    if (!target.ok()) return InFile(file, target.status());
    if (target->kind == StorageTarget::Kind::kGpu &&
        (target->gpu < 0 || target->gpu >= static_cast<int>(gpus.size()))) {
      return absl::InvalidArgumentError(absl::StrCat(
          file, ": cannot place storage saved on \"", saved, "\" on ", *name,
          ": the daemon has ", gpus.size(), " GPU(s); give a map_location"));
    }
    return *target;
  };
  auto placed_dtype_of = [&](const StorageInfo& storage,
                             const TensorInfo& tensor) {
    if (placement.cast && IsCastableFloat(storage.dtype) &&
        tensor.dtype == storage.dtype) {
      return *placement.cast;
    }
    return storage.dtype;
  };
  uint64_t match_budget = kShardMatchBudget;
  std::map<size_t, PlannedStorage> storages;
  for (size_t t : plan.tensors) {
    const TensorInfo& tensor = checkpoint.tensors[t];
    const size_t s = tensor.storage_index;
    if (s >= checkpoint.storages.size()) {
      return absl::InternalError(absl::StrCat(file, ": tensor ", tensor.name,
                                              " names storage ", s, " of ",
                                              checkpoint.storages.size()));
    }
    const StorageInfo& storage = checkpoint.storages[s];
    ASSIGN_OR_RETURN(std::optional<TensorSlice> slice,
                     SliceFor(placement.shard, tensor, file, &match_budget));
    if (slice) {
      PlannedSlice planned;
      planned.tensor = t;
      planned.slice = *std::move(slice);
      ASSIGN_OR_RETURN(planned.target, target_of(storage));
      planned.placed_dtype = placed_dtype_of(storage, tensor);
      const uint64_t elements = static_cast<uint64_t>(
          std::max<int64_t>(planned.slice.view.NumElements(), 0));
      planned.placed_bytes = elements * DTypeSize(planned.placed_dtype);
      planned.source_bytes = elements * DTypeSize(storage.dtype);
      planned.changes_bytes =
          PlacementChangesBytes(storage, planned.placed_dtype);
      planned.own_bytes = planned.target.kind == StorageTarget::Kind::kGpu ||
                          (planned.target.kind == StorageTarget::Kind::kHost &&
                           (planned.changes_bytes || placement.host_copy));
      planned.file_range = planned.own_bytes && !planned.changes_bytes &&
                           IsRowMajorContiguous(planned.slice.view);
      if (planned.own_bytes) {
        // A slice of a stride-0 expand gathers more than the file holds.
        absl::Status bounded =
            CheckViewWorkBounded(planned.slice.view, storage.num_bytes);
        if (!bounded.ok()) return InFile(file, bounded);
      }
      plan.slices.push_back(std::move(planned));
      continue;
    }
    if (storages.count(s)) continue;
    PlannedStorage planned;
    planned.index = s;
    ASSIGN_OR_RETURN(planned.target, target_of(storage));
    planned.placed_dtype = placed_dtype_of(storage, tensor);
    planned.placed_bytes = PlacedStorageBytes(storage, planned.placed_dtype);
    planned.changes_bytes =
        PlacementChangesBytes(storage, planned.placed_dtype) ||
        (placement.host_copy &&
         planned.target.kind == StorageTarget::Kind::kHost);
    storages.emplace(s, planned);
  }
  uint64_t host_bytes = 0;
  std::map<int, uint64_t> gpu_bytes;
  // Host bytes are held only when they are the daemon's own (changed bytes,
  // a slice's contiguous copy); a zero-copy view holds nothing (its file is
  // mapped anyway).
  const auto count = [&](const StorageTarget& target, uint64_t placed_bytes,
                         bool own_host_bytes) {
    switch (target.kind) {
      case StorageTarget::Kind::kHost:
        if (own_host_bytes)
          host_bytes += AlignUp(placed_bytes, kHostStorageAlignment);
        plan.bytes_total += placed_bytes;
        break;
      case StorageTarget::Kind::kGpu:
        gpu_bytes[target.gpu] += AlignUp(placed_bytes, kGpuStorageAlignment);
        plan.bytes_total += placed_bytes;
        break;
      case StorageTarget::Kind::kMeta:
        break;
    }
  };
  for (auto& [index, planned] : storages) {
    count(planned.target, planned.placed_bytes, planned.changes_bytes);
    plan.storages.push_back(planned);
  }
  for (const PlannedSlice& planned : plan.slices)
    count(planned.target, planned.placed_bytes, planned.own_bytes);
  if (host_bytes > 0) plan.expected["host"] = host_bytes;
  for (const auto& [gpu, bytes] : gpu_bytes)
    plan.expected[gpus[gpu].uuid] = bytes;
  return plan;
}

}  // namespace weightd
