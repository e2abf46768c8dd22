#include "loader/cache/device_set.h"

#include <sys/stat.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "loader/common/logging.h"
#include "loader/common/mutex.h"
#include "loader/common/status_macros.h"
#include "loader/device/device_registry.h"
#include "loader/device/shared_memory.h"
#include "loader/device/staging_pipeline.h"
#include "loader/io/direct_io.h"
#include "loader/io/reader_factory.h"

namespace weightd {
namespace {

struct ArenaOwner : LoadedModel::Owned {
  explicit ArenaOwner(std::unique_ptr<DeviceArena> arena)
      : arena(std::move(arena)) {}
  std::unique_ptr<DeviceArena> arena;
};

struct SegmentOwner : LoadedModel::Owned {
  explicit SegmentOwner(std::unique_ptr<SharedMemorySegment> segment)
      : segment(std::move(segment)) {}
  std::unique_ptr<SharedMemorySegment> segment;
};

// SQEs in flight per pipeline: the staging ring bounds the bytes in flight,
// this only has to exceed the requests it splits into.
constexpr int kDefaultIoDepth = 64;

class RegistryDeviceSet : public DeviceSet {
 public:
  static absl::StatusOr<std::unique_ptr<DeviceSet>> Create(
      const Options& options) {
    auto set = std::unique_ptr<RegistryDeviceSet>(new RegistryDeviceSet());
    set->ReclaimDeadSharedMemory();
    DeviceRegistryOptions registry_options;
    registry_options.fake_gpus = options.fake_gpus;
    registry_options.fake.copy_delay = options.fake_gpu_copy_delay;
    ASSIGN_OR_RETURN(set->registry_, DeviceRegistry::Create(registry_options));
    ASSIGN_OR_RETURN(IoBackend backend, ParseIoBackend(options.io_backend));
    set->reader_options_.backend = backend;
    set->staging_.chunk_bytes = options.staging_chunk_bytes;
    set->staging_.num_buffers = options.staging_buffers;
    ASSIGN_OR_RETURN(set->direct_mode_, ParseDirectIoMode(options.direct_io));
    set->staging_.direct_io = set->direct_mode_;
    if (options.io_queue_depth < 0 || options.io_queue_depth > 4096) {
      return absl::InvalidArgumentError(absl::StrCat(
          "io queue depth must be in [0, 4096], got ", options.io_queue_depth));
    }
    set->reader_options_.ring_entries =
        options.io_queue_depth > 0 ? options.io_queue_depth : kDefaultIoDepth;
    set->staging_.request_bytes = options.io_request_bytes;
    // Create one reader now to learn (and log) which backend this process gets.
    ASSIGN_OR_RETURN(std::unique_ptr<Reader> probe,
                     CreateReader(set->reader_options_));
    set->io_backend_ = probe->name();
    set->io_reason_ = probe->reason();
    for (Device* gpu : set->registry_->gpus()) {
      (void)gpu;
      set->pipelines_.push_back(std::make_unique<PipelineSlot>());
    }
    return std::unique_ptr<DeviceSet>(std::move(set));
  }

  std::vector<GpuDescription> Gpus() const override {
    std::vector<GpuDescription> out;
    for (Device* gpu : registry_->gpus()) {
      GpuDescription description;
      description.index = gpu->index();
      description.uuid = gpu->uuid();
      description.name = gpu->name();
      description.fake = gpu->kind() == DeviceKind::kFakeGpu;
      auto memory = gpu->GetMemoryInfo();
      if (memory.ok()) {
        description.total_bytes = memory->total_bytes;
        description.free_bytes = memory->free_bytes;
      }
      out.push_back(std::move(description));
    }
    return out;
  }

  std::string gpu_status() const override { return registry_->cuda_status(); }
  std::string io_backend() const override { return io_backend_; }
  std::string io_backend_reason() const override { return io_reason_; }
  std::string direct_io() const override {
    return DirectIoSummary(direct_mode_);
  }
  int io_queue_depth() const override { return reader_options_.ring_entries; }
  uint64_t io_request_bytes() const override { return staging_.request_bytes; }

