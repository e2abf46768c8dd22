// Strict UTF-8 validation for text that leaves weightd as a protobuf string
// or JSON: extra file names and contents.
#ifndef WEIGHTD_LOADER_FORMAT_UTF8_H_
#define WEIGHTD_LOADER_FORMAT_UTF8_H_

#include "absl/strings/string_view.h"

namespace weightd {

// Strict UTF-8 (no overlong forms, surrogates or code points past U+10FFFF):
// what protobuf, Python's bytes.decode("utf-8") and JSON parsers accept.
bool IsValidUtf8(absl::string_view text);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_FORMAT_UTF8_H_
