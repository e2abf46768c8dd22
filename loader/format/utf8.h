// Strict UTF-8 validation for text that leaves weightd as a protobuf string
// or JSON: extra file names and contents.
#ifndef WEIGHTD_LOADER_FORMAT_UTF8_H_
#define WEIGHTD_LOADER_FORMAT_UTF8_H_

#include <string>

#include "absl/strings/string_view.h"

namespace weightd {

// Strict UTF-8 (no overlong forms, surrogates or code points past U+10FFFF):
// what protobuf, Python's bytes.decode("utf-8") and JSON parsers accept.
bool IsValidUtf8(absl::string_view text);

// `text` with every byte that is not part of valid UTF-8 replaced by U+FFFD:
// for text that must reach a protobuf string field whatever a file held.
std::string ToValidUtf8(absl::string_view text);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_FORMAT_UTF8_H_
