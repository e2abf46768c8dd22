// A checkpoint placed somewhere: its tensor table and the buffers that hold its
// bytes. This is what the cache holds and what the service describes to
// clients.
#ifndef WEIGHTD_LOADER_CACHE_LOADED_MODEL_H_
#define WEIGHTD_LOADER_CACHE_LOADED_MODEL_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "loader/cache/checkpoint_cache.h"
#include "loader/format/checkpoint.h"
#include "loader/io/mapped_file.h"

namespace weightd {

// Where a group of storages lives.
struct PlacedBuffer {
  enum class Kind { kFile, kSharedMemory, kGpu };
  Kind kind = Kind::kFile;
  uint64_t size = 0;
  // kFile: the checkpoint itself (clients map it read-only and check the
  // identity).
  std::string path;
  FileIdentity identity;
  // kSharedMemory: a POSIX shared-memory segment name.
  std::string shm_name;
  // kGpu: the arena's device and IPC handle.
  std::string gpu_uuid;
  int gpu_index = -1;
  std::string ipc_handle;  // 64 bytes
  bool fake_gpu = false;
  // The daemon's own host view of the bytes (file mapping or segment); null for
  // GPU arenas.
  const uint8_t* host_data = nullptr;
};

struct PlacedTensor {
  TensorInfo info;  // dtype after any cast; storage_index refers to the
                    // checkpoint's storages
  std::string saved_location;
  std::string placed_location;  // "cpu", "cuda:0", "meta"
  int buffer_index = -1;        // -1: meta (no bytes)
  uint64_t storage_byte_offset = 0;
  uint64_t byte_size = 0;  // numel * element size
};

class LoadedModel : public CacheValue {
 public:
  // Keeps whatever owns the bytes (mapping, segments, arenas) alive with the
  // model.
  struct Owned {
    virtual ~Owned() = default;
  };

  std::string path;
  FileIdentity identity;
  CheckpointFormat format = CheckpointFormat::kTorchZip;
  std::string placement;  // canonical placement spec
  std::vector<PlacedTensor> tensors;
  std::vector<PlacedBuffer> buffers;
  std::map<std::string, std::string> extra_files;
  std::string metadata_json;
  TierBytes resident;
  uint64_t bytes_read = 0;
  std::vector<std::unique_ptr<Owned>> owned;

  // The checkpoint's original storages and the mapped file bytes (kept for
  // ReadTensors).
  std::vector<StorageInfo> source_storages;
  const uint8_t* file_data = nullptr;
  uint64_t file_size = 0;

  TierBytes ResidentBytes() const override { return resident; }

  // The tensor's elements, row-major, little-endian, in its placed dtype: from
  // the host buffer it lives in, or (GPU and meta placements) recomputed from
  // the mapped checkpoint.
  absl::Status ReadTensorBytes(size_t tensor_index, std::string* out) const;
};

}  // namespace weightd

#endif  // WEIGHTD_LOADER_CACHE_LOADED_MODEL_H_
