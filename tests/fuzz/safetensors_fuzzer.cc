// Fuzzes the safetensors header validation and the strict JSON parser.
#include <cstddef>
#include <cstdint>

#include "loader/common/json.h"
#include "loader/format/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  weightd::ReadOptions o;
  o.file_name = "fuzz.safetensors";
  (void)weightd::ReadSafetensors(bytes, o);
  // The same bytes as a bare header.
  auto j = weightd::ParseJson(bytes);
  if (j.ok()) (void)weightd::ParseJson(j->Dump(true));
  return 0;
}
