// Runs LLVMFuzzerTestOneInput over seed files so fuzz targets double as
// regression tests in ordinary builds (no libFuzzer needed). Arguments are
// files or directories (searched recursively); with none, $FUZZ_SEEDS.
#include <dirent.h>
#include <sys/stat.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

void Collect(const std::string& path, std::vector<std::string>* out) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return;
  if (S_ISREG(st.st_mode)) {
    out->push_back(path);
    return;
  }
  if (!S_ISDIR(st.st_mode)) return;
  DIR* dir = opendir(path.c_str());
  if (dir == nullptr) return;
  while (struct dirent* e = readdir(dir)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    Collect(path + "/" + name, out);
  }
  closedir(dir);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> files;
  for (int i = 1; i < argc; ++i) Collect(argv[i], &files);
  if (argc == 1 && getenv("FUZZ_SEEDS") != nullptr) {
    Collect(getenv("FUZZ_SEEDS"), &files);
  }
  size_t runs = 0;
  for (const std::string& f : files) {
    std::ifstream in(f, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    std::string data = ss.str();
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(data.data()),
                           data.size());
    ++runs;
    // Every prefix of small seeds as well: truncation is the common
    // corruption.
    if (data.size() <= 4096) {
      for (size_t n = 0; n < data.size(); n += 1 + data.size() / 64) {
        LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(data.data()),
                               n);
        ++runs;
      }
    }
  }
  // A few fixed edge inputs.
  LLVMFuzzerTestOneInput(nullptr, 0);
  const uint8_t one[] = {0x80};
  LLVMFuzzerTestOneInput(one, 1);
  printf("ran %zu inputs from %zu seed files\n", runs, files.size());
  return files.empty() && argc > 1 ? 1 : 0;
}
