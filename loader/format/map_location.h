// torch.load's map_location as a pure function over saved location tags.
#ifndef WEIGHTD_LOADER_FORMAT_MAP_LOCATION_H_
#define WEIGHTD_LOADER_FORMAT_MAP_LOCATION_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace weightd {

struct MapLocation {
  enum class Kind {
    kKeep,   // "": every storage where it was saved
    kAll,    // one target for every storage ("cpu", "cuda:0")
    kRemap,  // table of tag -> target; unmapped tags kept
    kMeta,   // metadata only, no bytes anywhere
  };
  Kind kind = Kind::kKeep;
  std::string target;                                      // kAll
  std::vector<std::pair<std::string, std::string>> remap;  // kRemap

  std::string ToString() const;
};

// Specs: "" (keep), "cpu", "cuda", "cuda:0", "meta",
// "cuda:1->cuda:0,cuda:2->cuda:0" (spaces allowed around tokens; "=>" and
// ":" separators are not accepted, "->" only).
absl::StatusOr<MapLocation> ParseMapLocation(absl::string_view spec);

// Where a storage saved at `saved_tag` goes: "cpu", "cuda:N", "meta". "cuda"
// alone means "cuda:0". Tags nothing can place (an unknown device type, a
// malformed index) are an error naming the tag.
absl::StatusOr<std::string> ResolveLocation(const MapLocation& map,
                                            absl::string_view saved_tag);

// Canonical "cpu" / "cuda:N" / "meta" for a device tag, or an error.
absl::StatusOr<std::string> CanonicalDevice(absl::string_view tag);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_FORMAT_MAP_LOCATION_H_
