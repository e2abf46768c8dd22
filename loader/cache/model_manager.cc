#include "loader/cache/model_manager.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <optional>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "loader/cache/convert.h"
#include "loader/cache/device_set.h"
#include "loader/common/logging.h"
#include "loader/common/mutex.h"
#include "loader/common/status_macros.h"
#include "loader/format/reader.h"
#include "loader/format/tensor_bytes.h"
#include "loader/io/mapped_file.h"

namespace weightd {
namespace {

constexpr uint64_t kHostAlignment = 64;
constexpr uint64_t kGpuAlignment = 256;

uint64_t AlignUp(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

// Where one storage goes.
struct Target {
  enum class Kind { kHost, kGpu, kMeta };
  Kind kind = Kind::kHost;
  int gpu = -1;
  std::string Name() const {
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
};

// Keeps the mapped checkpoint alive with the model.
struct MappedFileOwner : LoadedModel::Owned {
  explicit MappedFileOwner(std::shared_ptr<MappedFile> file)
      : file(std::move(file)) {}
  std::shared_ptr<MappedFile> file;
};

class LoadSlots {
 public:
  explicit LoadSlots(int slots) : free_(slots) {}
  void Acquire() {
    MutexLock lock(&mu_);
    while (free_ == 0) available_.Wait(&mu_);
    --free_;
  }
  void Release() {
    MutexLock lock(&mu_);
    ++free_;
    available_.Signal();
  }

 private:
  Mutex mu_;
  CondVar available_;
  int free_ ABSL_GUARDED_BY(mu_);
};

bool IsUnder(const std::string& path, const std::string& root) {
  if (root == "/") return true;
  return path == root || absl::StartsWith(path, root + "/");
}

std::string CanonicalPlacement(const LoadSpec& spec) {
  std::vector<std::string> remap;
  for (const auto& [from, to] : spec.remap)
    remap.push_back(absl::StrCat(from, "->", to));
  std::vector<std::string> filter = spec.filter;
  std::sort(filter.begin(), filter.end());
  std::string out = spec.target.empty() ? "saved" : spec.target;
  if (!remap.empty())
    absl::StrAppend(&out, " map{", absl::StrJoin(remap, ","), "}");
  if (!spec.cast_dtype.empty()) absl::StrAppend(&out, " as ", spec.cast_dtype);
  if (!filter.empty())
    absl::StrAppend(&out, " only{", absl::StrJoin(filter, ","), "}");
  return out;
}

bool Selected(const std::string& name, const std::vector<std::string>& filter) {
  if (filter.empty()) return true;
  for (const std::string& entry : filter) {
    if (name == entry || absl::StartsWith(name, entry + ".")) return true;
  }
  return false;
}

std::string IdentityKey(const FileIdentity& id) {
  return absl::StrCat(id.device, ":", id.inode, ":", id.size, ":", id.mtime_ns);
}

// Splits [0, count) elements over a few threads, `min_per_thread` or more
// each (casts run at a couple of GiB/s per core); `work(begin, end)` must
// touch only its own elements.
absl::Status ForEachElementRange(
    size_t count, size_t min_per_thread,
    const std::function<absl::Status(size_t, size_t)>& work) {
  const size_t threads =
      std::min<size_t>({std::max(1u, std::thread::hardware_concurrency()), 8,
                        count / std::max<size_t>(min_per_thread, 1) + 1});
  if (threads <= 1) return work(0, count);
  std::vector<absl::Status> results(threads);
  std::vector<std::thread> pool;
  const size_t step = (count + threads - 1) / threads;
  for (size_t t = 0; t < threads; ++t) {
    size_t begin = std::min(count, t * step),
           end = std::min(count, begin + step);
    pool.emplace_back([&, t, begin, end] { results[t] = work(begin, end); });
  }
  for (std::thread& thread : pool) thread.join();
  for (const absl::Status& status : results) RETURN_IF_ERROR(status);
  return absl::OkStatus();
}

// Writes elements [first, first + count) of `storage` as they are placed
// (swapped to little-endian, cast to `placed_dtype`) to `out`.
absl::Status PlaceElements(const StorageInfo& storage, const uint8_t* file_data,
                           DType placed_dtype, size_t first, size_t count,
                           size_t min_per_thread, uint8_t* out) {
  const size_t in_size = DTypeSize(storage.dtype);
  const size_t out_size = DTypeSize(placed_dtype);
  const uint8_t* source =
      (storage.inflated
           ? reinterpret_cast<const uint8_t*>(storage.inflated->data())
           : file_data + storage.file_offset) +
      first * in_size;
  if (placed_dtype != storage.dtype) {
    return ForEachElementRange(
        count, min_per_thread, [&](size_t begin, size_t end) {
          return CastElements(source + begin * in_size, storage.dtype,
                              storage.byte_order, end - begin,
                              out + begin * out_size, placed_dtype);
        });
  }
  return ForEachElementRange(
      count, min_per_thread, [&](size_t begin, size_t end) {
        size_t bytes = (end - begin) * in_size;
        std::memcpy(out + begin * in_size, source + begin * in_size, bytes);
        if (storage.byte_order == ByteOrder::kBig) {
          SwapBytesInPlace(out + begin * in_size, bytes,
                           SwapUnit(storage.dtype));
        }
        return absl::OkStatus();
      });
}

// The whole storage as placed, into host memory.
absl::Status MaterializeStorage(const StorageInfo& storage,
                                const uint8_t* file_data, DType placed_dtype,
                                uint8_t* out) {
  constexpr size_t kPerThread = 4u << 20;  // elements
  return PlaceElements(storage, file_data, placed_dtype, 0,
                       storage.num_bytes / DTypeSize(storage.dtype), kPerThread,
                       out);
}

// The storage as placed, produced chunk by chunk by the staging pipeline, so
// host memory for a cast or byte-swapped GPU load stays the staging ring.
CopyRange GeneratedStorageRange(const StorageInfo& storage,
                                const uint8_t* file_data, DType placed_dtype,
                                uint64_t placed_bytes, uint64_t arena_offset) {
  const size_t out_size = DTypeSize(placed_dtype);
  return CopyRange::Generated(
      placed_bytes, out_size,
      [&storage, file_data, placed_dtype, out_size](
          uint64_t pos, uint64_t length, uint8_t* out) {
        // Chunks are a few MiB: split them finer than whole storages.
        constexpr size_t kPerThread = 256u << 10;  // elements
        return PlaceElements(storage, file_data, placed_dtype, pos / out_size,
                             length / out_size, kPerThread, out);
      },
      arena_offset);
}

// Whether placing the storage as `placed_dtype` changes its bytes (so no
// zero-copy view).
bool BytesChange(const StorageInfo& storage, DType placed_dtype) {
  return placed_dtype != storage.dtype ||
         storage.byte_order == ByteOrder::kBig || storage.inflated != nullptr;
}

uint64_t PlacedStorageBytes(const StorageInfo& storage, DType placed_dtype) {
  if (placed_dtype == storage.dtype) return storage.num_bytes;
  return storage.num_bytes / DTypeSize(storage.dtype) * DTypeSize(placed_dtype);
}

}  // namespace

absl::Status LoadedModel::ReadTensorBytes(size_t tensor_index,
                                          std::string* out) const {
  if (tensor_index >= tensors.size())
    return absl::OutOfRangeError("no such tensor");
  const PlacedTensor& tensor = tensors[tensor_index];
  const StorageInfo& source = source_storages[tensor.info.storage_index];
  if (tensor.buffer_index >= 0 &&
      buffers[tensor.buffer_index].host_data != nullptr) {
    const PlacedBuffer& buffer = buffers[tensor.buffer_index];
    const bool file_bytes = buffer.kind == PlacedBuffer::Kind::kFile;
    const uint64_t storage_bytes =
        PlacedStorageBytes(source, tensor.info.dtype);
    return GatherTensorBytes(
        tensor.info, buffer.host_data + tensor.storage_byte_offset,
        storage_bytes, file_bytes ? source.byte_order : ByteOrder::kLittle,
        out);
  }
  // GPU and meta placements: recompute the placed bytes from the mapped
  // checkpoint.
  std::string storage(PlacedStorageBytes(source, tensor.info.dtype), '\0');
  RETURN_IF_ERROR(
      MaterializeStorage(source, file_data, tensor.info.dtype,
                         reinterpret_cast<uint8_t*>(storage.data())));
  return GatherTensorBytes(tensor.info,
                           reinterpret_cast<const uint8_t*>(storage.data()),
                           storage.size(), ByteOrder::kLittle, out);
}

struct ModelManager::Impl {
  explicit Impl(int slots) : load_slots(slots) {}
  LoadSlots load_slots;
};

absl::StatusOr<std::unique_ptr<ModelManager>> ModelManager::Create(
    const Options& options) {
  auto manager = std::unique_ptr<ModelManager>(new ModelManager());
  manager->options_ = options;
  manager->impl_ =
      std::make_unique<Impl>(std::max(1, options.max_concurrent_loads));
  for (const std::string& root : options.model_roots) {
    char resolved[PATH_MAX];
    if (realpath(root.c_str(), resolved) == nullptr) {
      return absl::NotFoundError(
          absl::StrCat("model root ", root, ": ", std::strerror(errno)));
    }
    manager->canonical_roots_.push_back(resolved);
  }
  DeviceSet::Options device_options;
  device_options.fake_gpus = options.fake_gpus;
  device_options.fake_gpu_copy_delay = options.fake_gpu_copy_delay;
  device_options.io_backend = options.io_backend;
  device_options.staging_chunk_bytes = options.staging_chunk_bytes;
  device_options.staging_buffers = options.staging_buffers;
  ASSIGN_OR_RETURN(manager->devices_, DeviceSet::Create(device_options));
  CheckpointCache::Options cache_options;
  cache_options.budgets = manager->Budgets();
  manager->cache_ = std::make_unique<CheckpointCache>(cache_options);
  return manager;
}

ModelManager::~ModelManager() = default;

TierBytes ModelManager::Budgets() const {
  TierBytes budgets;
  if (options_.host_budget_bytes > 0)
    budgets["host"] = options_.host_budget_bytes;
  for (const GpuDescription& gpu : devices_->Gpus()) {
    budgets[gpu.uuid] = options_.gpu_budget_bytes > 0
                            ? options_.gpu_budget_bytes
                            : gpu.total_bytes / 10 * 9;
  }
  return budgets;
}

ManagerInfo ModelManager::Info() const {
  ManagerInfo info;
  info.gpus = devices_->Gpus();
  info.gpu_status = devices_->gpu_status();
  info.io_backend = devices_->io_backend();
  info.io_backend_reason = devices_->io_backend_reason();
  info.model_roots = canonical_roots_;
  info.host_budget_bytes = options_.host_budget_bytes;
  info.gpu_budget_bytes = options_.gpu_budget_bytes;
  return info;
}

absl::StatusOr<std::string> ModelManager::ResolvePath(
    const std::string& path) const {
  if (path.empty()) return absl::InvalidArgumentError("empty path");
  char resolved[PATH_MAX];
  if (realpath(path.c_str(), resolved) == nullptr) {
    int error = errno;
    // NOT_FOUND only for a path that names a place inside a root; anything else
    // is PERMISSION_DENIED, so nothing leaks about files outside the roots.
    std::string lexical =
        std::filesystem::absolute(path).lexically_normal().string();
    for (const std::string& root : canonical_roots_) {
      if (IsUnder(lexical, root)) {
        return absl::NotFoundError(
            absl::StrCat(path, ": ", std::strerror(error)));
      }
    }
    return absl::PermissionDeniedError(
        absl::StrCat(path, " is outside the model roots (",
                     absl::StrJoin(canonical_roots_, ", "), ")"));
  }
  for (const std::string& root : canonical_roots_) {
    if (IsUnder(resolved, root)) return std::string(resolved);
  }
  return absl::PermissionDeniedError(
      absl::StrCat(path, " is outside the model roots (",
                   absl::StrJoin(canonical_roots_, ", "), ")"));
}

namespace {

// Resolves a target name: "cpu", "meta", "cuda", "cuda:N", "cuda:GPU-<uuid>".
absl::StatusOr<Target> ParseTarget(const std::string& name,
                                   const std::vector<GpuDescription>& gpus,
                                   const std::string& file,
                                   const std::string& saved) {
  Target target;
  if (name == "cpu") return target;
  if (name == "meta") {
    target.kind = Target::Kind::kMeta;
    return target;
  }
  if (name == "cuda" || absl::StartsWith(name, "cuda:")) {
    target.kind = Target::Kind::kGpu;
    std::string which = name == "cuda" ? "0" : name.substr(5);
    int index = -1;
    if (absl::StartsWith(which, "GPU-")) {
      for (const GpuDescription& gpu : gpus) {
        if (gpu.uuid == which) index = gpu.index;
      }
    } else if (!absl::SimpleAtoi(which, &index)) {
      index = -1;
    }
    if (index < 0 || index >= static_cast<int>(gpus.size())) {
      return absl::InvalidArgumentError(absl::StrCat(
          file, ": cannot place storage saved on \"", saved, "\" on ", name,
          ": the daemon has ", gpus.size(), " GPU(s)"));
    }
    target.gpu = index;
    return target;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      file, ": storage saved on \"", saved, "\" cannot be placed on \"", name,
      "\"; use cpu, meta or cuda:N (map_location)"));
}

}  // namespace

absl::StatusOr<ModelManager::LoadResult> ModelManager::Load(
    const LoadSpec& spec, const ProgressFn& progress,
    const CancellationToken* cancel) {
  ASSIGN_OR_RETURN(std::string path, ResolvePath(spec.path));
  if (!spec.target.empty() && !spec.remap.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        spec.path, ": give one target or a remap table, not both"));
  }
  DType cast = DType::kFloat32;
  const bool casting = !spec.cast_dtype.empty();
  if (casting) {
    auto parsed = DTypeFromName(spec.cast_dtype);
    if (!parsed.ok() || !IsCastableFloat(*parsed) ||
        *parsed == DType::kFloat64) {
      return absl::InvalidArgumentError(absl::StrCat(
          spec.path, ": cannot cast on load to \"", spec.cast_dtype,
          "\"; use bfloat16, float16 or float32"));
    }
    cast = *parsed;
  }
  // Identity first (a stat; a cache hit needs nothing more): a changed file is
  // a new cache key.
  ASSIGN_OR_RETURN(const FileIdentity identity, StatFileIdentity(path));
  CacheKey key{path, IdentityKey(identity), CanonicalPlacement(spec)};

