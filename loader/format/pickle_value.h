// The inert values an unpickling produces: what the pickle machine
// (pickle.h), the torch globals (pickle_globals.h), the Python repr helpers
// (pickle_repr.h) and the readers share. Nothing here runs or imports code.
#ifndef WEIGHTD_LOADER_FORMAT_PICKLE_VALUE_H_
#define WEIGHTD_LOADER_FORMAT_PICKLE_VALUE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "loader/format/dtype.h"

namespace weightd {

enum class PyKind : uint8_t {
  kNone,
  kBool,
  kInt,
  kBigInt,  // s: decimal digits (from the LONG1/LONG4 payload)
  kFloat,
  kComplex,  // f, f2
  kStr,      // s: UTF-8
  kBytes,    // s
  kByteArray,
  kTuple,  // items; s: "torch.Size" for one, else empty
  kList,   // items
  kDict,   // pairs (ordered); state: BUILD state (OrderedDict attributes);
           // s: "collections.OrderedDict" / "collections.Counter", empty for
           // a plain dict
  kSet,    // items
  kFrozenSet,
  kGlobal,   // s: dotted name ("torch.FloatStorage", "__torch__.M")
  kObject,   // s: class dotted name; pairs: attributes (when the BUILD
             // state is a dict); state: raw BUILD state (nullptr: no BUILD)
  kTensor,   // index: into PickleResult::tensors; b: a torch.nn.Parameter
  kStorage,  // index: storage index chosen by the persistent loader
  kDevice,   // s: "cuda:0"
  kDType,    // dtype
  kSlice,    // items: start, stop, step
};

struct PyValue {
  PyKind kind = PyKind::kNone;
  bool b = false;
  DType dtype = DType::kUInt8;
  int64_t i = 0;
  int64_t index = 0;
  double f = 0, f2 = 0;
  std::string s;
  std::vector<PyValue*> items;
  std::vector<std::pair<PyValue*, PyValue*>> pairs;
  PyValue* state = nullptr;
  // Storages: set by the persistent loader. `untyped` storages hold bytes;
  // tensors on them carry their own dtype (_rebuild_tensor_v3).
  bool untyped = false;
  uint64_t storage_nbytes = 0;
};

// Owns every value of an unpickling; values never move once created.
class PyHeap {
 public:
  PyValue* New() {
    if (blocks_.empty() || used_ == kBlock) {
      blocks_.emplace_back(new PyValue[kBlock]);
      used_ = 0;
    }
    ++size_;
    return &blocks_.back()[used_++];
  }
  size_t size() const { return size_; }

 private:
  static constexpr size_t kBlock = 1024;
  std::vector<std::unique_ptr<PyValue[]>> blocks_;
  size_t used_ = 0;
  size_t size_ = 0;
};

struct PickledTensor {
  int64_t storage = 0;  // PyValue::index of the storage
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  std::vector<int64_t> stride;
  int64_t storage_offset = 0;
  // One past the last element touched, times element size; 0 when empty.
  uint64_t extent_bytes = 0;
  bool requires_grad = false;
  bool is_parameter = false;
  bool is_conj = false;
  bool is_neg = false;
  size_t pickle_offset = 0;  // where the rebuild call appears
};

}  // namespace weightd

#endif  // WEIGHTD_LOADER_FORMAT_PICKLE_VALUE_H_
