#include "client/shard_rules_file.h"

#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "loader/common/json.h"

namespace weightd {

// --tp_rules FILE.json: [["pattern", dim], ...], bounded as the daemon
// bounds them.
absl::StatusOr<std::vector<std::pair<std::string, int>>> ReadShardRules(
    const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat(path, ": cannot read the --tp_rules file"));
  }
  std::string text;
  constexpr size_t kMaxRulesFileBytes = 1 << 20;
  text.resize(kMaxRulesFileBytes + 1);
  in.read(text.data(), text.size());
  text.resize(in.gcount());
  if (text.size() > kMaxRulesFileBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": a --tp_rules file holds at most ",
                     kMaxRulesFileBytes, " bytes"));
  }
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", why, "; expected [[\"pattern\", dim], ...]"));
  };
  absl::StatusOr<Json> json = ParseJson(text);
  if (!json.ok()) return bad(std::string(json.status().message()));
  if (!json->is_array()) return bad("not a JSON array");
  std::vector<std::pair<std::string, int>> rules;
  for (const Json& rule : json->array()) {
    if (!rule.is_array() || rule.array().size() != 2 ||
        !rule.array()[0].is_string() || !rule.array()[1].is_int() ||
        rule.array()[1].int_value() < -1024 ||
        rule.array()[1].int_value() > 1024) {
      return bad(
          absl::StrCat("rule ", rules.size(), " is not [\"pattern\", dim]"));
    }
    rules.emplace_back(rule.array()[0].string_value(),
                       static_cast<int>(rule.array()[1].int_value()));
  }
  return rules;
}

absl::StatusOr<std::pair<int, int>> ParseTpFlag(const std::string& text) {
  std::vector<std::string> parts = absl::StrSplit(text, '/');
  int rank = 0, world = 0;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &rank) ||
      !absl::SimpleAtoi(parts[1], &world)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tp expects RANK/WORLD (e.g. 0/4), got \"", text, "\""));
  }
  return std::make_pair(rank, world);
}

}  // namespace weightd
