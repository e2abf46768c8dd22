// Tests only: a fresh directory per test, so that tests of one binary (and
// reruns, and parallel shards) never see each other's files.
#ifndef WEIGHTD_LOADER_COMMON_TEST_DIR_H_
#define WEIGHTD_LOADER_COMMON_TEST_DIR_H_

#include <set>
#include <string>

#include "absl/strings/string_view.h"

namespace weightd {
namespace testing {

// TEST_TMPDIR (Bazel's per-test scratch space), else /tmp.
std::string TestTempDir();

// An empty directory TestTempDir()/PREFIX-PID-TEST (TEST: the running gtest
// test's name), whatever an earlier run left there removed first. The
// caller removes it when done.
std::string FreshTestDir(absl::string_view prefix);

// The names in `directory` (not "." and ".."); empty where it cannot be
// read.
std::set<std::string> ListDirectory(const std::string& directory);

}  // namespace testing
}  // namespace weightd

#endif  // WEIGHTD_LOADER_COMMON_TEST_DIR_H_
