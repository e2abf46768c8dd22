#include "loader/format/map_location.h"

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace weightd {

absl::StatusOr<std::string> CanonicalDevice(absl::string_view tag) {
  tag = absl::StripAsciiWhitespace(tag);
  if (tag == "cpu" || tag == "meta") return std::string(tag);
  if (tag == "cuda") return std::string("cuda:0");
  absl::string_view rest = tag;
  if (absl::ConsumePrefix(&rest, "cuda:")) {
    uint32_t index;
    if (!rest.empty() && rest.size() <= 4 &&
        std::all_of(rest.begin(), rest.end(),
                    [](char c) { return c >= '0' && c <= '9'; }) &&
        absl::SimpleAtoi(rest, &index)) {
      return absl::StrCat("cuda:", index);
    }
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown device \"", tag, "\" (expected cpu, meta, cuda or cuda:N)"));
}

std::string MapLocation::ToString() const {
  switch (kind) {
    case Kind::kKeep:
      return "";
    case Kind::kAll:
      return target;
    case Kind::kMeta:
      return "meta";
    case Kind::kRemap: {
      std::vector<std::string> parts;
      for (const auto& kv : remap) parts.push_back(kv.first + "->" + kv.second);
      return absl::StrJoin(parts, ",");
    }
  }
  return "";
}

absl::StatusOr<MapLocation> ParseMapLocation(absl::string_view spec) {
  MapLocation map;
  spec = absl::StripAsciiWhitespace(spec);
  if (spec.empty()) return map;
  if (spec.find("->") == absl::string_view::npos) {
    auto target = CanonicalDevice(spec);
    if (!target.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "bad map_location \"", spec, "\": ", target.status().message()));
    }
    if (*target == "meta") {
      map.kind = MapLocation::Kind::kMeta;
    } else {
      map.kind = MapLocation::Kind::kAll;
    }
    map.target = *target;
    return map;
  }
  map.kind = MapLocation::Kind::kRemap;
  for (absl::string_view item : absl::StrSplit(spec, ',')) {
    item = absl::StripAsciiWhitespace(item);
    std::vector<absl::string_view> sides = absl::StrSplit(item, "->");
    if (sides.size() != 2) {
      return absl::InvalidArgumentError(absl::StrCat(
          "bad map_location entry \"", item, "\" (expected FROM->TO)"));
    }
    absl::string_view from = absl::StripAsciiWhitespace(sides[0]);
    if (from.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad map_location entry \"", item, "\": empty source"));
    }
    auto to = CanonicalDevice(sides[1]);
    if (!to.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "bad map_location entry \"", item, "\": ", to.status().message()));
    }
    std::string from_s(from);
    auto canon_from = CanonicalDevice(from);
    if (canon_from.ok()) from_s = *canon_from;
    for (const auto& kv : map.remap) {
      if (kv.first == from_s) {
        return absl::InvalidArgumentError(
            absl::StrCat("map_location maps \"", from_s, "\" twice"));
      }
    }
    map.remap.emplace_back(from_s, *to);
  }
  return map;
}

absl::StatusOr<std::string> ResolveLocation(const MapLocation& map,
                                            absl::string_view saved_tag) {
  switch (map.kind) {
    case MapLocation::Kind::kMeta:
      return std::string("meta");
    case MapLocation::Kind::kAll:
      return map.target;
    case MapLocation::Kind::kRemap: {
      auto canon = CanonicalDevice(saved_tag);
      std::string key = canon.ok() ? *canon : std::string(saved_tag);
      for (const auto& kv : map.remap) {
        if (kv.first == key) return kv.second;
      }
      break;
    }
    case MapLocation::Kind::kKeep:
      break;
  }
  auto canon = CanonicalDevice(saved_tag);
  if (!canon.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot place storage saved on \"", saved_tag,
        "\": unknown device; give a map_location such as \"cpu\" or \"",
        saved_tag, "->cuda:0\""));
  }
  return *canon;
}

}  // namespace weightd
