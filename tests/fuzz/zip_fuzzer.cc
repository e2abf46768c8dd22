// Fuzzes the zip reader and the torch zip / TorchScript readers on top of it.
#include <cstddef>
#include <cstdint>

#include "loader/format/reader.h"
#include "loader/format/zip.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto zip = weightd::ZipArchive::Open(bytes);
  if (zip.ok()) {
    for (const weightd::ZipEntry& e : zip->entries()) {
      if (e.uncompressed_size < (1 << 20)) (void)zip->Extract(e);
    }
  }
  weightd::ReadOptions options;
  options.file_name = "fuzz.pt";
  (void)weightd::ReadCheckpoint(bytes, options);
  return 0;
}
