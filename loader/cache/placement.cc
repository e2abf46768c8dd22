#include "loader/cache/placement.h"

#include <algorithm>
#include <map>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "loader/cache/convert.h"
#include "loader/cache/mapped_read.h"
#include "loader/common/status_macros.h"
#include "loader/format/utf8.h"

namespace weightd {
namespace {

// Casts run at a couple of GiB/s per core: whole storages are split into
// tasks this big, staging chunks (a few MiB) finer.
constexpr size_t kElementsPerStorageTask = 4u << 20;
constexpr size_t kElementsPerChunkTask = 256u << 10;

// Writes elements [first, first + count) of `storage` as placed into `out`,
// split over the pool; each task reads the mapping under its own guard.
absl::Status ConvertFromFile(const MappedFile& file, const StorageInfo& storage,
                             DType placed, size_t first, size_t count,
                             size_t per_task, ThreadPool& workers,
                             uint8_t* out) {
  const size_t out_size = DTypeSize(placed);
  const uint8_t* source = StorageSourceBytes(storage, file.data());
  const size_t tasks = (count + per_task - 1) / per_task;
  return workers.ParallelFor(tasks, [&](size_t task) {
    const size_t begin = task * per_task;
    const size_t n = std::min(per_task, count - begin);
    return ReadMapped(file, [&] {
      return ConvertStorageElements(storage, source, placed, first + begin, n,
                                    out + begin * out_size);
    });
  });
}

// One load's placement: the plan's storages onto the host and the GPUs, then
// the tensor table over them.
class Placer {
 public:
  Placer(const LoadPlan& plan, const LoadSource& source,
         const std::string& placement_key, DeviceSet& devices,
         ThreadPool& workers, const CancellationToken& cancel,
         const ProgressFn& progress)
      : plan_(plan),
        source_(source),
        checkpoint_(source.checkpoint),
        devices_(devices),
        workers_(workers),
        cancel_(cancel),
        progress_(progress),
        model_(std::make_shared<LoadedModel>()) {
    model_->path = source.path;
    model_->identity = source.file->identity();
    model_->format = checkpoint_.format;
    model_->placement = placement_key;
    model_->extra_files = checkpoint_.extra_files;
    // A proto string must be UTF-8, whatever bytes the file's strings held.
    model_->metadata_json = ToValidUtf8(checkpoint_.metadata.Dump());
    model_->source_storages = checkpoint_.storages;
    model_->file = source.file;
    model_->directory = source.directory;
  }

  absl::StatusOr<std::shared_ptr<LoadedModel>> Run() {
    ReportProgress();
    RETURN_IF_ERROR(PlaceFileViews());
    RETURN_IF_ERROR(PlaceHostCopies());
    RETURN_IF_ERROR(PlaceOnGpus());
    AddTensors();
    ReportProgress();
    return std::move(model_);
  }

 private:
  absl::Status CheckCancelled() const {
    if (!cancel_.cancelled()) return absl::OkStatus();
    return absl::CancelledError(
        absl::StrCat("load of ", source_.path,
                     " cancelled: every request for it went away"));
  }

  void ReportProgress() const {
    if (progress_) progress_(bytes_done_, plan_.bytes_total);
  }

  int AddBuffer(PlacedBuffer buffer) {
    model_->buffers.push_back(std::move(buffer));
    return static_cast<int>(model_->buffers.size()) - 1;
  }

  // Host storages whose bytes do not change are views of the mapping (one
  // buffer per shard file).
  absl::Status PlaceFileViews() {
    std::map<size_t, int> file_buffers;  // shard -> buffer
    for (const PlannedStorage& planned : plan_.storages) {
      if (planned.target.kind != StorageTarget::Kind::kHost ||
          planned.changes_bytes)
        continue;
      const size_t shard = source_.ShardOf(planned.index);
      auto [it, inserted] = file_buffers.try_emplace(shard, -1);
      if (inserted) {
        const MappedFile& file = source_.ShardFile(shard);
        PlacedBuffer buffer;
        buffer.kind = PlacedBuffer::Kind::kFile;
        buffer.size = file.size();
        buffer.path = source_.ShardPath(shard);
        buffer.identity = file.identity();
        buffer.host_data = file.data();
        it->second = AddBuffer(std::move(buffer));
      }
      const StorageInfo& storage = checkpoint_.storages[planned.index];
      storage_place_[planned.index] = {it->second, storage.file_offset};
      bytes_done_ += planned.placed_bytes;
    }
    return absl::OkStatus();
  }

