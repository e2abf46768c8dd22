// The globals a checkpoint's pickle may name, in one table that is both the
// allowlist torch.load(weights_only=True) uses (plus a few inert builtins)
// and what each global does: what GLOBAL pushes for it, what calling it
// yields, and what BUILD does to the object calling it made. Nothing is ever
// imported or run; tensor rebuild functions produce tensor records. A global
// that has no row is refused by its dotted name.
#ifndef WEIGHTD_LOADER_FORMAT_PICKLE_GLOBALS_H_
#define WEIGHTD_LOADER_FORMAT_PICKLE_GLOBALS_H_

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "loader/format/pickle_value.h"

namespace weightd {

// What a global's behaviour may use of the unpickling it runs in. Errors it
// returns carry no offset or file: the unpickler adds both.
class GlobalContext {
 public:
  // A value owned by the unpickling's heap, counted against its bounds.
  virtual PyValue* NewValue(PyKind kind) = 0;
  // dict[key] = value with Python's key equality (1 == 1.0 == True).
  virtual absl::Status SetItem(PyValue* dict, PyValue* key, PyValue* value) = 0;
  // The tensor records; PyKind::kTensor values index into it.
  virtual std::vector<PickledTensor>& tensors() = 0;
  // Most dimensions a rebuilt tensor may have.
  virtual size_t max_dims() const = 0;
  // Where the opcode that runs the behaviour starts (tensor records keep it).
  virtual size_t opcode_offset() const = 0;

 protected:
  ~GlobalContext() = default;
};

// What GLOBAL (or STACK_GLOBAL, INST) pushes for a row's global.
enum class GlobalPushes {
  kName,   // PyKind::kGlobal named "module.name"
  kDType,  // PyKind::kDType: torch.float32, torch.half, ...
};

// What calling a global yields. `fn` is the called global's "module.name";
// `args` its positional arguments.
using GlobalCall = absl::StatusOr<PyValue*>(GlobalContext& context,
                                            const std::string& fn,
                                            const std::vector<PyValue*>& args);
// What BUILD does to an object the row's call made (PyKind::kObject of its
// class).
using GlobalBuild = absl::Status(GlobalContext& context, PyValue* object,
                                 PyValue* state);
// Whether (module, name) is one of a family row's globals.
using GlobalFamily = bool(absl::string_view module, absl::string_view name);

struct TorchGlobal {
  // `call` is a reference: a row cannot be written without saying what
  // calling its global does (globals that are only values refuse the call,
  // which is their behaviour).
  constexpr TorchGlobal(absl::string_view name, GlobalFamily* family,
                        bool torchscript_only, GlobalPushes pushes,
                        GlobalCall& call, GlobalBuild* build)
      : name(name),
        family(family),
        torchscript_only(torchscript_only),
        pushes(pushes),
        call(&call),
        build(build) {}

  // The global's "module.name"; a family row's spelling of its members
  // ("torch.<dtype>").
  absl::string_view name;
  // Family rows (dtypes, storage and tensor classes, TorchScript classes):
  // which globals belong. nullptr: exactly `name`.
  GlobalFamily* family;
  // Allowed only in TorchScript archives (UnpicklerOptions::torchscript).
  bool torchscript_only;
  GlobalPushes pushes;
  GlobalCall* call;  // never null
  // What BUILD does to the objects `call` makes; nullptr where `call` makes
  // no PyKind::kObject.
  GlobalBuild* build;
};

// Every row, families after exact names.
absl::Span<const TorchGlobal> TorchGlobals();

// The row of module.name (Python 2 names already mapped), or nullptr: not
// allowed. Ignores torchscript_only (the caller decides).
const TorchGlobal* FindTorchGlobal(absl::string_view module,
                                   absl::string_view name);

// GLOBAL/STACK_GLOBAL/INST: the value pushed for module.name as the pickle
// wrote them (Python 2 names are mapped first: __builtin__ -> builtins, ...),
// or an error naming the refused global.
absl::StatusOr<PyValue*> LoadGlobal(GlobalContext& context,
                                    absl::string_view module,
                                    absl::string_view name, bool torchscript);

// REDUCE/NEWOBJ/OBJ/INST: calls `callable` (a PyKind::kGlobal) with `args`
// (a tuple or list) as its row says.
absl::StatusOr<PyValue*> CallGlobal(GlobalContext& context,
                                    const PyValue* callable,
                                    const PyValue* args);

// BUILD on a PyKind::kObject: as the row of its class says.
absl::Status BuildObject(GlobalContext& context, PyValue* object,
                         PyValue* state);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_FORMAT_PICKLE_GLOBALS_H_
