#include "server/request_validation.h"

#include "gtest/gtest.h"

namespace weightd {
namespace {

namespace v1 = ::weightd::v1;

TEST(BoundForMessageTest, KeepsShortInputAndCutsLongInputWithAMarker) {
  EXPECT_EQ(BoundForMessage("/models/a.pt"), "/models/a.pt");
  std::string long_path(100000, 'x');
  std::string bounded = BoundForMessage(long_path);
  EXPECT_EQ(bounded, std::string(kMaxEchoBytes, 'x') + "...(100000 bytes)");
  // A multi-byte character straddling the cut is dropped whole.
  std::string utf8 = std::string(kMaxEchoBytes - 1, 'a') + "\xC3\xA9" + "zz";
  EXPECT_EQ(BoundForMessage(utf8),
            std::string(kMaxEchoBytes - 1, 'a') + "...(259 bytes)");
}

TEST(BoundStatusMessageTest, KeepsTheStartAndTheReason) {
  std::string message = "load " + std::string(50000, 'p') + ": no such file";
  std::string bounded = BoundStatusMessage(message);
  EXPECT_LT(bounded.size(), kMaxStatusMessageBytes + 64);
  EXPECT_EQ(bounded.substr(0, 5), "load ");
  EXPECT_NE(bounded.find("bytes cut"), std::string::npos);
  EXPECT_EQ(bounded.substr(bounded.size() - 14), ": no such file");
  EXPECT_EQ(BoundStatusMessage("short"), "short");
}

TEST(ValidateTest, RefusesEmptyOversizedAndNulInput) {
  v1::LoadRequest load;
  EXPECT_EQ(ValidateLoadRequest(load).message(), "LoadRequest.path is empty");
  load.set_path(std::string(100000, 'a'));
  absl::Status too_long = ValidateLoadRequest(load);
  EXPECT_EQ(too_long.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_LT(too_long.message().size(), 400u);
  EXPECT_NE(too_long.message().find("100000 bytes; the limit is 4096"),
            absl::string_view::npos);
  load.set_path(std::string("/models/a\0b", 11));
  EXPECT_NE(ValidateLoadRequest(load).message().find("NUL"),
            absl::string_view::npos);
  load.set_path("/models/a.pt");
  EXPECT_TRUE(ValidateLoadRequest(load).ok());
  load.add_tensor_filter(std::string(5000, 'n'));
  EXPECT_FALSE(ValidateLoadRequest(load).ok());

  EXPECT_FALSE(ValidateModelId("").ok());
  EXPECT_FALSE(ValidateModelId(std::string(2000, 'm')).ok());
  EXPECT_TRUE(ValidateModelId("m1a2b3c4.1-a.pt").ok());
  v1::ReadTensorsRequest read;
  read.set_model_id("m");
  read.add_names(std::string(2000, 't'));
  EXPECT_FALSE(ValidateReadTensorsRequest(read).ok());
}

TEST(ValidateTest, ShardSpecsAreBounded) {
  v1::LoadRequest load;
  load.set_path("/models/a.pt");
  load.mutable_shard();  // present, world size 0
  absl::Status zero = ValidateLoadRequest(load);
  EXPECT_EQ(zero.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(zero.message().find("world_size is 0"), absl::string_view::npos);
  load.mutable_shard()->set_world_size(2);
  EXPECT_TRUE(ValidateLoadRequest(load).ok());
  v1::ShardRule* rule = load.mutable_shard()->add_rules();
  rule->set_pattern(std::string(300, '*'));
  EXPECT_EQ(ValidateLoadRequest(load).code(),
            absl::StatusCode::kInvalidArgument);
  rule->set_pattern("");
  EXPECT_EQ(ValidateLoadRequest(load).code(),
            absl::StatusCode::kInvalidArgument);
  rule->set_pattern("*.w");
  EXPECT_TRUE(ValidateLoadRequest(load).ok());
  for (int i = 0; i < 1024; ++i)
    load.mutable_shard()->add_rules()->set_pattern("x");
  absl::Status many = ValidateLoadRequest(load);
  EXPECT_EQ(many.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(many.message().find("1025 entries"), absl::string_view::npos);
}

}  // namespace
}  // namespace weightd
