#include "loader/cache/placement.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "loader/cache/convert.h"
#include "loader/cache/mapped_read.h"
#include "loader/cache/shard.h"
#include "loader/common/status_macros.h"
#include "loader/format/utf8.h"

namespace weightd {
namespace {

// Casts run at a couple of GiB/s per core: whole storages are split into
// tasks this big, staging chunks (a few MiB) finer.
constexpr size_t kElementsPerStorageTask = 4u << 20;
constexpr size_t kElementsPerChunkTask = 256u << 10;

// Runs `write(begin, n)` for elements [begin, begin + n) of [0, count) in
// tasks of `per_task` elements over the pool, each under its own guard of the
// mapping.
template <typename WriteElements>
absl::Status ParallelOverMapping(const MappedFile& file, size_t count,
                                 size_t per_task, ThreadPool& workers,
                                 const WriteElements& write) {
  const size_t tasks = (count + per_task - 1) / per_task;
  return workers.ParallelFor(tasks, [&](size_t task) {
    const size_t begin = task * per_task;
    const size_t n = std::min(per_task, count - begin);
    return ReadMapped(file, [&] { return write(begin, n); });
  });
}

// Writes elements [first, first + count) of `storage` as placed into `out`.
absl::Status ConvertFromFile(const MappedFile& file, const StorageInfo& storage,
                             DType placed, size_t first, size_t count,
                             size_t per_task, ThreadPool& workers,
                             uint8_t* out) {
  const size_t out_size = DTypeSize(placed);
  const uint8_t* source = StorageSourceBytes(storage, file.data());
  return ParallelOverMapping(
      file, count, per_task, workers, [&](size_t begin, size_t n) {
        return ConvertStorageElements(storage, source, placed, first + begin, n,
                                      out + begin * out_size);
      });
}

// Writes elements [first, first + count) of the slice `view` of `storage`
// (row-major) as placed into `out`.
absl::Status GatherFromFile(const MappedFile& file, const StorageInfo& storage,
                            const TensorInfo& view, DType placed, size_t first,
                            size_t count, size_t per_task, ThreadPool& workers,
                            uint8_t* out) {
  const size_t out_size = DTypeSize(placed);
  const uint8_t* source = StorageSourceBytes(storage, file.data());
  return ParallelOverMapping(
      file, count, per_task, workers, [&](size_t begin, size_t n) {
        uint8_t* task_out = out + begin * out_size;
        return ForEachStorageRun(
            view, first + begin, n,
            [&](uint64_t element, uint64_t run, uint64_t out_element) {
              return ConvertStorageElements(storage, source, placed, element,
                                            run,
                                            task_out + out_element * out_size);
            });
      });
}

// Replicated storages are taken through SharedRegionReads in blocks this big
// (a multiple of every element size), so a group's ranks share each read.
constexpr uint64_t kSharedBlockBytes = 4u << 20;

// One load's placement: the plan's storages onto the host and the GPUs, then
// the tensor table over them.
class Placer {
 public:
  Placer(const LoadPlan& plan, const LoadSource& source,
         const std::string& placement_key, DeviceSet& devices,
         ThreadPool& workers, const CancellationToken& cancel,
         const ProgressFn& progress, SharedRegionReads* shared_reads)
      : plan_(plan),
        source_(source),
        checkpoint_(source.checkpoint),
        devices_(devices),
        workers_(workers),
        cancel_(cancel),
        progress_(progress),
        shared_reads_(shared_reads),
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
    absl::StatusOr<std::shared_ptr<LoadedModel>> model = PlaceAll();
    if (!model.ok() && shared_reads_ != nullptr && plan_.shard_world_size > 1) {
      // This rank takes nothing more: the group's other ranks must not keep
      // blocks for it.
      const size_t files =
          source_.directory ? source_.directory->shard_files.size() : 1;
      for (size_t shard = 0; shard < files; ++shard) {
        shared_reads_->Abandon(source_.ShardFile(shard).identity(),
                               plan_.shard_world_size, plan_.shard_rank);
      }
    }
    return model;
  }