  // Mapped and parsed only on a miss, inside the cache's single flight.
  std::shared_ptr<MappedFile> shared_file;
  absl::StatusOr<Checkpoint> parsed_checkpoint =
      absl::InternalError("not parsed");
  auto parse = [&]() -> absl::Status {
    ASSIGN_OR_RETURN(shared_file, MappedFile::Open(path));
    if (shared_file->identity() != identity) {
      return absl::AbortedError(absl::StrCat(
          path, " changed while it was being loaded; load it again"));
    }
    ReadOptions read_options;
    read_options.file_name = path;
    parsed_checkpoint = ReadCheckpoint(
        absl::string_view(reinterpret_cast<const char*>(shared_file->data()),
                          shared_file->size()),
        read_options);
    if (!parsed_checkpoint.ok()) {
      absl::Status status = parsed_checkpoint.status();
      return absl::Status(status.code() == absl::StatusCode::kUnimplemented
                              ? absl::StatusCode::kInvalidArgument
                              : status.code(),
                          status.message());
    }
    if (!spec.format_hint.empty() &&
        spec.format_hint != CheckpointFormatName(parsed_checkpoint->format)) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": format hint \"", spec.format_hint, "\" but the file is ",
          CheckpointFormatName(parsed_checkpoint->format)));
    }
    return absl::OkStatus();
  };

  std::vector<GpuDescription> gpus = devices_->Gpus();

  struct Plan {
    std::vector<size_t> tensors;              // selected tensor indices
    std::map<size_t, Target> storage_target;  // storage index -> target
    std::map<size_t, DType> storage_dtype;    // placed dtype per storage
    TierBytes expected;
  };
  auto make_plan = [&](const Checkpoint& checkpoint) -> absl::StatusOr<Plan> {
    Plan plan;
    for (size_t i = 0; i < checkpoint.tensors.size(); ++i) {
      if (Selected(checkpoint.tensors[i].name, spec.filter))
        plan.tensors.push_back(i);
    }
    if (plan.tensors.empty() && !spec.filter.empty()) {
      return absl::NotFoundError(absl::StrCat(
          path, ": no tensor matches ", absl::StrJoin(spec.filter, ", ")));
    }
    uint64_t host_bytes = 0;
    std::map<int, uint64_t> gpu_bytes;
    for (size_t t : plan.tensors) {
      const TensorInfo& tensor = checkpoint.tensors[t];
      size_t s = tensor.storage_index;
      if (plan.storage_target.count(s)) continue;
      const StorageInfo& storage = checkpoint.storages[s];
      std::string saved = storage.location.empty() ? "cpu" : storage.location;
      std::string name = saved;
      if (!spec.target.empty()) {
        name = spec.target;
      } else if (auto it = spec.remap.find(saved); it != spec.remap.end()) {
        name = it->second;
      }
      ASSIGN_OR_RETURN(Target target, ParseTarget(name, gpus, path, saved));
      plan.storage_target[s] = target;
      DType placed = storage.dtype;
      if (casting && IsCastableFloat(storage.dtype) &&
          tensor.dtype == storage.dtype) {
        placed = cast;
      }
      plan.storage_dtype[s] = placed;
      uint64_t bytes = PlacedStorageBytes(storage, placed);
      bool changes = BytesChange(storage, placed);
      if (target.kind == Target::Kind::kHost && changes) {
        host_bytes += AlignUp(bytes, kHostAlignment);
      } else if (target.kind == Target::Kind::kGpu) {
        gpu_bytes[target.gpu] += AlignUp(bytes, kGpuAlignment);
      }
    }
    if (host_bytes > 0) plan.expected["host"] = host_bytes;
    for (const auto& [gpu, bytes] : gpu_bytes)
      plan.expected[gpus[gpu].uuid] = bytes;
    return plan;
  };

  std::optional<Plan> plan;  // set by the plan step, read by the load step
  // Parse and plan happen inside the cache's single flight so a hit costs
  // nothing; the expected bytes are reserved by the load function itself
  // through a second, cheap call.
  auto load = [&](const CancellationToken& abandoned)
      -> absl::StatusOr<std::shared_ptr<const CacheValue>> {
    impl_->load_slots.Acquire();
    struct SlotRelease {
      LoadSlots* slots;
      ~SlotRelease() { slots->Release(); }
    } release{&impl_->load_slots};
    auto check_abandoned = [&]() -> absl::Status {
      if (!abandoned.cancelled()) return absl::OkStatus();
      return absl::CancelledError(absl::StrCat(
          "load of ", path, " cancelled: every request for it went away"));
    };
    RETURN_IF_ERROR(check_abandoned());
    const Checkpoint& checkpoint = *parsed_checkpoint;
    auto model = std::make_shared<LoadedModel>();
    model->path = path;
    model->identity = identity;
    model->format = checkpoint.format;
    model->placement = key.placement;
    model->extra_files = checkpoint.extra_files;
    model->metadata_json = checkpoint.metadata.Dump();
    model->source_storages = checkpoint.storages;
    model->file_data = shared_file->data();
    model->file_size = shared_file->size();

    // Storage index -> (buffer index, byte offset in the buffer).
    std::map<size_t, std::pair<int, uint64_t>> storage_place;
    uint64_t bytes_total = 0;
    for (const auto& [s, target] : plan->storage_target) {
      if (target.kind != Target::Kind::kMeta) {
        bytes_total +=
            PlacedStorageBytes(checkpoint.storages[s], plan->storage_dtype[s]);
      }
    }
    uint64_t bytes_done = 0;
    if (progress) progress(0, bytes_total);

    // Host: zero-copy file views, and one segment for storages whose bytes
    // change.
    int file_buffer = -1;
    std::vector<size_t> host_changed;
    for (const auto& [s, target] : plan->storage_target) {
      if (target.kind != Target::Kind::kHost) continue;
      const StorageInfo& storage = checkpoint.storages[s];
      bool changes = BytesChange(storage, plan->storage_dtype[s]);
      if (changes) {
        host_changed.push_back(s);
        continue;
      }
      if (file_buffer < 0) {
        PlacedBuffer buffer;
        buffer.kind = PlacedBuffer::Kind::kFile;
        buffer.size = shared_file->size();
        buffer.path = path;
        buffer.identity = identity;
        buffer.host_data = shared_file->data();
        file_buffer = static_cast<int>(model->buffers.size());
        model->buffers.push_back(buffer);
      }
      storage_place[s] = {file_buffer, storage.file_offset};
      bytes_done += storage.num_bytes;
    }
    if (!host_changed.empty()) {
      uint64_t size = 0;
      std::vector<uint64_t> offsets;
      for (size_t s : host_changed) {
        offsets.push_back(size);
        size += AlignUp(
            PlacedStorageBytes(checkpoint.storages[s], plan->storage_dtype[s]),
            kHostAlignment);
      }
      ASSIGN_OR_RETURN(HostSegment segment, devices_->CreateHostSegment(size));
      for (size_t i = 0; i < host_changed.size(); ++i) {
        size_t s = host_changed[i];
        RETURN_IF_ERROR(check_abandoned());
        RETURN_IF_ERROR(MaterializeStorage(
            checkpoint.storages[s], shared_file->data(), plan->storage_dtype[s],
            segment.data + offsets[i]));
        bytes_done +=
            PlacedStorageBytes(checkpoint.storages[s], plan->storage_dtype[s]);
        if (progress) progress(bytes_done, bytes_total);
        bytes_read_ += checkpoint.storages[s].num_bytes;
      }
      PlacedBuffer buffer;
      buffer.kind = PlacedBuffer::Kind::kSharedMemory;
      buffer.size = size;
      buffer.shm_name = segment.name;
      buffer.host_data = segment.data;
      int index = static_cast<int>(model->buffers.size());
      model->buffers.push_back(buffer);
      for (size_t i = 0; i < host_changed.size(); ++i) {
        storage_place[host_changed[i]] = {index, offsets[i]};
      }
      model->resident["host"] += size;
      model->owned.push_back(std::move(segment.owner));
    }

    // GPUs: one arena per GPU, filled through the staging pipeline.
    std::map<int, std::vector<size_t>> per_gpu;
    for (const auto& [s, target] : plan->storage_target) {
      if (target.kind == Target::Kind::kGpu) per_gpu[target.gpu].push_back(s);
    }
    for (const auto& [gpu, storages] : per_gpu) {
      uint64_t size = 0;
      std::vector<CopyRange> ranges;
      std::vector<uint64_t> offsets;
      for (size_t s : storages) {
        const StorageInfo& storage = checkpoint.storages[s];
        const DType placed = plan->storage_dtype[s];
        uint64_t bytes = PlacedStorageBytes(storage, placed);
        if (bytes > 0) {
          ranges.push_back(
              BytesChange(storage, placed)
                  ? GeneratedStorageRange(storage, shared_file->data(), placed,
                                          bytes, size)
                  : CopyRange::FromFile(storage.file_offset, bytes, size));
        }
        offsets.push_back(size);
        size += AlignUp(bytes, kGpuAlignment);
      }
      const uint64_t done_before = bytes_done;
      ASSIGN_OR_RETURN(
          FilledArena arena,
          devices_->FillGpuArena(gpu, shared_file->fd(), path,
                                 std::max<uint64_t>(size, 1), ranges,
                                 &abandoned, [&](uint64_t done, uint64_t) {
                                   if (progress)
                                     progress(done_before + done, bytes_total);
                                 }));
      for (const CopyRange& range : ranges) {
        bytes_done += range.length;
        bytes_read_ += range.length;
      }
      PlacedBuffer buffer;
      buffer.kind = PlacedBuffer::Kind::kGpu;
      buffer.size = std::max<uint64_t>(size, 1);
      buffer.gpu_uuid = gpus[gpu].uuid;
      buffer.gpu_index = gpu;
      buffer.ipc_handle = arena.ipc_handle;
      buffer.fake_gpu = gpus[gpu].fake;
      int index = static_cast<int>(model->buffers.size());
      model->buffers.push_back(buffer);
      for (size_t i = 0; i < storages.size(); ++i)
        storage_place[storages[i]] = {index, offsets[i]};
      model->resident[gpus[gpu].uuid] += buffer.size;
      model->owned.push_back(std::move(arena.owner));
    }

    for (size_t t : plan->tensors) {
      const TensorInfo& tensor = checkpoint.tensors[t];
      size_t s = tensor.storage_index;
      PlacedTensor placed;
      placed.info = tensor;
      placed.info.dtype = plan->storage_dtype[s] != checkpoint.storages[s].dtype
                              ? plan->storage_dtype[s]
                              : tensor.dtype;
      placed.saved_location = checkpoint.storages[s].location.empty()
                                  ? "cpu"
                                  : checkpoint.storages[s].location;
      placed.placed_location = plan->storage_target[s].Name();
      placed.byte_size =
          static_cast<uint64_t>(std::max<int64_t>(tensor.NumElements(), 0)) *
          DTypeSize(placed.info.dtype);
      if (auto it = storage_place.find(s); it != storage_place.end()) {
        placed.buffer_index = it->second.first;
        placed.storage_byte_offset = it->second.second;
      }
      model->tensors.push_back(std::move(placed));
    }
    if (progress) progress(bytes_total, bytes_total);
    model->owned.push_back(std::make_unique<MappedFileOwner>(shared_file));
    return std::shared_ptr<const CacheValue>(std::move(model));
  };

  // Parsing and planning run only on a miss, inside the cache's single flight.
  auto plan_fn = [&]() -> absl::StatusOr<TierBytes> {
    RETURN_IF_ERROR(parse());
    ASSIGN_OR_RETURN(Plan made, make_plan(*parsed_checkpoint));
    plan = std::move(made);
    return plan->expected;
  };
  ASSIGN_OR_RETURN(
      CheckpointCache::Result result,
      cache_->GetOrLoad(key, plan_fn, load, spec.lease_session, cancel));
  return LoadResult{result.model_id,
                    std::static_pointer_cast<const LoadedModel>(result.value),
                    result.hit};
}

absl::StatusOr<CacheEntryInfo> ModelManager::Describe(
    const std::string& model_id) const {
  return cache_->Describe(model_id);
}

std::vector<CacheEntryInfo> ModelManager::List() const {
  return cache_->List();
}

CacheStats ModelManager::Stats() const { return cache_->Stats(); }

void ModelManager::OpenSession(const std::string& session) {
  cache_->OpenSession(session);
}

absl::Status ModelManager::Acquire(const std::string& model_id,
                                   const std::string& session) {
  return cache_->Acquire(model_id, session);
}

absl::Status ModelManager::Release(const std::string& model_id,
                                   const std::string& session) {
  return cache_->Release(model_id, session);
}

int ModelManager::ReleaseSession(const std::string& session) {
  return cache_->ReleaseSession(session);
}

absl::StatusOr<uint64_t> ModelManager::Unload(const std::string& model_id,
                                              bool force) {
  return cache_->Unload(model_id, force);
}

}  // namespace weightd
