// A restricted unpickler: the pickle machine (opcodes of protocols 0-5, stack,
// marks, memo, PEP 3154 frames, bounds) reading into an inert value tree
// (pickle_value.h). Nothing is ever called or imported: globals are resolved
// and called through the torch globals table (pickle_globals.h), which
// refuses any other global by its dotted name; the error gets its byte
// offset here. Tensor rebuild functions produce tensor records instead of
// tensors.
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
#include "loader/format/pickle_globals.h"
// PyTypeName and PyStr, which every reader's messages use.
#include "loader/format/pickle_repr.h"
#include "loader/format/pickle_value.h"

namespace weightd {

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

class Unpickler final : private GlobalContext {
 public:
  Unpickler(absl::string_view data, UnpicklerOptions options,
            PersistentLoader persistent_loader);

  // Reads one pickle (through STOP). Further pickles in the same byte stream
  // (the legacy format) are read by calling Load again; values from all of
  // them live in the same heap and tensor table.
  absl::StatusOr<PyValue*> Load();

  PyValue* NewValue(PyKind kind) override;
  std::vector<PickledTensor>& tensors() override { return tensors_; }
  size_t offset() const { return pos_; }
  PickleResult Release();

 private:
  // GlobalContext, for the globals' behaviours.
  absl::Status SetItem(PyValue* dict, PyValue* key, PyValue* value) override;
  size_t max_dims() const override { return options_.max_dims; }
  size_t opcode_offset() const override { return op_pos_; }

  absl::Status Error(size_t at, absl::string_view what) const;
  absl::Status Step(uint8_t op, size_t op_pos, bool* stop);
  absl::StatusOr<PyValue*> Pop(size_t at);
  absl::StatusOr<std::vector<PyValue*>> PopMark(size_t at);
  // PEP 3154 framing: no opcode may straddle the end of its frame.
  absl::Status CheckFrameHolds(size_t n);
  absl::Status ReadBytes(size_t n, absl::string_view* out);
  absl::Status ReadLine(absl::string_view* out);
  absl::StatusOr<PyValue*> MakeGlobal(absl::string_view module,
                                      absl::string_view name, size_t at);
  absl::StatusOr<PyValue*> Call(PyValue* callable, PyValue* args, size_t at);
  absl::Status Build(PyValue* inst, PyValue* state, size_t at);
  absl::Status SetItem(PyValue* dict, PyValue* key, PyValue* value, size_t at);
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
