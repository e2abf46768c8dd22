// A checkpoint placed somewhere: its tensor table and the buffers that hold its
// bytes. This is what the cache holds and what the service describes to
// clients.
#ifndef WEIGHTD_LOADER_CACHE_LOADED_MODEL_H_
#define WEIGHTD_LOADER_CACHE_LOADED_MODEL_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "loader/cache/checkpoint_cache.h"
#include "loader/common/mutex.h"
#include "loader/device/device.h"
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
  // kGpu: the arena's device and exported handle (how clients open it).
  std::string gpu_uuid;
  int gpu_index = -1;
  ArenaHandleKind handle_kind = ArenaHandleKind::kCudaIpc;
  std::string ipc_handle;  // 64 bytes
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
  // A tensor-parallel slice with its own contiguous bytes: where its elements
  // are in the source storage (reads of the mapping follow this, not `info`).
  std::optional<TensorInfo> source_view;
};

// A Hugging Face-style model directory loaded as one model: its shards, each
// mapped once, and the JSON files that come with it.
struct ModelDirectory {
  std::string format;                    // "hf-safetensors" | "hf-torch"
  std::vector<std::string> shards;       // file names, in index order
  std::vector<std::string> shard_paths;  // canonical (symlinks resolved)
  std::vector<std::shared_ptr<const MappedFile>> shard_files;
  // The checkpoint's storage i has its bytes in shard_files[storage_shard[i]].
  std::vector<size_t> storage_shard;
  // config.json / generation_config.json, checked to be JSON objects; ""
  // when absent.
  std::string config_json;
  std::string generation_config_json;
};

// A tensor table in weightd.v1.ModelDescription's packed layout (its fields
// packed_tensors, packed_names and packed_strings; the proto documents it).
struct PackedTensorTable {
  std::string records;               // packed_tensors
  std::string names;                 // packed_names: the names joined by NUL
  std::vector<std::string> strings;  // packed_strings: dtypes and locations
};

// The packed table of `tensors`; nullopt when a name holds a NUL byte (the
// names are NUL-separated) or a stride list's length is not its shape's.
std::optional<PackedTensorTable> PackTensorTable(
    const std::vector<PlacedTensor>& tensors);

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
  uint64_t bytes_read = 0;  // checkpoint bytes this load read from the file
  std::vector<std::unique_ptr<Owned>> owned;

  // The checkpoint's original storages and its mapping (kept for
  // ReadTensors, shared with every other model of the same file).
  std::vector<StorageInfo> source_storages;
  std::shared_ptr<const MappedFile> file;
  // Set for a model directory (`path` is the directory, `file` its first
  // shard, `identity` its index's or its one file's); null for a single file.
  std::shared_ptr<const ModelDirectory> directory;

  // "hf-safetensors" / "hf-torch" for a directory, else the file's format.
  std::string FormatName() const;
  // The mapping that holds source storage `storage_index`.
  const MappedFile& FileOf(size_t storage_index) const;

  TierBytes ResidentBytes() const override { return resident; }

  // Bytes [offset, offset + length) of the tensor's elements, row-major,
  // little-endian, in its placed dtype (tensors[i].byte_size in all), into
  // `out`: from the host segment it lives in, or (file views, GPU and meta
  // placements) converted from the mapped checkpoint. `offset` and `length`
  // are whole elements (INVALID_ARGUMENT otherwise), so a reader can stream a
  // tensor of any size through one chunk-sized buffer. DATA_LOSS when the
  // file was truncated under the mapping.
  absl::Status ReadTensorRange(size_t tensor_index, uint64_t offset,
                               uint64_t length, uint8_t* out) const;

  // Whether ReadTensorRange reads the mapped checkpoint for some tensor (its
  // bytes are not all in segments the daemon owns): then a change of the file
  // on disk changes what it would read.
  bool ReadsFile() const;

  // PackTensorTable(tensors), built by the first call and kept: a placed
  // model's tensors never change, so every description of the cache entry
  // copies these bytes instead of encoding each tensor again. Null when the
  // table cannot be packed. Safe to call from many threads; `tensors` must
  // not change after the first call (a copy or move of the model starts
  // without the table).
  const PackedTensorTable* PackedTable() const;

 private:
  class PackedTableMemo {
   public:
    PackedTableMemo() = default;
    PackedTableMemo(const PackedTableMemo&) {}
    PackedTableMemo& operator=(const PackedTableMemo&);
    const PackedTensorTable* Get(const std::vector<PlacedTensor>& tensors);

   private:
    Mutex mu_;
    bool built_ ABSL_GUARDED_BY(mu_) = false;
    // Never changes once built_ (but by assignment), so the pointer Get
    // returns stays valid without the lock.
    std::optional<PackedTensorTable> table_ ABSL_GUARDED_BY(mu_);
  };
  mutable PackedTableMemo packed_table_;
};

}  // namespace weightd

#endif  // WEIGHTD_LOADER_CACHE_LOADED_MODEL_H_