 private:
  absl::StatusOr<std::shared_ptr<LoadedModel>> PlaceAll() {
    ReportProgress();
    RETURN_IF_ERROR(PlaceFileViews());
    RETURN_IF_ERROR(PlaceHostCopies());
    RETURN_IF_ERROR(PlaceOnGpus());
    AddTensors();
    model_->bytes_read += shared_bytes_read_.load();
    ReportProgress();
    return std::move(model_);
  }

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
      if (inserted) it->second = AddBuffer(FileBuffer(shard));
      const StorageInfo& storage = checkpoint_.storages[planned.index];
      storage_place_[planned.index] = {it->second, storage.file_offset};
      bytes_done_ += planned.placed_bytes;
    }
    // A slice of a host tensor whose bytes do not change is the same view
    // narrowed: nothing copied, nothing read.
    for (const PlannedSlice& planned : plan_.slices) {
      if (planned.target.kind != StorageTarget::Kind::kHost ||
          planned.own_bytes)
        continue;
      const size_t storage_index =
          checkpoint_.tensors[planned.tensor].storage_index;
      const size_t shard = source_.ShardOf(storage_index);
      auto [it, inserted] = file_buffers.try_emplace(shard, -1);
      if (inserted) it->second = AddBuffer(FileBuffer(shard));
      slice_place_[planned.tensor] = {
          it->second, checkpoint_.storages[storage_index].file_offset};
      bytes_done_ += planned.placed_bytes;
    }
    return absl::OkStatus();
  }

  PlacedBuffer FileBuffer(size_t shard) const {
    const MappedFile& file = source_.ShardFile(shard);
    PlacedBuffer buffer;
    buffer.kind = PlacedBuffer::Kind::kFile;
    buffer.size = file.size();
    buffer.path = source_.ShardPath(shard);
    buffer.identity = file.identity();
    buffer.host_data = file.data();
    return buffer;
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
    std::vector<const PlannedSlice*> slices;
    std::vector<uint64_t> slice_offsets;
    for (const PlannedSlice& planned : plan_.slices) {
      if (planned.target.kind != StorageTarget::Kind::kHost ||
          !planned.own_bytes)
        continue;
      slices.push_back(&planned);
      slice_offsets.push_back(size);
      size += AlignUp(planned.placed_bytes, kHostStorageAlignment);
    }
    if (changed.empty() && slices.empty()) return absl::OkStatus();
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
    for (size_t i = 0; i < slices.size(); ++i) {
      RETURN_IF_ERROR(CheckCancelled());
      const PlannedSlice& planned = *slices[i];
      const TensorInfo& tensor = checkpoint_.tensors[planned.tensor];
      const StorageInfo& storage = checkpoint_.storages[tensor.storage_index];
      RETURN_IF_ERROR(GatherFromFile(
          source_.ShardFile(source_.ShardOf(tensor.storage_index)), storage,
          planned.slice.view, planned.placed_dtype, 0,
          planned.placed_bytes / DTypeSize(planned.placed_dtype),
          kElementsPerStorageTask, workers_, segment.data + slice_offsets[i]));
      bytes_done_ += planned.placed_bytes;
      if (!storage.inflated) model_->bytes_read += planned.source_bytes;
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
    for (size_t i = 0; i < slices.size(); ++i)
      slice_place_[slices[i]->tensor] = {index, slice_offsets[i]};
    model_->resident["host"] += size;
    return absl::OkStatus();
  }

  // The staging pipeline's range for one storage: file bytes as they are, or
  // generated chunk by chunk when they change on the way.
  CopyRange GpuRange(const PlannedStorage& planned, uint64_t arena_offset) {
    const StorageInfo& storage = checkpoint_.storages[planned.index];
    if (shared_reads_ != nullptr && plan_.shard_world_size > 1 &&
        !storage.inflated && planned.placed_bytes > 0) {
      return SharedGpuRange(planned, arena_offset);
    }
    if (!planned.changes_bytes) {
      return CopyRange::FromFile(
          storage.file_offset, planned.placed_bytes, arena_offset,
          static_cast<uint32_t>(source_.ShardOf(planned.index)));
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

  // A replicated storage of a sharded load, read once for the whole group:
  // its bytes come in blocks from SharedRegionReads (the group's first rank
  // to ask reads each block from the mapping), converted on the way.
  CopyRange SharedGpuRange(const PlannedStorage& planned,
                           uint64_t arena_offset) {
    const StorageInfo* storage = &checkpoint_.storages[planned.index];
    const MappedFile* file = &source_.ShardFile(source_.ShardOf(planned.index));
    const DType placed = planned.placed_dtype;
    const size_t in_size = DTypeSize(storage->dtype);
    const size_t out_size = DTypeSize(placed);
    const int consumers = plan_.shard_world_size;
    // The block in hand: the generator runs in order along the range, so each
    // block is taken once.
    struct Held {
      uint64_t block = ~uint64_t{0};
      std::shared_ptr<const SharedRegionReads::Bytes> bytes;
    };
    auto held = std::make_shared<Held>();
    return CopyRange::Generated(
        planned.placed_bytes, out_size,
        [this, storage, file, placed, in_size, out_size, consumers, held](
            uint64_t pos, uint64_t length, uint8_t* out) -> absl::Status {
          uint64_t first = pos / out_size;
          uint64_t count = length / out_size;
          while (count > 0) {
            const uint64_t source_byte = first * in_size;
            const uint64_t block = source_byte / kSharedBlockBytes;
            if (held->block != block) {
              SharedRegionReads::Region region;
              region.file = file->identity();
              region.offset = storage->file_offset + block * kSharedBlockBytes;
              region.length = std::min<uint64_t>(
                  kSharedBlockBytes,
                  storage->num_bytes - block * kSharedBlockBytes);
              region.consumers = consumers;
              region.consumer = plan_.shard_rank;
              held->bytes.reset();  // before taking the next: memory bounded
              ASSIGN_OR_RETURN(SharedRegionReads::Taken taken,
                               shared_reads_->Take(region, [&](uint8_t* into) {
                                 return file->CopyTo(region.offset,
                                                     region.length, into);
                               }));
              held->block = block;
              held->bytes = std::move(taken.bytes);
              shared_bytes_read_ += taken.bytes_read;
            }
            const uint64_t in_block =
                (source_byte - block * kSharedBlockBytes) / in_size;
            const uint64_t n = std::min<uint64_t>(
                count, held->bytes->size / in_size - in_block);
            RETURN_IF_ERROR(ConvertStorageElements(
                *storage, held->bytes->data.get() + in_block * in_size, placed,
                0, n, out));
            out += n * out_size;
            first += n;
            count -= n;
          }
          return absl::OkStatus();
        },
        arena_offset);
  }

  // A slice's own bytes on a GPU: one file range when the slice is one run
  // of its storage (dim-0 slices of contiguous tensors), else gathered from
  // the mapping chunk by chunk into the staging ring.
  CopyRange SliceGpuRange(const PlannedSlice& planned, uint64_t arena_offset) {
    const TensorInfo& tensor = checkpoint_.tensors[planned.tensor];
    const StorageInfo& storage = checkpoint_.storages[tensor.storage_index];
    if (planned.file_range) {
      return CopyRange::FromFile(
          storage.file_offset +
              static_cast<uint64_t>(planned.slice.view.storage_offset) *
                  DTypeSize(storage.dtype),
          planned.placed_bytes, arena_offset,
          static_cast<uint32_t>(source_.ShardOf(tensor.storage_index)));
    }
    const size_t out_size = DTypeSize(planned.placed_dtype);
    const DType placed = planned.placed_dtype;
    const TensorInfo* view = &planned.slice.view;
    const MappedFile* file =
        &source_.ShardFile(source_.ShardOf(tensor.storage_index));
    return CopyRange::Generated(
        planned.placed_bytes, out_size,
        [this, file, &storage, view, placed, out_size](
            uint64_t pos, uint64_t length, uint8_t* out) {
          return GatherFromFile(*file, storage, *view, placed, pos / out_size,
                                length / out_size, kElementsPerChunkTask,
                                workers_, out);
        },
        arena_offset);
  }

  // One arena per GPU, filled through the staging pipeline in one run over
  // every shard file (a model directory's shards are read in flight
  // together, not one after another).
  absl::Status PlaceOnGpus() {
    struct OnGpu {
      std::vector<const PlannedStorage*> storages;
      std::vector<const PlannedSlice*> slices;
    };
    std::map<int, OnGpu> per_gpu;
    for (const PlannedStorage& planned : plan_.storages) {
      if (planned.target.kind == StorageTarget::Kind::kGpu)
        per_gpu[planned.target.gpu].storages.push_back(&planned);
    }
    for (const PlannedSlice& planned : plan_.slices) {
      if (planned.target.kind == StorageTarget::Kind::kGpu)
        per_gpu[planned.target.gpu].slices.push_back(&planned);
    }
    if (per_gpu.empty()) return absl::OkStatus();
    const std::vector<GpuDescription> gpus = devices_.Gpus();
    std::vector<ArenaFile> files;
    const size_t shards =
        source_.directory ? source_.directory->shard_files.size() : 1;
    for (size_t shard = 0; shard < shards; ++shard)
      files.push_back(
          {source_.ShardFile(shard).fd(), source_.ShardPath(shard)});
    for (const auto& [gpu, on_gpu] : per_gpu) {
      const std::vector<const PlannedStorage*>& storages = on_gpu.storages;
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
      std::vector<uint64_t> slice_offsets;
      for (const PlannedSlice* planned : on_gpu.slices) {
        if (planned->placed_bytes > 0)
          ranges.push_back(SliceGpuRange(*planned, size));
        slice_offsets.push_back(size);
        size += AlignUp(planned->placed_bytes, kGpuStorageAlignment);
      }
      size = std::max<uint64_t>(size, 1);
      const uint64_t done_before = bytes_done_;
      ASSIGN_OR_RETURN(FilledArena arena,
                       devices_.FillGpuArena(
                           gpu, files, size, ranges, &cancel_,
                           [this, done_before](uint64_t done, uint64_t) {
                             if (progress_)
                               progress_(done_before + done, plan_.bytes_total);
                           }));
      model_->owned.push_back(std::move(arena.owner));
      for (const CopyRange& range : ranges) {
        bytes_done_ += range.length;
      }
      const bool shared =
          shared_reads_ != nullptr && plan_.shard_world_size > 1;
      for (const PlannedStorage* planned : storages) {
        const StorageInfo& storage = checkpoint_.storages[planned->index];
        // Shared reads count what this rank itself read (shared_bytes_read_).
        if (!storage.inflated && !shared)
          model_->bytes_read += storage.num_bytes;
      }
      for (const PlannedSlice* planned : on_gpu.slices) {
        const StorageInfo& storage =
            checkpoint_
                .storages[checkpoint_.tensors[planned->tensor].storage_index];
        if (!storage.inflated) model_->bytes_read += planned->source_bytes;
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
      for (size_t i = 0; i < on_gpu.slices.size(); ++i)
        slice_place_[on_gpu.slices[i]->tensor] = {index, slice_offsets[i]};
      model_->resident[gpus[gpu].uuid] += size;
    }
    return absl::OkStatus();
  }

  void AddTensors() {
    for (size_t t : plan_.tensors) {
      if (const PlannedSlice* slice = plan_.ForTensor(t); slice != nullptr) {
        AddSlice(*slice);
        continue;
      }
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

  // A slice in the tensor table: the narrowed view of the file, or its own
  // contiguous bytes (row-major from the slice's offset).
  void AddSlice(const PlannedSlice& slice) {
    const TensorInfo& tensor = checkpoint_.tensors[slice.tensor];
    const StorageInfo& storage = checkpoint_.storages[tensor.storage_index];
    PlacedTensor placed;
    placed.info = slice.slice.view;
    placed.info.dtype =
        slice.placed_dtype == storage.dtype ? tensor.dtype : slice.placed_dtype;
    if (slice.own_bytes) {
      placed.source_view = slice.slice.view;
      placed.info.storage_offset = 0;
      int64_t stride = 1;
      for (size_t d = placed.info.shape.size(); d-- > 0;) {
        placed.info.stride[d] = stride;
        stride *= std::max<int64_t>(placed.info.shape[d], 1);
      }
    }
    placed.saved_location = storage.location.empty() ? "cpu" : storage.location;
    placed.placed_location = slice.target.Name();
    placed.byte_size =
        static_cast<uint64_t>(std::max<int64_t>(placed.info.NumElements(), 0)) *
        DTypeSize(placed.info.dtype);
    if (auto it = slice_place_.find(slice.tensor); it != slice_place_.end()) {
      placed.buffer_index = it->second.first;
      placed.storage_byte_offset = it->second.second;
    }
    model_->tensors.push_back(std::move(placed));
  }

  const LoadPlan& plan_;
  const LoadSource& source_;
  const Checkpoint& checkpoint_;
  DeviceSet& devices_;
  ThreadPool& workers_;
  const CancellationToken& cancel_;
  const ProgressFn& progress_;
  SharedRegionReads* const shared_reads_;
  std::shared_ptr<LoadedModel> model_;
  // Storage index -> (buffer index, byte offset in the buffer).
  std::map<size_t, std::pair<int, uint64_t>> storage_place_;
  // Sliced tensor index -> (buffer index, byte offset of its storage or of
  // its own bytes).
  std::map<size_t, std::pair<int, uint64_t>> slice_place_;
  uint64_t bytes_done_ = 0;
  // Bytes this load read through shared_reads_ (from the pipeline's thread).
  std::atomic<uint64_t> shared_bytes_read_{0};
};

}  // namespace

absl::StatusOr<std::shared_ptr<LoadedModel>> Place(
    const LoadPlan& plan, const LoadSource& source,
    const std::string& placement_key, DeviceSet& devices, ThreadPool& workers,
    const CancellationToken& cancel, const ProgressFn& progress,
    SharedRegionReads* shared_reads) {
  return Placer(plan, source, placement_key, devices, workers, cancel, progress,
                shared_reads)
      .Run();
}

}  // namespace weightd
