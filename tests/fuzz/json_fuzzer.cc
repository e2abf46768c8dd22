// Fuzzes the JSON parser (loader/common/json). Whatever ParseJson accepts must
// serialize and parse back to an equal value, compact and pretty; every
// refusal must name a byte offset inside the input; and it must disagree with
// nlohmann's own acceptor only where weightd is deliberately stricter.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/string_view.h"
#include "loader/common/json.h"
#include "nlohmann/json.hpp"

namespace {

void Check(bool ok, const char* what, absl::string_view detail) {
  if (ok) return;
  fprintf(stderr, "json_fuzzer: %s: %.*s\n", what,
          static_cast<int>(detail.size()), detail.data());
  abort();
}

// "invalid JSON at byte N: ...", N at most the input size.
void CheckRefusal(absl::string_view message, size_t input_size) {
  constexpr absl::string_view kPrefix = "invalid JSON at byte ";
  Check(absl::StartsWith(message, kPrefix), "refusal names no offset", message);
  absl::string_view rest = message.substr(kPrefix.size());
  const size_t colon = rest.find(':');
  uint64_t offset = 0;
  Check(colon != absl::string_view::npos &&
            absl::SimpleAtoi(rest.substr(0, colon), &offset) &&
            offset <= input_size,
        "refusal offset outside the input", message);
}

// The refusals nlohmann's acceptor would not make.
bool IsDeliberatelyStricter(absl::string_view message) {
  return absl::StrContains(message, "duplicate key") ||
         absl::StrContains(message, "nesting deeper than") ||
         absl::StrContains(message, "unexpected character 0xef") ||  // BOM
         absl::StrContains(message, "trailing characters");  // after a NUL
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  weightd::JsonParseOptions options;
  options.max_depth = 32;
  auto parsed = weightd::ParseJson(text, options);
  const bool library_accepts =
      nlohmann::json::accept(text.data(), text.data() + text.size());
  if (!parsed.ok()) {
    const absl::string_view message = parsed.status().message();
    CheckRefusal(message, size);
    if (library_accepts) {
      Check(IsDeliberatelyStricter(message), "refused what nlohmann accepts",
            message);
    }
    return 0;
  }
  Check(library_accepts, "accepted what nlohmann refuses", text);
  weightd::JsonParseOptions again = options;
  again.max_size = std::numeric_limits<size_t>::max();
  for (bool pretty : {false, true}) {
    const std::string dumped = parsed->Dump(pretty);
    auto back = weightd::ParseJson(dumped, again);
    Check(back.ok(), "Dump output does not parse",
          back.ok() ? dumped : back.status().message());
    Check(*back == *parsed, "Dump does not round-trip", dumped);
  }
  return 0;
}
