#include "client/inspect/inspect_command.h"

#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "loader/common/json.h"

namespace weightd {
namespace {

using ::testing::HasSubstr;

const char kViews[] = "tests/fixtures/data/views.pt";

TEST(InspectTest, Table) {
  std::ostringstream out, err;
  EXPECT_EQ(RunInspect({kViews}, out, err), 0);
  EXPECT_THAT(out.str(), HasSubstr("torch-zip, 9 tensors"));
  EXPECT_THAT(out.str(), HasSubstr("NAME"));
  EXPECT_THAT(out.str(), HasSubstr("transposed   float32  [6, 4]"));
  EXPECT_TRUE(err.str().empty());
}

TEST(InspectTest, JsonWithHashes) {
  std::ostringstream out, err;
  ASSERT_EQ(RunInspect({"--json", "--hash", kViews}, out, err), 0) << err.str();
  auto j = ParseJson(out.str());
  ASSERT_TRUE(j.ok()) << j.status();
  EXPECT_EQ(j->Find("format")->string_value(), "torch-zip");
  const Json& t = j->Find("tensors")->array()[2];
  EXPECT_EQ(t.Find("name")->string_value(), "transposed");
  EXPECT_EQ(t.Find("dtype")->string_value(), "float32");
  EXPECT_EQ(t.Find("stride")->array()[0].int_value(), 1);
  EXPECT_EQ(t.Find("sha256")->string_value().size(), 64u);
  EXPECT_EQ(j->Find("extra_files"), nullptr);
}

TEST(InspectTest, TorchScriptExtraFiles) {
  std::ostringstream out, err;
  ASSERT_EQ(RunInspect({"--json", "tests/fixtures/data/script.pt"}, out, err),
            0);
  auto j = ParseJson(out.str());
  ASSERT_TRUE(j.ok());
  EXPECT_EQ(j->Find("format")->string_value(), "torchscript");
  EXPECT_EQ(j->Find("extra_files")->Find("notes.txt")->string_value(), "hello");
  EXPECT_EQ(j->Find("tensors")->array()[0].Find("sha256"), nullptr);
}

TEST(InspectTest, BadFileOneLine) {
  for (const char* f :
       {"tests/fixtures/data/bad_truncated.pt",
        "tests/fixtures/data/bad_evil.pt", "tests/fixtures/data/bad_random.pt",
        "tests/fixtures/data/does_not_exist.pt"}) {
    std::ostringstream out, err;
    EXPECT_EQ(RunInspect({"--json", f}, out, err), 1) << f;
    std::string e = err.str();
    EXPECT_THAT(e, HasSubstr(f));
    ASSERT_FALSE(e.empty());
    EXPECT_EQ(e.find('\n'), e.size() - 1) << e;
    EXPECT_TRUE(out.str().empty());
  }
}

TEST(InspectTest, Usage) {
  std::ostringstream out, err;
  EXPECT_EQ(RunInspect({}, out, err), 2);
  EXPECT_EQ(RunInspect({"--bogus", kViews}, out, err), 2);
  EXPECT_THAT(err.str(), HasSubstr("usage"));
}

}  // namespace
}  // namespace weightd
