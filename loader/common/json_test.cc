#include "loader/common/json.h"

#include "absl/strings/str_cat.h"
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

// The message ParseJson gives for `text`, or "OK".
std::string ErrorOf(absl::string_view text,
                    const JsonParseOptions& options = {}) {
  auto j = ParseJson(text, options);
  return j.ok() ? "OK" : std::string(j.status().message());
}

TEST(JsonTest, ErrorsNameTheByteOffset) {
  struct Case {
    std::string text;
    const char* message;
  };
  const Case cases[] = {
      {"", "at byte 0: unexpected end of input"},
      {"  \n", "at byte 3: unexpected end of input"},
      {"[1,2", "at byte 4: unexpected end of input"},
      {"[1,]", "at byte 3: unexpected ']'"},
      {"[,1]", "at byte 1: unexpected ','"},
      {"[1 23]", "at byte 3: unexpected number literal"},
      {"[true false]", "at byte 6: unexpected false literal"},
      {"{\"a\" \"b\"}", "at byte 5: unexpected string literal"},
      {"{\"a\":1,}", "at byte 7: unexpected '}'"},
      {"{1:2}", "at byte 1: unexpected number literal"},
      {"[nul]", "at byte 4: invalid literal"},
      {"1.", "at byte 2: invalid number"},
      {"\"ab\tc\"", "at byte 3: invalid string: control character"},
      {"\"a\\x\"", "at byte 3: invalid string: forbidden character"},
      {"\"abc", "at byte 4: invalid string: missing closing quote"},
      {"[1e400]", "at byte 1: number out of the range of a double"},
      {"/*c*/1", "at byte 0: invalid literal"},
  };
  for (const Case& c : cases) {
    EXPECT_THAT(ErrorOf(c.text),
                HasSubstr(std::string("invalid JSON ") + c.message))
        << c.text;
  }
}

TEST(JsonTest, MessagesDoNotQuoteTheInput) {
  // nlohmann's "last read: '...'" would copy raw (here invalid) bytes.
  std::string text = "\"" + std::string(1000, 'a') + "\xff\"";
  EXPECT_EQ(ErrorOf(text),
            "invalid JSON at byte 1001: invalid string: ill-formed UTF-8 byte");
}

TEST(JsonTest, DuplicateKeysRefusedAtAnyDepth) {
  EXPECT_EQ(ErrorOf(R"({"a":{"b":[{"c":1, "c":2}]}})"),
            "invalid JSON at byte 19: duplicate key \"c\"");
  // Past the linear scan (16 keys) a hash set takes over.
  std::string big = "{";
  for (int i = 0; i < 100; ++i) absl::StrAppend(&big, "\"k", i, "\":", i, ",");
  const size_t duplicate_at = big.size();
  big += "\"k57\":0}";
  EXPECT_EQ(ErrorOf(big), absl::StrCat("invalid JSON at byte ", duplicate_at,
                                       ": duplicate key \"k57\""));
  big.replace(duplicate_at, 5, "\"k100\"");
  ASSERT_TRUE(ParseJson(big).ok()) << big;
  // The same key in different objects is fine.
  EXPECT_EQ(ErrorOf(R"({"a":{"x":1},"b":{"x":2},"x":3})"), "OK");
}

TEST(JsonTest, DuplicateKeyMessagesAreEscapedAndBounded) {
  EXPECT_THAT(ErrorOf("{\"q\\\"\\n\":1,\"q\\\"\\n\":2}"),
              HasSubstr("duplicate key \"q\\\"\\n\""));
  const std::string key(1000, 'k');
  const std::string text = absl::StrCat("{\"", key, "\":1,\"", key, "\":2}");
  const std::string message = ErrorOf(text);
  EXPECT_THAT(message,
              HasSubstr(absl::StrCat("duplicate key \"", std::string(64, 'k'),
                                     "\" (truncated)")));
  EXPECT_LT(message.size(), 200u);
}

TEST(JsonTest, DuplicateKeysAllowedWhenAsked) {
  JsonParseOptions opts;
  opts.allow_duplicate_keys = true;
  auto j = ParseJson(R"({"a":1,"a":2})", opts);
  ASSERT_TRUE(j.ok()) << j.status();
  ASSERT_EQ(j->size(), 2u);
  EXPECT_EQ(j->object()[1].second.int_value(), 2);
}

