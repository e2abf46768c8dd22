// Walks an unpickled value tree: names every tensor by its dotted path (like
// state_dict() keys) and turns the non-tensor values into JSON.
#ifndef WEIGHTD_LOADER_FORMAT_PYTREE_H_
#define WEIGHTD_LOADER_FORMAT_PYTREE_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "loader/common/json.h"
#include "loader/format/checkpoint.h"
#include "loader/format/pickle.h"
#include "loader/format/read_options.h"

namespace weightd {

struct NamedTensor {
  std::string name;
  int64_t tensor = 0;  // index into PickleResult::tensors
};

// Appends every tensor reachable from `root` to `out` with its dotted path
// (dict keys by Python str(), list/tuple indices in decimal, object attributes
// by name) and builds the JSON tree of the whole value, from which a client
// rebuilds exactly what torch.load returns (weightd.load). JSON null, bools,
// numbers, strings and arrays are None, bool, int/float, str and list. Every
// other value is an object whose first key is a marker "__x__":
//   {"__tensor__": name[, "__parameter__": true]}   a tensor (a Parameter)
//   {"__tuple__": [...]}  {"__size__": [...]} (torch.Size)  {"__set__": [...]}
//   {"__frozenset__": [...]}  {"__slice__": [start, stop, step]}
//   {"__int__": "decimal"} (beyond int64)  {"__float__": "nan"|"inf"|"-inf"}
//   {"__complex__": [re, im]}  {"__bytes__": base64}  {"__bytearray__": b64}
//   {"__device__": "cuda:0"}  {"__dtype__": "float32"}  {"__global__": name}
//   {"__storage__": index}  {"__repr__": str()} (a key weightd cannot keep)
// A dict is a JSON object when its keys are strings none of which looks like
// a marker; otherwise {"__items__": [[key, value], ...]}. An OrderedDict or
// Counter adds "__class__": "collections.OrderedDict" first and its
// attributes (a state_dict's _metadata) as "__state__": {...} last; an
// object is {"__class__": name, attribute: value, ...}. `prefix` is
// prepended to names ("" for none). Refuses graphs nested deeper than
// options.max_depth or that expand to far more values than they hold (shared
// references).
absl::Status WalkPyTree(const PyValue* root, const std::string& prefix,
                        const ReadOptions& options, size_t heap_size,
                        std::vector<NamedTensor>* out, Json* metadata);

// JSON for one value without naming anything (tensors as
// {"__tensor__": path}).
Json PyScalarToJson(const PyValue* v);

// Turns named pickled tensors into TensorInfos of `checkpoint`, checking each
// view's extent against its storage's size. Storage indices of the pickled
// tensors are indices into checkpoint->storages.
absl::Status AddTensors(const std::vector<NamedTensor>& named,
                        const std::vector<PickledTensor>& tensors,
                        const ReadOptions& options, Checkpoint* checkpoint);

// "file.pt: " or "" when the options name no file.
std::string FilePrefix(const ReadOptions& options);
// INVALID_ARGUMENT naming the file: "<file>: <what>".
absl::Status InvalidFile(const ReadOptions& options, absl::string_view what);

StringEncoding ToStringEncoding(ReadOptions::Py2Encoding e);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_FORMAT_PYTREE_H_