  // Host storages whose bytes change share one segment, converted from the
  // mapping.
  absl::Status PlaceHostCopies() {
    std::vector<const PlannedStorage*> changed;
    std::vector<uint64_t> offsets;
    uint64_t size = 0;
    for (const PlannedStorage& planned : plan_.storages) {
      if (planned.target.kind != StorageTarget::Kind::kHost ||
          !planned.changes_bytes)
        continue;
      changed.push_back(&planned);
      offsets.push_back(size);
      size += AlignUp(planned.placed_bytes, kHostStorageAlignment);
    }
    if (changed.empty()) return absl::OkStatus();
    ASSIGN_OR_RETURN(HostSegment segment, devices_.CreateHostSegment(size));
    // Owned by the model from here, so an error below frees the segment.
    model_->owned.push_back(std::move(segment.owner));
    for (size_t i = 0; i < changed.size(); ++i) {
      RETURN_IF_ERROR(CheckCancelled());
      const PlannedStorage& planned = *changed[i];
      const StorageInfo& storage = checkpoint_.storages[planned.index];
      RETURN_IF_ERROR(ConvertFromFile(
          source_.ShardFile(source_.ShardOf(planned.index)), storage,
          planned.placed_dtype, 0, storage.num_bytes / DTypeSize(storage.dtype),
          kElementsPerStorageTask, workers_, segment.data + offsets[i]));
      bytes_done_ += planned.placed_bytes;
      if (!storage.inflated) model_->bytes_read += storage.num_bytes;
      ReportProgress();
    }
    PlacedBuffer buffer;
    buffer.kind = PlacedBuffer::Kind::kSharedMemory;
    buffer.size = size;
    buffer.shm_name = segment.name;
    buffer.host_data = segment.data;
    const int index = AddBuffer(std::move(buffer));
    for (size_t i = 0; i < changed.size(); ++i)
      storage_place_[changed[i]->index] = {index, offsets[i]};
    model_->resident["host"] += size;
    return absl::OkStatus();
  }

  // The staging pipeline's range for one storage: file bytes as they are, or
  // generated chunk by chunk when they change on the way.
  CopyRange GpuRange(const PlannedStorage& planned, uint64_t arena_offset) {
    const StorageInfo& storage = checkpoint_.storages[planned.index];
    if (!planned.changes_bytes) {
      return CopyRange::FromFile(storage.file_offset, planned.placed_bytes,
                                 arena_offset);
    }
    const size_t out_size = DTypeSize(planned.placed_dtype);
    const DType placed = planned.placed_dtype;
    const MappedFile* file = &source_.ShardFile(source_.ShardOf(planned.index));
    return CopyRange::Generated(
        planned.placed_bytes, out_size,
        [this, file, &storage, placed, out_size](uint64_t pos, uint64_t length,
                                                 uint8_t* out) {
          return ConvertFromFile(*file, storage, placed, pos / out_size,
                                 length / out_size, kElementsPerChunkTask,
                                 workers_, out);
        },
        arena_offset);
  }