TEST(JsonTest, DepthCountsEveryValueBelowTheTop) {
  JsonParseOptions opts;
  opts.max_depth = 2;
  // The top value is at depth 0, its elements at 1, theirs at 2.
  EXPECT_EQ(ErrorOf("[[[]]]", opts), "OK");
  EXPECT_EQ(ErrorOf("[[{}]]", opts), "OK");
  EXPECT_EQ(ErrorOf("[[[1]]]", opts),
            "invalid JSON at byte 3: nesting deeper than 2");
  EXPECT_EQ(ErrorOf("[[ [ []]]]", opts),
            "invalid JSON at byte 5: nesting deeper than 2");
  EXPECT_EQ(ErrorOf(R"({"a":{"b":{"c":"d"}}})", opts),
            "invalid JSON at byte 15: nesting deeper than 2");
  opts.max_depth = 0;
  EXPECT_EQ(ErrorOf("7", opts), "OK");
  EXPECT_EQ(ErrorOf("[]", opts), "OK");
  EXPECT_EQ(ErrorOf("[1]", opts),
            "invalid JSON at byte 1: nesting deeper than 0");
  // The default: 65 nested arrays are fine, 66 are not.
  EXPECT_EQ(ErrorOf(std::string(65, '[') + std::string(65, ']')), "OK");
  EXPECT_EQ(ErrorOf(std::string(66, '[') + std::string(66, ']')),
            "invalid JSON at byte 65: nesting deeper than 64");
  // Far deeper input stops at the bound rather than exhausting anything.
  EXPECT_THAT(ErrorOf(std::string(1 << 20, '[')),
              HasSubstr("nesting deeper than 64"));
}

TEST(JsonTest, SizeLimitIsInclusive) {
  JsonParseOptions opts;
  opts.max_size = 7;
  EXPECT_EQ(ErrorOf("[1,2,3]", opts), "OK");
  EXPECT_EQ(ErrorOf("[1,2,3] ", opts), "JSON text is 8 bytes, limit is 7");
}

TEST(JsonTest, IntegersStayExactWhereInt64Holds) {
  auto j = ParseJson(
      "[9223372036854775807, -9223372036854775808, 0, -0, 4096,"
      " 9223372036854775808, -9223372036854775809, 18446744073709551615,"
      " 18446744073709551616, 1.0, 1E2, 1e-400, -2.5e-3]");
  ASSERT_TRUE(j.ok()) << j.status();
  const Json::Array& a = j->array();
  ASSERT_EQ(a.size(), 13u);
  EXPECT_TRUE(a[0].is_int());
  EXPECT_EQ(a[0].int_value(), INT64_MAX);
  EXPECT_TRUE(a[1].is_int());
  EXPECT_EQ(a[1].int_value(), INT64_MIN);
  EXPECT_TRUE(a[2].is_int());
  EXPECT_TRUE(a[3].is_int());
  EXPECT_EQ(a[3].int_value(), 0);
  EXPECT_EQ(a[4].int_value(), 4096);
  // Beyond int64, doubles (rounded the way strtod rounds).
  EXPECT_TRUE(a[5].is_double());
  EXPECT_EQ(a[5].double_value(), 9223372036854775808.0);
  EXPECT_TRUE(a[6].is_double());
  EXPECT_EQ(a[6].double_value(), -9223372036854775808.0);
  EXPECT_TRUE(a[7].is_double());
  EXPECT_EQ(a[7].double_value(), 18446744073709551616.0);
  EXPECT_TRUE(a[8].is_double());
  EXPECT_EQ(a[8].double_value(), 18446744073709551616.0);
  EXPECT_TRUE(a[9].is_double());
  EXPECT_EQ(a[9].double_value(), 1.0);
  EXPECT_TRUE(a[10].is_double());
  EXPECT_EQ(a[10].double_value(), 100.0);
  EXPECT_TRUE(a[11].is_double());
  EXPECT_EQ(a[11].double_value(), 0.0);
  EXPECT_EQ(a[12].double_value(), -2.5e-3);
  EXPECT_EQ(j->Dump(),
            "[9223372036854775807,-9223372036854775808,0,0,4096,"
            "9.223372036854776e+18,-9.223372036854776e+18,"
            "1.8446744073709552e+19,1.8446744073709552e+19,1.0,1e+02,0.0,"
            "-0.0025]");
}

TEST(JsonTest, NumbersBeyondDoubleAreRefused) {
  EXPECT_EQ(ErrorOf("1e400"),
            "invalid JSON at byte 0: number out of the range of a double");
  EXPECT_EQ(ErrorOf(" -1e400"),
            "invalid JSON at byte 1: number out of the range of a double");
  EXPECT_EQ(ErrorOf("[" + std::string(400, '9') + "]"),
            "invalid JSON at byte 1: number out of the range of a double");
  // Digits alone are no problem while the value fits.
  auto j = ParseJson(std::string(300, '9'));
  ASSERT_TRUE(j.ok()) << j.status();
  EXPECT_DOUBLE_EQ(j->double_value(), 1e300);
}

