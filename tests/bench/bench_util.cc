#include "tests/bench/bench_util.h"

#include <algorithm>
#include <fstream>
#include <utility>

#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "loader/common/json.h"

namespace weightd {
namespace bench {

int ParseFlagsAndRun(int argc, char** argv, int (*run)()) {
  absl::ParseCommandLine(argc, argv);
  return run();
}

absl::StatusOr<uint64_t> WriteSafetensors(
    const std::string& path, const std::string& dtype, uint64_t element_bytes,
    const std::vector<TensorLayout>& tensors) {
  Json header = Json::MakeObject();
  uint64_t offset = 0;
  for (const TensorLayout& tensor : tensors) {
    uint64_t bytes = element_bytes;
    Json dims = Json::MakeArray();
    for (int64_t n : tensor.shape) {
      bytes *= n;
      dims.Append(Json(n));
    }
    Json entry = Json::MakeObject();
    entry.Set("dtype", Json(dtype));
    entry.Set("shape", std::move(dims));
    Json offsets = Json::MakeArray();
    offsets.Append(Json(offset));
    offsets.Append(Json(offset + bytes));
    entry.Set("data_offsets", std::move(offsets));
    header.Set(tensor.name, std::move(entry));
    offset += bytes;
  }
  std::string text = header.Dump();
  while (text.size() % 8) text += ' ';
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  const uint64_t header_size = text.size();
  out.write(reinterpret_cast<const char*>(&header_size), 8);
  out << text;
  std::vector<char> block(8 << 20);
  for (size_t i = 0; i < block.size(); ++i) {
    block[i] = static_cast<char>(i * 31 + 7);
  }
  for (uint64_t done = 0; done < offset;) {
    const uint64_t n = std::min<uint64_t>(block.size(), offset - done);
    out.write(block.data(), n);
    done += n;
  }
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return offset;
}

absl::StatusOr<std::unique_ptr<ModelManager>> CreateModelManager(
    const DeviceSet::Options& device_options,
    const ModelManager::Options& options) {
  auto devices = DeviceSet::Create(device_options);
  if (!devices.ok()) return devices.status();
  return ModelManager::Create(options, *std::move(devices));
}

void UnloadModel(ModelManager& manager, ModelManager::LoadResult& loaded) {
  const std::string id = loaded.model_id;
  loaded.model.reset();
  (void)manager.Unload(id, true);
}

absl::StatusOr<std::unique_ptr<Reader>> CreateReaderWithDepth(IoBackend backend,
                                                              int queue_depth) {
  ReaderOptions options;
  options.backend = backend;
  options.queue_depth = queue_depth;
  options.pread_threads = queue_depth;
  return CreateReader(options);
}

absl::Status ReadWithReader(Reader* reader, int fd, uint64_t size,
                            uint64_t chunk, uint8_t* dst) {
  const size_t depth = static_cast<size_t>(reader->queue_depth());
  uint64_t next = 0;
  std::vector<ReadResult> results;
  while (next < size || reader->in_flight() > 0) {
    while (next < size && reader->in_flight() < depth) {
      ReadRequest request;
      request.fd = fd;
      request.offset = next;
      request.buffer = dst + next;
      request.length = static_cast<size_t>(std::min(chunk, size - next));
      request.tag = next;
      absl::Status s = reader->Submit(request);
      if (!s.ok()) return s;
      next += request.length;
    }
    results.clear();
    absl::Status s = reader->Wait(1, &results);
    if (!s.ok()) return s;
    for (const ReadResult& r : results) {
      if (!r.status.ok()) return r.status;
      if (r.bytes_read != std::min(chunk, size - r.tag)) {
        return absl::DataLossError(absl::StrCat("short read at ", r.tag));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace bench
}  // namespace weightd
