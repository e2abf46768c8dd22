// Metadata parse time of ReadCheckpoint vs torch.load of the same files,
// measured in the same run.
//
//   bazel run -c opt //tests/bench:parse_bench -- [--tensors=N] [--iters=N]
//       [--python=/usr/bin/python3] [FILE...]
//
// Without FILEs it writes N-tensor (default 2000) checkpoints with real torch
// (zip, legacy, safetensors) into a temp dir. torch.load is timed by the
// Python interpreter (skipped, with a note, when torch cannot be imported).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "loader/format/reader.h"

ABSL_FLAG(int, tensors, 2000, "tensors per generated checkpoint");
ABSL_FLAG(int, iters, 50,
          "ReadCheckpoint runs per file (torch.load: a tenth, 3 at least)");
ABSL_FLAG(std::string, python, "/usr/bin/python3",
          "the Python that writes checkpoints and times torch.load");

namespace {

std::string RunCapture(const std::string& cmd, int* status) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) {
    *status = -1;
    return out;
  }
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  *status = pclose(p);
  return out;
}

constexpr char kWriter[] = R"PY(
import collections, json, struct, sys, warnings
warnings.filterwarnings("ignore")
import torch
n, d = int(sys.argv[1]), sys.argv[2]
sd = collections.OrderedDict()
for i in range(n):
    sd[f"layers.{i // 8}.block.{i % 8}.weight"] = torch.randn(4, 4)
torch.save(sd, f"{d}/bench.pt")
torch.save(sd, f"{d}/bench_legacy.pt", _use_new_zipfile_serialization=False)
header, blob = {}, bytearray()
for k, t in sd.items():
    raw = t.numpy().tobytes()
    header[k] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [len(blob), len(blob) + len(raw)]}
    blob += raw
h = json.dumps(header).encode()
open(f"{d}/bench.safetensors", "wb").write(struct.pack("<Q", len(h)) + h + blob)
)PY";

constexpr char kTimer[] = R"PY(
import sys, time, warnings
warnings.filterwarnings("ignore")
import torch
f, iters = sys.argv[1], int(sys.argv[2])
if f.endswith(".safetensors"):
    print("nan"); sys.exit(0)
torch.load(f)
ts = []
for _ in range(iters):
    t0 = time.perf_counter(); torch.load(f); ts.append(time.perf_counter() - t0)
ts.sort()
print(ts[len(ts) // 2] * 1e3)
)PY";

std::string Quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) {
    if (c == '\'') {
      q += "'\\''";
    } else {
      q += c;
    }
  }
  return q + "'";
}

struct Mapped {
  void* p = nullptr;
  size_t n = 0;
};

bool Map(const std::string& path, Mapped* m) {
  int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) return false;
  struct stat st;
  fstat(fd, &st);
  m->n = st.st_size;
  m->p = mmap(nullptr, m->n, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
  close(fd);
  return m->p != MAP_FAILED;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  const int tensors = absl::GetFlag(FLAGS_tensors);
  const int iters = absl::GetFlag(FLAGS_iters);
  const std::string python = absl::GetFlag(FLAGS_python);
  std::vector<std::string> files(args.begin() + 1, args.end());
  int status = 0;
  RunCapture(Quote(python) + " -c 'import torch' 2>/dev/null", &status);
  bool have_torch = status == 0;
  if (files.empty()) {
    if (!have_torch) {
      fprintf(stderr, "parse_bench: %s cannot import torch; pass FILEs\n",
              python.c_str());
      return 1;
    }
    char tmpl[] = "/tmp/weightd_bench_XXXXXX";
    std::string dir = mkdtemp(tmpl);
    std::string cmd = absl::StrCat(Quote(python), " -c ", Quote(kWriter), " ",
                                   tensors, " ", Quote(dir));
    RunCapture(cmd, &status);
    if (status != 0) {
      fprintf(stderr, "parse_bench: writing checkpoints failed\n");
      return 1;
    }
    files = {dir + "/bench.pt", dir + "/bench_legacy.pt",
             dir + "/bench.safetensors"};
  }
  printf("%-40s %-13s %8s %14s %14s %14s %9s\n", "file", "format", "tensors",
         "weightd med", "weightd min", "torch.load", "speedup");
  for (const std::string& f : files) {
    Mapped m;
    if (!Map(f, &m)) {
      fprintf(stderr, "parse_bench: cannot map %s\n", f.c_str());
      return 1;
    }
    absl::string_view bytes(static_cast<const char*>(m.p), m.n);
    weightd::ReadOptions options;
    options.file_name = f;
    auto first = weightd::ReadCheckpoint(bytes, options);
    if (!first.ok()) {
      fprintf(stderr, "%s\n", std::string(first.status().message()).c_str());
      return 1;
    }
    std::vector<double> ms;
    for (int i = 0; i < iters; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      auto c = weightd::ReadCheckpoint(bytes, options);
      auto t1 = std::chrono::steady_clock::now();
      if (!c.ok()) return 1;
      ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    double med = ms[ms.size() / 2];
    std::string torch_ms = "n/a";
    std::string speedup = "";
    if (have_torch) {
      std::string out = RunCapture(
          absl::StrCat(Quote(python), " -c ", Quote(kTimer), " ", Quote(f), " ",
                       std::max(3, iters / 10), " 2>/dev/null"),
          &status);
      double t;
      if (status == 0 && absl::SimpleAtod(out.substr(0, out.find('\n')), &t) &&
          t == t) {
        torch_ms = absl::StrFormat("%.2f ms", t);
        speedup = absl::StrFormat("%.0fx", t / med);
      }
    }
    std::string name = f.size() > 40 ? "..." + f.substr(f.size() - 37) : f;
    printf("%-40s %-13s %8zu %11.3f ms %11.3f ms %14s %9s\n", name.c_str(),
           weightd::CheckpointFormatName(first->format), first->tensors.size(),
           med, ms.front(), torch_ms.c_str(), speedup.c_str());
    munmap(m.p, m.n);
  }
  printf(
      "(weightd: ReadCheckpoint on a mapped file, metadata only, median of "
      "%d; torch.load: median, same files, same run)\n",
      iters);
  return 0;
}
