#include "loader/common/test_child.h"

#include <signal.h>
#include <unistd.h>

#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace weightd {
namespace testing {
namespace {

TEST(RunInChildTest, ReturnsWhatTheChildReturnedOrItsSignal) {
  const pid_t parent = getpid();
  EXPECT_EQ(RunInChild([&] { return getpid() != parent ? 7 : 0; }), 7);
  EXPECT_EQ(RunInChild([] { return 0; }), 0);
  EXPECT_EQ(RunInChild([] {
              raise(SIGKILL);
              return 0;
            }),
            128 + SIGKILL);
}

TEST(LingeringChildTest, ReportsThenHoldsUntilKilled) {
  LingeringChild child(
      [](ReportAndWait report) { report(absl::StrCat(getpid())); });
  ASSERT_FALSE(child.report().empty());
  int pid = 0;
  ASSERT_TRUE(absl::SimpleAtoi(child.report(), &pid));
  EXPECT_NE(pid, getpid());
  EXPECT_EQ(kill(pid, 0), 0);  // still alive after reporting
  child.Kill();
  EXPECT_NE(kill(pid, 0), 0);  // killed and reaped
  child.Kill();                // once only
}

TEST(LingeringChildTest, ASetupThatDoesNotReportLeavesTheReportEmpty) {
  LingeringChild child([](ReportAndWait) {});
  EXPECT_TRUE(child.report().empty());
}

}  // namespace
}  // namespace testing
}  // namespace weightd
