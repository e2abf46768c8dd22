#include "loader/cache/loaded_model.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "loader/cache/convert.h"
#include "loader/cache/mapped_read.h"
#include "loader/cache/shard.h"
#include "loader/common/status_macros.h"
#include "loader/format/tensor_bytes.h"

namespace weightd {
namespace {

// Copies `count` placed elements starting at element `first` of the storage
// a tensor views, wherever its placed bytes can be read on the host.
class PlacedElementSource {
 public:
  PlacedElementSource(const LoadedModel& model, const PlacedTensor& tensor)
      : model_(model),
        tensor_(tensor),
        storage_(model.source_storages[tensor.info.storage_index]),
        element_size_(DTypeSize(tensor.info.dtype)) {
    const bool in_segment =
        tensor.buffer_index >= 0 &&
        model.buffers[tensor.buffer_index].kind ==
            PlacedBuffer::Kind::kSharedMemory &&
        model.buffers[tensor.buffer_index].host_data != nullptr;
    if (in_segment) {
      segment_ = model.buffers[tensor.buffer_index].host_data +
                 tensor.storage_byte_offset;
    }
    storage_elements_ = storage_.num_bytes / DTypeSize(storage_.dtype);
    // A slice with its own bytes holds exactly its elements, contiguous.
    if (in_segment && tensor.source_view) {
      storage_elements_ =
          element_size_ == 0 ? 0 : tensor.byte_size / element_size_;
    }
  }

  // Whether the bytes come from the mapped checkpoint (not a segment).
  bool reads_file() const { return segment_ == nullptr; }

  absl::Status Copy(uint64_t first, uint64_t count, uint8_t* out) const {
    if (first > storage_elements_ || count > storage_elements_ - first) {
      return absl::OutOfRangeError(absl::StrCat(
          model_.path, ": tensor ", tensor_.info.name, " reads elements ",
          first, "+", count, " of a storage of ", storage_elements_));
    }
    if (segment_ != nullptr) {
      std::memcpy(out, segment_ + first * element_size_, count * element_size_);
      return absl::OkStatus();
    }
    return ConvertStorageElements(
        storage_,
        StorageSourceBytes(storage_,
                           model_.FileOf(tensor_.info.storage_index).data()),
        tensor_.info.dtype, first, count, out);
  }

 private:
  const LoadedModel& model_;
  const PlacedTensor& tensor_;
  const StorageInfo& storage_;
  const size_t element_size_;
  const uint8_t* segment_ = nullptr;
  uint64_t storage_elements_ = 0;
};

// Copies the view's elements [first, first + count) in row-major order, in
// runs that are contiguous in the storage.
absl::Status GatherElements(const TensorInfo& info, uint64_t first,
                            uint64_t count, size_t element_size,
                            const PlacedElementSource& source, uint8_t* out) {
  return ForEachStorageRun(
      info, first, count,
      [&](uint64_t storage_element, uint64_t run, uint64_t out_element) {
        return source.Copy(storage_element, run,
                           out + out_element * element_size);
      });
}

// Little-endian whatever the host's byte order (the layout is the proto's).
void AppendLe32(uint32_t value, std::string* out) {
  for (int shift = 0; shift < 32; shift += 8)
    out->push_back(static_cast<char>((value >> shift) & 0xff));
}

void AppendLe64(uint64_t value, std::string* out) {
  for (int shift = 0; shift < 64; shift += 8)
    out->push_back(static_cast<char>((value >> shift) & 0xff));
}

constexpr uint32_t kPackedVersion = 1;
constexpr uint32_t kPackedRecordBytes = 48;

}  // namespace

std::optional<PackedTensorTable> PackTensorTable(
    const std::vector<PlacedTensor>& tensors) {
  size_t dims = 0;
  size_t name_bytes = 0;
  for (const PlacedTensor& tensor : tensors) {
    // Neither fits the table; the repeated form says exactly what the file
    // holds (and clients refuse a stride list of the wrong length).
    if (tensor.info.name.find('\0') != std::string::npos ||
        tensor.info.stride.size() != tensor.info.shape.size()) {
      return std::nullopt;
    }
    dims += tensor.info.shape.size();
    name_bytes += tensor.info.name.size() + 1;
  }
  PackedTensorTable table;
  // The daemon's own model: counts are far below 2^32 (the request bounds).
  absl::flat_hash_map<absl::string_view, uint32_t> string_index;
  auto index_of = [&](absl::string_view text) {
    auto [it, added] = string_index.try_emplace(text, string_index.size());
    if (added) table.strings.emplace_back(text);
    return it->second;
  };
  std::string& packed = table.records;
  packed.reserve(16 + tensors.size() * kPackedRecordBytes + dims * 16);
  AppendLe32(kPackedVersion, &packed);
  AppendLe32(kPackedRecordBytes, &packed);
  AppendLe32(static_cast<uint32_t>(tensors.size()), &packed);
  AppendLe32(static_cast<uint32_t>(dims), &packed);
  for (const PlacedTensor& tensor : tensors) {
    AppendLe32(index_of(DTypeName(tensor.info.dtype)), &packed);
    AppendLe32(index_of(tensor.saved_location), &packed);
    AppendLe32(index_of(tensor.placed_location), &packed);
    AppendLe32(static_cast<uint32_t>(tensor.buffer_index), &packed);
    AppendLe32(static_cast<uint32_t>(tensor.info.shape.size()), &packed);
    AppendLe32(tensor.info.requires_grad ? 1 : 0, &packed);
    AppendLe64(static_cast<uint64_t>(tensor.info.storage_offset), &packed);
    AppendLe64(tensor.storage_byte_offset, &packed);
    AppendLe64(tensor.byte_size, &packed);
  }
  for (const PlacedTensor& tensor : tensors)
    for (int64_t size : tensor.info.shape)
      AppendLe64(static_cast<uint64_t>(size), &packed);
  for (const PlacedTensor& tensor : tensors)
    for (int64_t stride : tensor.info.stride)
      AppendLe64(static_cast<uint64_t>(stride), &packed);
  table.names.reserve(name_bytes);
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (i > 0) table.names.push_back('\0');
    table.names += tensors[i].info.name;
  }
  return table;
}

