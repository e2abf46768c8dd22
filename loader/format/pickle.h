// A restricted unpickler: reads pickle protocols 0-5 into an inert value tree.
// Nothing is ever called or imported. Globals are resolved against the
// allowlist torch.load(weights_only=True) uses (plus a few inert builtins);
// any other global is refused by its dotted name with its byte offset. Tensor
// rebuild functions produce tensor records instead of tensors.
#ifndef WEIGHTD_LOADER_FORMAT_PICKLE_H_
#define WEIGHTD_LOADER_FORMAT_PICKLE_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
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

// Python's type name of a value ("int", "dict", "torch.Tensor", ...).
std::string PyTypeName(const PyValue* v);
// Python's str() of a dict key / scalar: ints decimal, floats repr, True,
// None, tuples "(1, 'a')", bytes "b'x'".
std::string PyStr(const PyValue* v);

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

enum class StringEncoding { kUtf8, kLatin1, kBytes };

struct UnpicklerOptions {
  // Prefix of every error message, e.g. "model.pt: archive/data.pkl".
  std::string context;
  // How Python 2 str (STRING/BINSTRING/SHORT_BINSTRING) is decoded.
  StringEncoding encoding = StringEncoding::kUtf8;
  // TorchScript archives: `__torch__.*` classes are data (objects with
  // attributes), and torch.jit._pickle helpers are understood.
  bool torchscript = false;
  size_t max_mark_depth = 1000;
  size_t max_stack = 1 << 20;
  size_t max_memo = 1 << 24;
  size_t max_values = 1 << 25;
  size_t max_string_bytes = 256 << 20;
  size_t max_dims = 64;
};

class Unpickler;

// Called for PERSID/BINPERSID. Must return a value (typically kStorage) made
// with Unpickler::NewValue, or an error (without offset; the unpickler adds
// it).
using PersistentLoader =
    std::function<absl::StatusOr<PyValue*>(Unpickler& unpickler, PyValue* pid)>;

struct PickleResult {
  std::shared_ptr<PyHeap> heap;
  PyValue* root = nullptr;
  std::vector<PickledTensor> tensors;
  size_t bytes_consumed = 0;  // through STOP
};

class Unpickler {
 public:
  Unpickler(absl::string_view data, UnpicklerOptions options,
            PersistentLoader persistent_loader);

  // Reads one pickle (through STOP). Further pickles in the same byte stream
  // (the legacy format) are read by calling Load again; values from all of
  // them live in the same heap and tensor table.
  absl::StatusOr<PyValue*> Load();

  PyValue* NewValue(PyKind kind);
  std::vector<PickledTensor>& tensors() { return tensors_; }
  size_t offset() const { return pos_; }
  PickleResult Release();

 private:
  absl::Status Error(size_t at, absl::string_view what) const;
  absl::Status Step(uint8_t op, size_t op_pos, bool* stop);
  absl::StatusOr<PyValue*> Pop(size_t at);
  absl::StatusOr<std::vector<PyValue*>> PopMark(size_t at);
  // PEP 3154 framing: no opcode may straddle the end of its frame.
  absl::Status CheckFrameHolds(size_t n);
  absl::Status ReadBytes(size_t n, absl::string_view* out);
  absl::Status ReadLine(absl::string_view* out);
  absl::StatusOr<PyValue*> MakeGlobal(std::string module, std::string name,
                                      size_t at);
  absl::StatusOr<PyValue*> Call(PyValue* callable, PyValue* args, size_t at);
  absl::Status Build(PyValue* inst, PyValue* state, size_t at);
  absl::Status SetItem(PyValue* dict, PyValue* key, PyValue* value, size_t at);
  absl::StatusOr<PyValue*> RebuildTensor(const std::string& fn,
                                         const std::vector<PyValue*>& args,
                                         size_t at);
  absl::StatusOr<PyValue*> DecodePy2String(absl::string_view raw);
  absl::Status MemoPut(uint64_t id, PyValue* v, size_t at);
  absl::StatusOr<PyValue*> MemoGet(uint64_t id, size_t at);
  absl::StatusOr<PyValue*> Top(size_t at);
  absl::Status Push(PyValue* v, size_t at);
  absl::StatusOr<PyValue*> MakeInt(absl::string_view decimal, size_t at);

  absl::string_view data_;
  UnpicklerOptions options_;
  PersistentLoader persistent_loader_;
  size_t pos_ = 0;
  size_t op_pos_ = 0;  // where the opcode being read starts
  // Inside a FRAME: reads must end by frame_end_ (one past its last byte).
  bool in_frame_ = false;
  size_t frame_end_ = 0;
  std::shared_ptr<PyHeap> heap_;
  std::vector<PyValue*> stack_;
  std::vector<size_t> marks_;
  std::vector<PyValue*> memo_vec_;
  absl::flat_hash_map<uint64_t, PyValue*> memo_map_;
  size_t memo_count_ = 0;
  absl::flat_hash_map<const PyValue*, absl::flat_hash_map<std::string, size_t>>
      dict_index_;
  size_t values_ = 0;
  std::vector<PickledTensor> tensors_;
  int protocol_ = 0;
};

}  // namespace weightd

#endif  // WEIGHTD_LOADER_FORMAT_PICKLE_H_
