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
// by name) and builds the JSON metadata tree (tensors become
// {"__tensor__": name}). `prefix` is prepended to names ("" for none).
// Refuses graphs nested deeper than options.max_depth or that expand to far
// more values than they hold (shared references).
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
