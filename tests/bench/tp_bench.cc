// Tensor-parallel loads through the ModelManager: W ranks on W fake GPUs each
// load their slices of a Llama-like checkpoint at once (the "llama" rule set),
// against W full loads of the same file in the same run (every rank the whole
// checkpoint, as without sharding). For each W: bytes the daemon read, GPU
// bytes held per rank, and the time until all W ranks have their tensors.
// Usage: tp_bench [--size_mib=2048] [--dir=/tmp] [--max_shm_mib=8192]
// (fake GPUs live in /dev/shm: a baseline needing more than --max_shm_mib is
// skipped and says so).
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "loader/cache/model_manager.h"
#include "tests/bench/bench_util.h"

ABSL_FLAG(uint64_t, size_mib, 2048, "checkpoint size, MiB");
ABSL_FLAG(std::string, dir, "/tmp", "where the checkpoint is written");
ABSL_FLAG(uint64_t, max_shm_mib, 8192,
          "skip a full-load row whose W copies need more fake-GPU memory "
          "(/dev/shm), MiB");

namespace weightd {
namespace {

// A bfloat16 safetensors file laid out like Llama (hidden 1024, MLP 2816,
// vocab 32768: every split dim divides by 8), with as many layers as fit in
// `size_bytes` (at least one). Returns the tensor bytes written.
absl::StatusOr<uint64_t> WriteLlamaCheckpoint(const std::string& path,
                                              uint64_t size_bytes) {
  constexpr int64_t kHidden = 1024, kMlp = 2816, kVocab = 32768;
  std::vector<bench::TensorLayout> tensors;
  tensors.push_back({"model.embed_tokens.weight", {kVocab, kHidden}});
  const uint64_t per_layer =
      2 * (4 * kHidden * kHidden + 3 * kHidden * kMlp + 2 * kHidden);
  const uint64_t fixed = 2 * (2 * kVocab * kHidden + kHidden);
  const uint64_t layers = std::max<uint64_t>(
      1, size_bytes > fixed ? (size_bytes - fixed) / per_layer : 1);
  for (uint64_t i = 0; i < layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    for (const char* name : {"q_proj", "k_proj", "v_proj", "o_proj"})
      tensors.push_back(
          {absl::StrCat(p, "self_attn.", name, ".weight"), {kHidden, kHidden}});
    tensors.push_back({p + "mlp.gate_proj.weight", {kMlp, kHidden}});
    tensors.push_back({p + "mlp.up_proj.weight", {kMlp, kHidden}});
    tensors.push_back({p + "mlp.down_proj.weight", {kHidden, kMlp}});
    tensors.push_back({p + "input_layernorm.weight", {kHidden}});
    tensors.push_back({p + "post_attention_layernorm.weight", {kHidden}});
  }
  tensors.push_back({"model.norm.weight", {kHidden}});
  tensors.push_back({"lm_head.weight", {kVocab, kHidden}});
  return bench::WriteSafetensors(path, "BF16", 2, tensors);
}

struct Result {
  double seconds = 0;
  uint64_t bytes_read = 0;
  uint64_t max_gpu_bytes = 0;  // the most any rank's GPU holds
  bool ok = true;
};

// W loads at once, rank r onto cuda:r; `sharded`: rank r of W.
Result LoadRanks(ModelManager& manager, const std::string& path, int world,
                 bool sharded) {
  Result result;
  std::vector<std::thread> ranks;
  std::vector<absl::StatusOr<ModelManager::LoadResult>> loaded(
      world, absl::UnknownError("not run"));
  const uint64_t read_before = manager.BytesRead();
  const double start = bench::Now();
  for (int rank = 0; rank < world; ++rank) {
    ranks.emplace_back([&, rank] {
      LoadSpec spec;
      spec.path = path;
      spec.target = absl::StrCat("cuda:", rank);
      if (sharded) {
        spec.shard.rank = rank;
        spec.shard.world_size = world;
        spec.shard.rule_set = "llama";
      }
      loaded[rank] = manager.Load(spec, nullptr);
    });
  }
  for (std::thread& t : ranks) t.join();
  result.seconds = bench::Now() - start;
  result.bytes_read = manager.BytesRead() - read_before;
  for (auto& one : loaded) {
    if (!one.ok()) {
      std::fprintf(stderr, "%s\n", std::string(one.status().message()).c_str());
      result.ok = false;
      continue;
    }
    uint64_t held = 0;
    for (const auto& [tier, bytes] : one->model->resident) held += bytes;
    result.max_gpu_bytes = std::max(result.max_gpu_bytes, held);
    bench::UnloadModel(manager, *one);
  }
  return result;
}

int Main() {
  const uint64_t max_shm_mib = absl::GetFlag(FLAGS_max_shm_mib);
  const std::string dir = absl::GetFlag(FLAGS_dir) + "/weightd-tp-bench";
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/llama.safetensors";
  const absl::StatusOr<uint64_t> written =
      WriteLlamaCheckpoint(path, absl::GetFlag(FLAGS_size_mib) << 20);
  if (!written.ok()) {
    std::fprintf(stderr, "cannot write %s\n", path.c_str());
    return 1;
  }
  const uint64_t tensor_bytes = *written;
  DeviceSet::Options device_options;
  device_options.fake_gpus = 8;
  ModelManager::Options options;
  options.model_roots = {dir};
  options.max_concurrent_loads = 8;  // every rank at once
  auto manager = bench::CreateModelManager(device_options, options);
  if (!manager.ok()) {
    std::fprintf(stderr, "%s\n",
                 std::string(manager.status().message()).c_str());
    return 1;
  }
  bench::ReadWholeFile(path, 8 << 20, nullptr);  // page cache warm-up
  const double mib = 1.0 / (1 << 20);
  std::printf("checkpoint: %s, %.0f MiB of bfloat16 tensors (Llama layout)\n",
              path.c_str(), tensor_bytes * mib);
  std::printf("%-3s %-8s %10s %10s %14s %10s %8s %8s\n", "W", "load", "seconds",
              "read MiB", "GPU MiB/rank", "reads/ckpt", "time x", "read x");
  for (int world : {2, 4, 8}) {
    const Result sharded = LoadRanks(**manager, path, world, true);
    if (!sharded.ok) return 1;
    std::printf("%-3d %-8s %10.3f %10.0f %14.0f %10.2f %8s %8s\n", world,
                "sliced", sharded.seconds, sharded.bytes_read * mib,
                sharded.max_gpu_bytes * mib,
                static_cast<double>(sharded.bytes_read) / tensor_bytes, "", "");
    if ((tensor_bytes >> 20) * world > max_shm_mib) {
      std::printf(
          "%-3d %-8s  skipped: %d full copies exceed --max_shm_mib=%llu\n",
          world, "full", world, static_cast<unsigned long long>(max_shm_mib));
      continue;
    }
    const Result full = LoadRanks(**manager, path, world, false);
    if (!full.ok) return 1;
    std::printf("%-3d %-8s %10.3f %10.0f %14.0f %10.2f %8.2f %8.2f\n", world,
                "full", full.seconds, full.bytes_read * mib,
                full.max_gpu_bytes * mib,
                static_cast<double>(full.bytes_read) / tensor_bytes,
                full.seconds / sharded.seconds,
                static_cast<double>(full.bytes_read) / sharded.bytes_read);
  }
  std::printf("time x, read x: the full loads' over the sliced loads'\n");
  return 0;
}

}  // namespace
}  // namespace weightd

int main(int argc, char** argv) {
  return weightd::bench::ParseFlagsAndRun(argc, argv, weightd::Main);
}