  absl::StatusOr<FilledArena> FillGpuArena(
      int gpu, absl::Span<const ArenaFile> files, uint64_t size,
      const std::vector<CopyRange>& ranges, const CancellationToken* cancel,
      const ProgressFn& progress) override {
    if (gpu < 0 || gpu >= static_cast<int>(pipelines_.size())) {
      return absl::InvalidArgumentError(absl::StrCat("no GPU ", gpu));
    }
    Device* device = registry_->gpus()[gpu];
    ASSIGN_OR_RETURN(StagingPipeline * pipeline, Pipeline(gpu, device));
    std::vector<FileSource> sources(files.size());
    // Reopened per load: cheap next to the load, and never stale.
    std::vector<DirectFd> direct(files.size());
    for (size_t i = 0; i < files.size(); ++i) {
      FileSource& source = sources[i];
      source.fd = files[i].fd;
      struct stat info;
      source.size = fstat(files[i].fd, &info) == 0
                        ? static_cast<uint64_t>(info.st_size)
                        : 0;
      source.name = files[i].name;
      if (direct_mode_ != DirectIoMode::kOff) {
        direct[i] = OpenDirectIo(files[i].fd, files[i].name);
        source.direct_fd = direct[i].fd.get();
        source.direct_alignment = direct[i].alignment;
      }
    }
    ASSIGN_OR_RETURN(std::unique_ptr<DeviceArena> arena,
                     pipeline->Load(size, sources, ranges, cancel, progress));
    ASSIGN_OR_RETURN(ArenaHandle handle, device->ExportHandle(*arena));
    FilledArena filled;
    filled.handle_kind = handle.kind;
    filled.ipc_handle = handle.bytes.ToString();
    filled.owner = std::make_unique<ArenaOwner>(std::move(arena));
    return filled;
  }

  absl::StatusOr<HostSegment> CreateHostSegment(uint64_t size) override {
    ASSIGN_OR_RETURN(
        std::unique_ptr<SharedMemorySegment> segment,
        SharedMemorySegment::Create(size, "weightd", /*populate=*/true));
    HostSegment out;
    out.name = segment->name();
    out.data = segment->data();
    out.owner = std::make_unique<SegmentOwner>(std::move(segment));
    return out;
  }

 private:
  // Takes this daemon's shared-memory instance (one id for its whole life)
  // and removes the segments a killed weightd left in /dev/shm. Neither
  // failure stops the daemon: only host and fake-GPU placements need it.
  void ReclaimDeadSharedMemory() {
    absl::StatusOr<std::shared_ptr<SharedMemoryInstance>> instance =
        SharedMemoryInstance::Default();
    if (!instance.ok()) {
      LogWarning("shared memory unavailable: %s", instance.status().ToString());
      return;
    }
    shm_instance_ = *instance;
    absl::StatusOr<SharedMemoryInstance::ReclaimStats> reclaimed =
        shm_instance_->ReclaimDeadInstances();
    if (!reclaimed.ok()) {
      LogWarning("reclaiming dead weightd shared memory: %s",
                 reclaimed.status().ToString());
      return;
    }
    LogInfo(
        "shared memory: instance %s; reclaimed %d segment(s), %d bytes, of %d "
        "dead weightd instance(s) in %s",
        shm_instance_->id(), reclaimed->segments, reclaimed->bytes,
        reclaimed->instances, shm_instance_->directory());
  }

  // Pipelines (with their pinned staging ring) are made on a GPU's first load.
  struct PipelineSlot {
    Mutex mu;
    std::unique_ptr<StagingPipeline> pipeline ABSL_GUARDED_BY(mu);
  };

  absl::StatusOr<StagingPipeline*> Pipeline(int gpu, Device* device) {
    PipelineSlot& slot = *pipelines_[gpu];
    MutexLock lock(&slot.mu);
    if (slot.pipeline == nullptr) {
      ASSIGN_OR_RETURN(std::unique_ptr<Reader> reader,
                       CreateReader(reader_options_));
      ASSIGN_OR_RETURN(slot.pipeline, StagingPipeline::Create(
                                          device, std::move(reader), staging_));
    }
    return slot.pipeline.get();
  }

  RegistryDeviceSet() = default;
  std::shared_ptr<SharedMemoryInstance> shm_instance_;
  std::unique_ptr<DeviceRegistry> registry_;
  ReaderOptions reader_options_;
  StagingOptions staging_;
  DirectIoMode direct_mode_ = DirectIoMode::kAuto;
  std::string io_backend_;
  std::string io_reason_;
  std::vector<std::unique_ptr<PipelineSlot>> pipelines_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<DeviceSet>> DeviceSet::Create(
    const Options& options) {
  return RegistryDeviceSet::Create(options);
}

}  // namespace weightd