TEST(JsonTest, Utf8IsValidated) {
  struct Case {
    std::string text;
    const char* message;
  };
  const Case bad[] = {
      {"\"a\x80\"", "at byte 2: invalid string: ill-formed UTF-8 byte"},
      {"\"\xc0\x80\"", "at byte 1: invalid string: ill-formed UTF-8 byte"},
      {"\"\xe0\x80\xaf\"", "at byte 2: invalid string: ill-formed UTF-8 byte"},
      {"\"\xed\xa0\x80\"", "at byte 2: invalid string: ill-formed UTF-8 byte"},
      {"\"\xf4\x90\x80\x80\"",
       "at byte 2: invalid string: ill-formed UTF-8 byte"},
      {"\"\xe2\x82\"", "at byte 3: invalid string: ill-formed UTF-8 byte"},
      {"\"\xe2\x82", "at byte 3: invalid string: ill-formed UTF-8 byte"},
      {"{\"k\xff\":1}", "at byte 3: invalid string: ill-formed UTF-8 byte"},
      {"\xff", "at byte 0: invalid literal"},
      {"\"\\ud800x\"", "at byte 7: invalid string: surrogate"},
      {"\"\\udc00\"", "at byte 6: invalid string: surrogate"},
      {"\"\\u12g4\"", "at byte 5: invalid string: '\\u' must be followed"},
  };
  for (const Case& c : bad) {
    EXPECT_THAT(ErrorOf(c.text),
                HasSubstr(std::string("invalid JSON ") + c.message))
        << c.text;
  }
  auto j = ParseJson(
      "[\"\xe2\x82\xac\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf\", "
      "\"\\u20AC\\uD83D\\uDE00\\/\\b\\f\\n\\r\\t\\\"\\\\\"]");
  ASSERT_TRUE(j.ok()) << j.status();
  EXPECT_EQ(j->array()[0].string_value(),
            "\xe2\x82\xac\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf");
  EXPECT_EQ(j->array()[1].string_value(),
            "\xe2\x82\xac\xf0\x9f\x98\x80/\b\f\n\r\t\"\\");
}

TEST(JsonTest, ByteOrderMarkRefused) {
  EXPECT_EQ(ErrorOf("\xEF\xBB\xBF{}"),
            "invalid JSON at byte 0: unexpected character 0xef");
  EXPECT_THAT(ErrorOf("\xEF{}"), HasSubstr("invalid JSON at byte"));
}

TEST(JsonTest, TrailingGarbageRefused) {
  EXPECT_EQ(ErrorOf("{} x"),
            "invalid JSON at byte 3: trailing characters after JSON value");
  EXPECT_EQ(ErrorOf("1 2"),
            "invalid JSON at byte 2: trailing characters after JSON value");
  EXPECT_EQ(ErrorOf("[]]"),
            "invalid JSON at byte 2: trailing characters after JSON value");
  EXPECT_EQ(ErrorOf("\"a\"\"b\""),
            "invalid JSON at byte 3: trailing characters after JSON value");
  EXPECT_EQ(ErrorOf("01"),
            "invalid JSON at byte 1: trailing characters after JSON value");
  EXPECT_EQ(ErrorOf(" {} \r\n\t"), "OK");
}

TEST(JsonTest, NulBytes) {
  // Escaped, a NUL is an ordinary character of the string.
  auto j = ParseJson(R"({"a\u0000b":"\u0000"})");
  ASSERT_TRUE(j.ok()) << j.status();
  EXPECT_EQ(j->object()[0].first, std::string("a\0b", 3));
  EXPECT_EQ(j->object()[0].second.string_value(), std::string("\0", 1));
  EXPECT_EQ(ParseJson(j->Dump()).value(), *j);
  // Raw, it is refused everywhere (nlohmann alone would stop at it as if the
  // input ended there).
  EXPECT_THAT(ErrorOf(std::string("\"a\0b\"", 5)),
              HasSubstr("at byte 2: invalid string: control character U+0000"));
  EXPECT_EQ(ErrorOf(std::string("1\0", 2)),
            "invalid JSON at byte 1: trailing characters after JSON value");
  EXPECT_EQ(ErrorOf(std::string("{} \0garbage", 11)),
            "invalid JSON at byte 3: trailing characters after JSON value");
  EXPECT_EQ(ErrorOf(std::string("[1,\0]", 5)),
            "invalid JSON at byte 3: unexpected character 0x00");
  EXPECT_EQ(ErrorOf(std::string("\0", 1)),
            "invalid JSON at byte 0: unexpected character 0x00");
}

TEST(JsonTest, ParsesASafetensorsHeader) {
  auto j =
      ParseJson(R"({"__metadata__":{"format":"pt"},)"
                R"("w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}})");
  ASSERT_TRUE(j.ok()) << j.status();
  const Json* w = j->Find("w");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->Find("dtype")->string_value(), "F32");
  EXPECT_EQ(w->Find("shape")->array()[1].int_value(), 3);
  EXPECT_EQ(w->Find("data_offsets")->array()[1].int_value(), 24);
  EXPECT_EQ(j->Find("__metadata__")->Find("format")->string_value(), "pt");
}

TEST(JsonTest, EscapesControlCharacters) {
  std::string out;
  AppendJsonString(std::string("a\x01\"\\", 4), &out);
  EXPECT_EQ(out, "\"a\\u0001\\\"\\\\\"");
}

}  // namespace
}  // namespace weightd
