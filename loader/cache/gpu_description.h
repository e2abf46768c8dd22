// What the daemon knows of one GPU it places weights on.
#ifndef WEIGHTD_LOADER_CACHE_GPU_DESCRIPTION_H_
#define WEIGHTD_LOADER_CACHE_GPU_DESCRIPTION_H_

#include <cstdint>
#include <string>

namespace weightd {

struct GpuDescription {
  int index = 0;
  std::string uuid;  // "GPU-..."
  std::string name;
  uint64_t total_bytes = 0;
  uint64_t free_bytes = 0;
  bool fake = false;
};

}  // namespace weightd

#endif  // WEIGHTD_LOADER_CACHE_GPU_DESCRIPTION_H_
