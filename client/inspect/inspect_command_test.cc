#include "client/inspect/inspect_command.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
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

// torch.jit.save(..., _extra_files=) with binary content: valid UTF-8 stays a
// string, anything else is {"__bytes__": base64}; the output is valid JSON.
TEST(InspectTest, BinaryExtraFiles) {
  std::ostringstream out, err;
  ASSERT_EQ(RunInspect({"--json", "tests/fixtures/data/script_binary_extra.pt"},
                       out, err),
            0)
      << err.str();
  auto j = ParseJson(out.str());
  ASSERT_TRUE(j.ok()) << j.status() << "\n" << out.str();
  const Json* extra = j->Find("extra_files");
  ASSERT_NE(extra, nullptr);
  EXPECT_EQ(extra->size(), 4u);
  EXPECT_EQ(extra->Find("notes.txt")->string_value(),
            "h\xc3\xa9llo \xe2\x9c\x93");
  EXPECT_EQ(extra->Find("empty")->string_value(), "");
  std::string all_bytes;
  for (int b = 0; b < 256; ++b) all_bytes.push_back(static_cast<char>(b));
  ASSERT_TRUE(extra->Find("weights.bin")->is_object());
  EXPECT_EQ(extra->Find("weights.bin")->Find("__bytes__")->string_value(),
            absl::Base64Escape(all_bytes));
  // A UTF-16 surrogate encoded as UTF-8 is not UTF-8.
  EXPECT_EQ(extra->Find("surrogate.txt")->Find("__bytes__")->string_value(),
            absl::Base64Escape("\xed\xa0\x80"));
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

// torch.ones(1).expand(2**40) saved by torch.save: 759 bytes. Listing it is
// fine; hashing it used to run for hours and is now refused at once, naming
// the tensor and both sizes.
TEST(InspectTest, HashRefusesExpandBomb) {
  const char* bomb = "tests/fixtures/hostile/expand_bomb.pt";
  std::ostringstream out, err;
  ASSERT_EQ(RunInspect({"--json", bomb}, out, err), 0) << err.str();
  auto j = ParseJson(out.str());
  ASSERT_TRUE(j.ok()) << j.status();
  const Json& x = j->Find("tensors")->array()[0];
  EXPECT_EQ(x.Find("shape")->array()[0].int_value(), int64_t{1} << 40);
  EXPECT_EQ(x.Find("stride")->array()[0].int_value(), 0);
  std::ostringstream hash_out, hash_err;
  EXPECT_EQ(RunInspect({"--json", "--hash", bomb}, hash_out, hash_err), 1);
  EXPECT_TRUE(hash_out.str().empty());
  const std::string e = hash_err.str();
  EXPECT_THAT(e, HasSubstr(bomb));
  EXPECT_THAT(e, HasSubstr("tensor \"x\""));
  EXPECT_THAT(e, HasSubstr("claims 4398046511104 bytes over a storage of 4 "
                           "bytes"));
  EXPECT_EQ(e.find('\n'), e.size() - 1) << e;
}

// 8,192 names for one 64 KiB view: hashed once (hashing each would be 512
// MiB, far over the file's budget, so success proves the deduplication).
TEST(InspectTest, HashHashesIdenticalViewsOnce) {
  std::ostringstream out, err;
  ASSERT_EQ(
      RunInspect({"--json", "--hash", "tests/fixtures/hostile/shared_refs.pt"},
                 out, err),
      0)
      << err.str();
  auto j = ParseJson(out.str());
  ASSERT_TRUE(j.ok()) << j.status();
  const Json::Array& tensors = j->Find("tensors")->array();
  ASSERT_EQ(tensors.size(), 8192u);
  for (const Json& t : tensors) {
    // sha256 of torch.arange(2**14, dtype=torch.float32).
    ASSERT_EQ(
        t.Find("sha256")->string_value(),
        "38099e0e11f5273de608888717caeef3487b87b37ec5401891f47b90cdb610bc")
        << t.Find("name")->string_value();
  }
}

// 2,048 distinct views x[i:] of one 64 KiB storage claim about 120 MiB from
// a 226 KB file: over the hashing budget, refused with a clear line.
TEST(InspectTest, HashRefusesViewsBeyondTheFileBudget) {
  const char* views = "tests/fixtures/hostile/offset_views.pt";
  std::ostringstream out, err;
  EXPECT_EQ(RunInspect({"--hash", views}, out, err), 1);
  const std::string e = err.str();
  EXPECT_THAT(e, HasSubstr(views));
  EXPECT_THAT(e, HasSubstr("budget"));
  EXPECT_THAT(e, HasSubstr("views claiming far more bytes than the file "
                           "holds"));
  EXPECT_EQ(e.find('\n'), e.size() - 1) << e;
  std::ostringstream list_out, list_err;
  EXPECT_EQ(RunInspect({views}, list_out, list_err), 0);
  EXPECT_THAT(list_out.str(), HasSubstr("2048 tensors"));
}

TEST(InspectTest, Usage) {
  std::ostringstream out, err;
  EXPECT_EQ(RunInspect({}, out, err), 2);
  EXPECT_EQ(RunInspect({"--bogus", kViews}, out, err), 2);
  EXPECT_THAT(err.str(), HasSubstr("usage"));
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Each model directory fixture lists what torch reported for it
// (generate.py's hf_models): format, shards in index order, every tensor with
// its sha256, config.json.
TEST(InspectTest, ModelDirectoriesEqualTorch) {
  const std::pair<std::vector<std::string>, std::string> cases[] = {
      {{"tests/fixtures/hf/sharded_torch"}, "sharded_torch"},
      {{"tests/fixtures/hf/sharded_safetensors"}, "sharded_safetensors"},
      {{"tests/fixtures/hf/single_both"}, "single_both"},
      {{"--format=hf-torch", "tests/fixtures/hf/single_both"},
       "single_both.hf-torch"},
      {{"tests/fixtures/hf/hub/models--tiny--model/snapshots/"
        "0123456789abcdef"},
       "hub"},
  };
  for (const auto& [args, expected] : cases) {
    std::vector<std::string> argv = {"--json", "--hash"};
    argv.insert(argv.end(), args.begin(), args.end());
    std::ostringstream out, err;
    ASSERT_EQ(RunInspect(argv, out, err), 0) << expected << ": " << err.str();
    absl::StatusOr<Json> got = ParseJson(out.str());
    ASSERT_TRUE(got.ok()) << got.status();
    absl::StatusOr<Json> want =
        ParseJson(ReadText("tests/fixtures/hf/" + expected + ".expected.json"));
    ASSERT_TRUE(want.ok()) << expected << ": " << want.status();
    EXPECT_EQ(*got, *want) << expected << ":\n" << out.str();
  }
}

TEST(InspectTest, ModelDirectoryTable) {
  std::ostringstream out, err;
  ASSERT_EQ(RunInspect({"tests/fixtures/hf/sharded_torch"}, out, err), 0);
  EXPECT_THAT(out.str(), HasSubstr("hf-torch, 3 shard(s), 7 tensors"));
  EXPECT_THAT(out.str(), HasSubstr("pytorch_model-00002-of-00003.bin"));
}

TEST(InspectTest, BadModelDirectoryIsOneLine) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string dir = std::string(tmp ? tmp : "/tmp") + "/bad-hf-model";
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(
      "tests/fixtures/hf/sharded_safetensors/model-00001-of-00002.safetensors",
      dir + "/model-00001-of-00002.safetensors",
      std::filesystem::copy_options::overwrite_existing);
  std::ofstream(dir + "/model.safetensors.index.json")
      << R"({"weight_map": {"model.embed.weight": "model-00001-of-00002.safetensors"}})";
  std::ostringstream out, err;
  EXPECT_EQ(RunInspect({"--json", dir}, out, err), 1);
  EXPECT_THAT(err.str(), HasSubstr("of shard model-00001-of-00002.safetensors "
                                   "is not in the index"));
  EXPECT_EQ(err.str().find('\n'), err.str().size() - 1) << err.str();
  std::ostringstream out2, err2;
  EXPECT_EQ(RunInspect({"--format=hf-torch", dir}, out2, err2), 1);
  EXPECT_THAT(err2.str(), HasSubstr("not a model directory"));
}

}  // namespace
}  // namespace weightd