LoadedModel::PackedTableMemo& LoadedModel::PackedTableMemo::operator=(
    const PackedTableMemo& other) {
  // The assigned model's tensors are new: its table is built again.
  if (this != &other) {
    MutexLock lock(&mu_);
    built_ = false;
    table_.reset();
  }
  return *this;
}

const PackedTensorTable* LoadedModel::PackedTableMemo::Get(
    const std::vector<PlacedTensor>& tensors) {
  // Concurrent first callers wait for one build rather than each encoding.
  MutexLock lock(&mu_);
  if (!built_) {
    table_ = PackTensorTable(tensors);
    built_ = true;
  }
  return table_.has_value() ? &*table_ : nullptr;
}

const PackedTensorTable* LoadedModel::PackedTable() const {
  return packed_table_.Get(tensors);
}

bool LoadedModel::ReadsFile() const {
  for (const PlacedTensor& tensor : tensors) {
    if (PlacedElementSource(*this, tensor).reads_file()) return true;
  }
  return false;
}

std::string LoadedModel::FormatName() const {
  return directory ? directory->format : CheckpointFormatName(format);
}

const MappedFile& LoadedModel::FileOf(size_t storage_index) const {
  if (directory == nullptr) return *file;
  return *directory->shard_files[directory->storage_shard[storage_index]];
}

absl::Status LoadedModel::ReadTensorRange(size_t tensor_index, uint64_t offset,
                                          uint64_t length, uint8_t* out) const {
  if (tensor_index >= tensors.size()) {
    return absl::OutOfRangeError(
        absl::StrCat(path, ": no tensor ", tensor_index));
  }
  const PlacedTensor& tensor = tensors[tensor_index];
  const size_t element_size = DTypeSize(tensor.info.dtype);
  if (element_size == 0 || offset % element_size != 0 ||
      length % element_size != 0 || offset > tensor.byte_size ||
      length > tensor.byte_size - offset) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": bytes ", offset, "+", length, " of tensor ", tensor.info.name,
        " (", tensor.byte_size, " bytes of ", element_size,
        "-byte elements) are not a range of whole elements"));
  }
  // Work is bounded by what the file holds, not by what a view claims (a
  // stride-0 expand of one element to 2^40).
  const StorageInfo& storage = source_storages[tensor.info.storage_index];
  absl::Status bounded = CheckViewWorkBounded(
      tensor.info, PlacedStorageBytes(storage, tensor.info.dtype));
  if (!bounded.ok()) {
    return absl::Status(bounded.code(),
                        absl::StrCat(path, ": ", bounded.message()));
  }
  if (length == 0) return absl::OkStatus();
  if (tensor.info.shape.size() != tensor.info.stride.size()) {
    return absl::InternalError(absl::StrCat(path, ": tensor ", tensor.info.name,
                                            " has mismatched shape/stride"));
  }
  PlacedElementSource source(*this, tensor);
  if (!source.reads_file()) {
    return GatherElements(tensor.info, offset / element_size,
                          length / element_size, element_size, source, out);
  }
  const TensorInfo& view =
      tensor.source_view ? *tensor.source_view : tensor.info;
  return ReadMapped(FileOf(tensor.info.storage_index), [&] {
    return GatherElements(view, offset / element_size, length / element_size,
                          element_size, source, out);
  });
}

}  // namespace weightd
