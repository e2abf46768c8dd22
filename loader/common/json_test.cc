#include "loader/common/json.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace weightd {
namespace {

using ::testing::HasSubstr;

TEST(JsonTest, ParsesAndDumpsRoundTrip) {
  auto j = ParseJson(
      R"({"a": 1, "b": [true, false, null], "c": "x\ny\u00e9", "d": -2.5,
          "e": {}, "f": [], "big": 12345678901234})");
  ASSERT_TRUE(j.ok()) << j.status();
  EXPECT_EQ(j->Find("a")->int_value(), 1);
  EXPECT_TRUE(j->Find("b")->array()[0].bool_value());
  EXPECT_EQ(j->Find("c")->string_value(), "x\ny\xc3\xa9");
  EXPECT_DOUBLE_EQ(j->Find("d")->double_value(), -2.5);
  EXPECT_EQ(j->Find("big")->int_value(), 12345678901234);
  EXPECT_EQ(
      j->Dump(),
      R"({"a":1,"b":[true,false,null],"c":"x\nyé","d":-2.5,"e":{},"f":[],"big":12345678901234})");
  auto again = ParseJson(j->Dump(true));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *j);
}

TEST(JsonTest, KeepsKeyOrder) {
  auto j = ParseJson(R"({"z":1,"a":2,"m":3})");
  ASSERT_TRUE(j.ok());
  EXPECT_EQ(j->object()[0].first, "z");
  EXPECT_EQ(j->object()[2].first, "m");
}

TEST(JsonTest, PrettyPrint) {
  Json o = Json::MakeObject();
  o.Set("x", 1);
  Json arr = Json::MakeArray();
  arr.Append("s");
  o.Set("y", arr);
  EXPECT_EQ(o.Dump(true), "{\n  \"x\": 1,\n  \"y\": [\"s\"]\n}");
  Json nested = Json::MakeArray();
  nested.Append(Json::MakeObject());
  EXPECT_EQ(nested.Dump(true), "[\n  {}\n]");
}

TEST(JsonTest, DoublesRoundTrip) {
  Json a = Json::MakeArray();
  a.Append(0.1);
  a.Append(1.0);
  a.Append(1e300);
  EXPECT_EQ(a.Dump(), "[0.1,1.0,1e+300]");
}

TEST(JsonTest, SurrogatePairs) {
  auto j = ParseJson(R"("\ud83d\ude00")");
  ASSERT_TRUE(j.ok());
  EXPECT_EQ(j->string_value(), "\xF0\x9F\x98\x80");
  EXPECT_FALSE(ParseJson(R"("\ud83d")").ok());
  EXPECT_FALSE(ParseJson(R"("\ude00")").ok());
}

TEST(JsonTest, RejectsInvalid) {
  const char* bad[] = {
      "",      "{",       "[1,]",      "{\"a\":1,}",   "01",    "1.",  "-",
      "tru",   "\"\t\"",  "{\"a\" 1}", "[1 2]",        "1 2",   "nan", "'x'",
      "{1:2}", "\"\\x\"", "\"\xff\"",  "\"\xc0\x80\"", "/*c*/1"};
  for (const char* b : bad) {
    EXPECT_FALSE(ParseJson(b).ok()) << b;
  }
}

TEST(JsonTest, DuplicateKeysRefused) {
  auto j = ParseJson(R"({"a":1,"a":2})");
  ASSERT_FALSE(j.ok());
  EXPECT_THAT(j.status().message(), HasSubstr("duplicate key \"a\""));
}

TEST(JsonTest, DepthLimit) {
  std::string deep(100, '[');
  deep += std::string(100, ']');
  auto j = ParseJson(deep);
  ASSERT_FALSE(j.ok());
  EXPECT_THAT(j.status().message(), HasSubstr("nesting deeper than 64"));
  JsonParseOptions opts;
  opts.max_depth = 200;
  EXPECT_TRUE(ParseJson(deep, opts).ok());
}

TEST(JsonTest, SizeLimit) {
  JsonParseOptions opts;
  opts.max_size = 4;
  EXPECT_FALSE(ParseJson("[1,2,3]", opts).ok());
}

TEST(JsonTest, EscapesControlCharacters) {
  std::string out;
  AppendJsonString(std::string("a\x01\"\\", 4), &out);
  EXPECT_EQ(out, "\"a\\u0001\\\"\\\\\"");
}

}  // namespace
}  // namespace weightd
