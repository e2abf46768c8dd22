// Options shared by every checkpoint format reader.
#ifndef WEIGHTD_LOADER_FORMAT_READ_OPTIONS_H_
#define WEIGHTD_LOADER_FORMAT_READ_OPTIONS_H_

#include <cstddef>
#include <cstdint>
#include <string>

namespace weightd {

struct ReadOptions {
  // Used only in error messages ("model.pt: ...").
  std::string file_name;
  // How Python 2 `str` objects in old pickles are decoded (torch.load's
  // `encoding`): utf-8 (torch's default), latin1, or kept as bytes.
  enum class Py2Encoding { kUtf8, kLatin1, kBytes };
  Py2Encoding encoding = Py2Encoding::kUtf8;

  // Limits.
  size_t max_depth = 200;               // nesting of values (dicts, lists, ...)
  size_t max_mark_depth = 1000;         // nested pickle MARKs
  size_t max_string_bytes = 256 << 20;  // one pickle string / bytes value
  size_t max_pickle_values = 1 << 25;   // values created by one file's pickles
  uint64_t max_pickle_bytes = 1ull << 30;  // size of data.pkl / legacy pickles
  uint64_t max_safetensors_header = 100 << 20;
  size_t max_tensors = 1 << 22;
  size_t max_dims = 64;

  // TorchScript: also list tensors of constants.pkl (named "constants.N"),
  // which torch.jit.load(f).state_dict() does not contain.
  bool include_torchscript_constants = false;
};

}  // namespace weightd

#endif  // WEIGHTD_LOADER_FORMAT_READ_OPTIONS_H_
