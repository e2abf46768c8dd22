// The --tp_rules file of `weightctl load` and `weightctl inspect`:
// [["pattern", dim], ...] in JSON, bounded as the daemon bounds a request.
#ifndef WEIGHTD_CLIENT_SHARD_RULES_FILE_H_
#define WEIGHTD_CLIENT_SHARD_RULES_FILE_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace weightd {

// The rules in `path`, in order. NOT_FOUND when it cannot be read;
// INVALID_ARGUMENT naming the file for more than 1 MiB, malformed JSON or a
// rule that is not ["pattern", dim] with |dim| <= 1024.
absl::StatusOr<std::vector<std::pair<std::string, int>>> ReadShardRules(
    const std::string& path);

// --tp RANK/WORLD as two integers; INVALID_ARGUMENT quoting `text` otherwise.
absl::StatusOr<std::pair<int, int>> ParseTpFlag(const std::string& text);

}  // namespace weightd

#endif  // WEIGHTD_CLIENT_SHARD_RULES_FILE_H_
