// Fuzzes the restricted unpickler (all encodings, TorchScript mode) and the
// value-tree walk, plus the legacy reader that drives it over raw bytes.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "loader/format/legacy.h"
#include "loader/format/pickle.h"
#include "loader/format/pytree.h"

namespace {

absl::StatusOr<weightd::PyValue*> FakeStorage(weightd::Unpickler& u,
                                              weightd::PyValue* pid) {
  weightd::PyValue* s = u.NewValue(weightd::PyKind::kStorage);
  s->dtype = weightd::DType::kFloat32;
  s->index = 0;
  return s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  uint8_t mode = size > 0 ? data[0] : 0;
  weightd::UnpicklerOptions o;
  o.encoding = static_cast<weightd::StringEncoding>(mode % 3);
  o.torchscript = (mode & 4) != 0;
  o.max_values = 1 << 20;
  weightd::Unpickler u(bytes, o, FakeStorage);
  auto root = u.Load();
  if (root.ok()) {
    weightd::PickleResult r = u.Release();
    std::vector<weightd::NamedTensor> named;
    weightd::Json json;
    weightd::ReadOptions ro;
    (void)weightd::WalkPyTree(*root, "", ro, r.heap->size(), &named, &json);
    (void)json.Dump();
  }
  weightd::ReadOptions ro;
  ro.file_name = "fuzz.pt";
  (void)weightd::ReadTorchLegacy(bytes, ro);
  return 0;
}
