#include "loader/format/map_location.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace weightd {
namespace {

using ::testing::HasSubstr;

TEST(MapLocationTest, Keep) {
  auto m = ParseMapLocation("");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->kind, MapLocation::Kind::kKeep);
  EXPECT_EQ(*ResolveLocation(*m, "cuda:1"), "cuda:1");
  EXPECT_EQ(*ResolveLocation(*m, "cpu"), "cpu");
  EXPECT_EQ(*ResolveLocation(*m, "cuda"), "cuda:0");
}

TEST(MapLocationTest, OneTarget) {
  auto m = ParseMapLocation("cpu");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(*ResolveLocation(*m, "cuda:3"), "cpu");
  EXPECT_EQ(*ResolveLocation(*m, "mps"), "cpu");
  m = ParseMapLocation(" cuda:0 ");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(*ResolveLocation(*m, "cpu"), "cuda:0");
}

TEST(MapLocationTest, Meta) {
  auto m = ParseMapLocation("meta");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->kind, MapLocation::Kind::kMeta);
  EXPECT_EQ(*ResolveLocation(*m, "xla:0"), "meta");
}

TEST(MapLocationTest, RemapTable) {
  auto m = ParseMapLocation("cuda:1->cuda:0, cuda:2 -> cuda:0");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->kind, MapLocation::Kind::kRemap);
  EXPECT_EQ(*ResolveLocation(*m, "cuda:1"), "cuda:0");
  EXPECT_EQ(*ResolveLocation(*m, "cuda:2"), "cuda:0");
  EXPECT_EQ(*ResolveLocation(*m, "cuda:3"), "cuda:3");  // unmapped: kept
  EXPECT_EQ(*ResolveLocation(*m, "cpu"), "cpu");
  EXPECT_EQ(m->ToString(), "cuda:1->cuda:0,cuda:2->cuda:0");
  m = ParseMapLocation("mps->cpu");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(*ResolveLocation(*m, "mps"), "cpu");
}

TEST(MapLocationTest, Errors) {
  EXPECT_FALSE(ParseMapLocation("gpu").ok());
  EXPECT_FALSE(ParseMapLocation("cuda:x").ok());
  EXPECT_FALSE(ParseMapLocation("cuda:1->").ok());
  EXPECT_FALSE(ParseMapLocation("->cpu").ok());
  EXPECT_FALSE(ParseMapLocation("cuda:1->cuda:0,cuda:1->cpu").ok());
  auto m = ParseMapLocation("");
  auto r = ResolveLocation(*m, "mps");
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(),
              HasSubstr("cannot place storage saved on \"mps\""));
  m = ParseMapLocation("cuda:1->cuda:0");
  EXPECT_FALSE(ResolveLocation(*m, "xla:0").ok());
}

}  // namespace
}  // namespace weightd
