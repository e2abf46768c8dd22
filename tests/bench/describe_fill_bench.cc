// The daemon's CPU per description of a warm model, without gRPC: the compact
// form encoding its table (a model described for the first time), copying the
// kept table (every later Load and Describe), and the repeated form; each then
// serialized as gRPC would. Medians of --calls:
//   bazel run -c opt //tests/bench:describe_fill_bench -- --counts=1000,10000
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "server/proto_mapping.h"

ABSL_FLAG(std::string, counts, "1000,10000", "tensor counts, comma-separated");
ABSL_FLAG(int, calls, 50, "calls per row (the median is printed)");

namespace weightd {
namespace {

LoadedModel ManyTensorModel(int count) {
  LoadedModel model;
  model.path = "/models/bench.safetensors";
  PlacedBuffer file;
  file.path = model.path;
  model.buffers.push_back(file);
  for (int i = 0; i < count; ++i) {
    PlacedTensor t;
    t.info.name =
        "model.layers." + std::to_string(i) + ".self_attn.q_proj.weight";
    t.info.dtype = DType::kFloat32;
    t.info.shape = {4, 4};
    t.info.stride = {4, 1};
    t.saved_location = "cpu";
    t.placed_location = "cpu";
    t.buffer_index = 0;
    t.storage_byte_offset = 64ULL * i;
    t.byte_size = 64;
    model.tensors.push_back(std::move(t));
  }
  return model;
}

// The median of `calls` runs of `timed`, each returning its own seconds.
double Median(int calls, const std::function<double()>& timed) {
  std::vector<double> seconds;
  for (int i = 0; i < calls; ++i) seconds.push_back(timed());
  std::sort(seconds.begin(), seconds.end());
  return seconds[seconds.size() / 2];
}

double SecondsOf(const std::function<void()>& call) {
  auto start = std::chrono::steady_clock::now();
  call();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
      .count();
}

void Run() {
  const int calls = absl::GetFlag(FLAGS_calls);
  std::printf("%-44s %12s %12s\n", "row", "median ms", "bytes");
  for (absl::string_view text :
       absl::StrSplit(absl::GetFlag(FLAGS_counts), ',', absl::SkipEmpty())) {
    int count = 0;
    if (!absl::SimpleAtoi(text, &count)) continue;
    size_t bytes = 0;
    auto describe = [&](const LoadedModel& model, TensorListForm form) {
      v1::LoadEvent event;
      FillModelDescription("m1", model, nullptr, form, event.mutable_model());
      bytes = event.SerializeAsString().size();
    };
    const LoadedModel warm = ManyTensorModel(count);
    // A model nobody described yet: its first description encodes the table.
    const double first = Median(calls, [&] {
      LoadedModel cold = ManyTensorModel(count);
      return SecondsOf([&] { describe(cold, TensorListForm::kCompact); });
    });
    const double kept = Median(calls, [&] {
      return SecondsOf([&] { describe(warm, TensorListForm::kCompact); });
    });
    const size_t compact_bytes = bytes;
    const double repeated = Median(calls, [&] {
      return SecondsOf([&] { describe(warm, TensorListForm::kRepeated); });
    });
    std::printf("%-44s %12.3f %12zu\n",
                ("compact, first call (encodes), " + std::string(text)).c_str(),
                first * 1e3, compact_bytes);
    std::printf("%-44s %12.3f %12zu\n",
                ("compact, kept table, " + std::string(text)).c_str(),
                kept * 1e3, compact_bytes);
    std::printf("%-44s %12.3f %12zu\n",
                ("repeated, " + std::string(text)).c_str(), repeated * 1e3,
                bytes);
  }
}

}  // namespace
}  // namespace weightd

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  weightd::Run();
  return 0;
}