  // One arena per GPU (per GPU and shard for a model directory), filled
  // through the staging pipeline.
  absl::Status PlaceOnGpus() {
    std::map<std::pair<int, size_t>, std::vector<const PlannedStorage*>>
        per_gpu;
    for (const PlannedStorage& planned : plan_.storages) {
      if (planned.target.kind == StorageTarget::Kind::kGpu)
        per_gpu[{planned.target.gpu, source_.ShardOf(planned.index)}].push_back(
            &planned);
    }
    if (per_gpu.empty()) return absl::OkStatus();
    const std::vector<GpuDescription> gpus = devices_.Gpus();
    for (const auto& [gpu_and_shard, storages] : per_gpu) {
      const auto [gpu, shard] = gpu_and_shard;
      RETURN_IF_ERROR(CheckCancelled());
      uint64_t size = 0;
      std::vector<CopyRange> ranges;
      std::vector<uint64_t> offsets;
      for (const PlannedStorage* planned : storages) {
        if (planned->placed_bytes > 0)
          ranges.push_back(GpuRange(*planned, size));
        offsets.push_back(size);
        size += AlignUp(planned->placed_bytes, kGpuStorageAlignment);
      }
      size = std::max<uint64_t>(size, 1);
      const uint64_t done_before = bytes_done_;
      ASSIGN_OR_RETURN(FilledArena arena,
                       devices_.FillGpuArena(
                           gpu, source_.ShardFile(shard).fd(),
                           source_.ShardPath(shard), size, ranges, &cancel_,
                           [this, done_before](uint64_t done, uint64_t) {
                             if (progress_)
                               progress_(done_before + done, plan_.bytes_total);
                           }));
      model_->owned.push_back(std::move(arena.owner));
      for (const CopyRange& range : ranges) {
        bytes_done_ += range.length;
      }
      for (const PlannedStorage* planned : storages) {
        const StorageInfo& storage = checkpoint_.storages[planned->index];
        if (!storage.inflated) model_->bytes_read += storage.num_bytes;
      }
      PlacedBuffer buffer;
      buffer.kind = PlacedBuffer::Kind::kGpu;
      buffer.size = size;
      buffer.gpu_uuid = gpus[gpu].uuid;
      buffer.gpu_index = gpu;
      buffer.handle_kind = arena.handle_kind;
      buffer.ipc_handle = arena.ipc_handle;
      const int index = AddBuffer(std::move(buffer));
      for (size_t i = 0; i < storages.size(); ++i)
        storage_place_[storages[i]->index] = {index, offsets[i]};
      model_->resident[gpus[gpu].uuid] += size;
    }
    return absl::OkStatus();
  }

  void AddTensors() {
    for (size_t t : plan_.tensors) {
      const TensorInfo& tensor = checkpoint_.tensors[t];
      const StorageInfo& storage = checkpoint_.storages[tensor.storage_index];
      const PlannedStorage& planned = *plan_.ForStorage(tensor.storage_index);
      PlacedTensor placed;
      placed.info = tensor;
      if (planned.placed_dtype != storage.dtype)
        placed.info.dtype = planned.placed_dtype;
      placed.saved_location =
          storage.location.empty() ? "cpu" : storage.location;
      placed.placed_location = planned.target.Name();
      placed.byte_size =
          static_cast<uint64_t>(std::max<int64_t>(tensor.NumElements(), 0)) *
          DTypeSize(placed.info.dtype);
      if (auto it = storage_place_.find(tensor.storage_index);
          it != storage_place_.end()) {
        placed.buffer_index = it->second.first;
        placed.storage_byte_offset = it->second.second;
      }
      model_->tensors.push_back(std::move(placed));
    }
  }

  const LoadPlan& plan_;
  const LoadSource& source_;
  const Checkpoint& checkpoint_;
  DeviceSet& devices_;
  ThreadPool& workers_;
  const CancellationToken& cancel_;
  const ProgressFn& progress_;
  std::shared_ptr<LoadedModel> model_;
  // Storage index -> (buffer index, byte offset in the buffer).
  std::map<size_t, std::pair<int, uint64_t>> storage_place_;
  uint64_t bytes_done_ = 0;
};

}  // namespace

absl::StatusOr<std::shared_ptr<LoadedModel>> Place(
    const LoadPlan& plan, const LoadSource& source,
    const std::string& placement_key, DeviceSet& devices, ThreadPool& workers,
    const CancellationToken& cancel, const ProgressFn& progress) {
  return Placer(plan, source, placement_key, devices, workers, cancel, progress)
      .Run();
}

}  // namespace weightd
