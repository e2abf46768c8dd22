#include "client/commands.h"

#include <grpcpp/grpcpp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/inspect/inspect_command.h"
#include "client/listing.h"
#include "client/shard_rules_file.h"
#include "client/weightd_client.h"
#include "loader/common/json.h"
#include "loader/common/sha256.h"
#include "loader/common/status_macros.h"
#include "loader/format/map_location.h"
#include "proto/grpc/health/v1/health.grpc.pb.h"

namespace weightd {
namespace {

namespace v1 = ::weightd::v1;

// Flags after the command: `--name=value`, `--name value` or a bare `--switch`.
struct CommandLine {
  std::vector<std::string> positional;
  std::map<std::string, std::vector<std::string>> flags;

  bool Has(const std::string& name) const { return flags.count(name) > 0; }
  std::string Get(const std::string& name,
                  const std::string& fallback = "") const {
    auto it = flags.find(name);
    return it == flags.end() || it->second.empty() ? fallback
                                                   : it->second.back();
  }
};

absl::StatusOr<CommandLine> ParseCommandLine(
    const std::vector<std::string>& args,
    const std::vector<std::string>& switches,
    const std::vector<std::string>& valued) {
  CommandLine line;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (!absl::StartsWith(arg, "--")) {
      line.positional.push_back(arg);
      continue;
    }
    std::string name = arg.substr(2);
    std::string value;
    bool has_value = false;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    bool is_switch =
        std::find(switches.begin(), switches.end(), name) != switches.end();
    bool is_valued =
        std::find(valued.begin(), valued.end(), name) != valued.end();
    if (!is_switch && !is_valued)
      return absl::InvalidArgumentError("unknown flag --" + name);
    if (is_valued && !has_value) {
      if (i + 1 >= args.size())
        return absl::InvalidArgumentError("--" + name + " needs a value");
      value = args[++i];
    }
    line.flags[name].push_back(value);
  }
  return line;
}

int Fail(std::ostream& err, const std::string& what,
         const absl::Status& status) {
  err << "weightctl: " << what << ": " << status.message() << "\n";
  return 1;
}

// A one-line progress bar on a terminal; nothing when stderr is not one.
class ProgressBar {
 public:
  ProgressBar() : enabled_(isatty(STDERR_FILENO)) {}
  ~ProgressBar() {
    if (enabled_ && drawn_) std::fprintf(stderr, "\n");
  }
  void Update(uint64_t done, uint64_t total) {
    if (!enabled_ || total == 0) return;
    constexpr int kWidth = 30;
    int filled = static_cast<int>(kWidth * done / total);
    std::fprintf(stderr, "\r[%s%s] %3d%% %s / %s",
                 std::string(filled, '#').c_str(),
                 std::string(kWidth - filled, ' ').c_str(),
                 static_cast<int>(100 * done / total), HumanBytes(done).c_str(),
                 HumanBytes(total).c_str());
    std::fflush(stderr);
    drawn_ = true;
  }

 private:
  bool enabled_;
  bool drawn_ = false;
};

absl::StatusOr<std::unique_ptr<WeightdClient>> ConnectOrExplain(
    const std::string& address) {
  auto client = WeightdClient::Connect(address);
  if (!client.ok()) {
    return absl::UnavailableError(
        absl::StrCat(client.status().message(),
                     " (is the daemon running? start it with scripts/serve)"));
  }
  return client;
}

int Health(const std::string& address, const std::vector<std::string>& args,
           std::ostream& out, std::ostream& err) {
  auto channel =
      CreateWeightdChannel(address, ConnectionOptions::FromEnvironment());
  if (!channel.ok()) {
    err << "weightctl: " << channel.status().message() << "\n";
    return 1;
  }
  auto stub = grpc::health::v1::Health::NewStub(*channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(5));
  grpc::health::v1::HealthCheckRequest request;
  if (!args.empty()) request.set_service(args[0]);
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) {
    err << "weightctl: health check of " << address
        << " failed: " << status.error_message() << "\n";
    return 1;
  }
  out << grpc::health::v1::HealthCheckResponse::ServingStatus_Name(
             response.status())
      << "\n";
  return response.status() == grpc::health::v1::HealthCheckResponse::SERVING
             ? 0
             : 1;
}

void PrintTensorTable(const v1::ModelDescription& model, std::ostream& out) {
  out << absl::StrFormat(
      "%s  %s  %s  %d tensors  %s resident\n", model.model_id(), model.path(),
      model.format(), model.tensors_size(), HumanBytes(model.resident_bytes()));
  out << absl::StrFormat("%-48s %-14s %-20s %12s  %s\n", "NAME", "DTYPE",
                         "SHAPE", "BYTES", "LOCATION");
  for (const v1::Tensor& tensor : model.tensors()) {
    out << absl::StrFormat(
        "%-48s %-14s %-20s %12d  %s -> %s\n", tensor.name(), tensor.dtype(),
        absl::StrCat("[", absl::StrJoin(tensor.shape(), ", "), "]"),
        tensor.byte_size(), tensor.saved_location(), tensor.placed_location());
  }
}

// --tp RANK/WORLD, with --tp_rules FILE.json or --tp_rule_set NAME (default
// "llama").
absl::Status ShardOptionsFrom(const CommandLine& line,
                              ClientLoadOptions& options) {
  if (!line.Has("tp")) {
    if (line.Has("tp_rules") || line.Has("tp_rule_set")) {
      return absl::InvalidArgumentError("--tp_rules needs --tp RANK/WORLD");
    }
    return absl::OkStatus();
  }
  const std::string tp = line.Get("tp");
  std::vector<std::string> parts = absl::StrSplit(tp, '/');
  int rank = 0, world = 0;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &rank) ||
      !absl::SimpleAtoi(parts[1], &world)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tp expects RANK/WORLD (e.g. 0/4), got \"", tp, "\""));
  }
  v1::ShardSpec shard;
  shard.set_rank(rank);
  shard.set_world_size(world);
  if (line.Has("tp_rules")) {
    ASSIGN_OR_RETURN(auto rules, ReadShardRules(line.Get("tp_rules")));
    for (const auto& [pattern, dim] : rules) {
      v1::ShardRule* rule = shard.add_rules();
      rule->set_pattern(pattern);
      rule->set_dim(dim);
    }
  }
  if (line.Has("tp_rule_set")) {
    shard.set_rule_set(line.Get("tp_rule_set"));
  } else if (!line.Has("tp_rules")) {
    shard.set_rule_set("llama");
  }
  options.shard = std::move(shard);
  return absl::OkStatus();
}

absl::StatusOr<ClientLoadOptions> LoadOptionsFrom(const CommandLine& line) {
  ClientLoadOptions options;
  options.path = line.positional[0];
  options.device = line.Get("device", "cpu");
  options.cast_dtype = line.Get("cast");
  options.format_hint = line.Get("format");
  options.host_copy = line.Has("copy");
  if (line.Has("map")) {
    // The daemon's own map_location parser: FROM->TO pairs, canonical tags.
    for (const std::string& mapping : line.flags.at("map")) {
      if (!absl::StrContains(mapping, "->")) {
        return absl::InvalidArgumentError(
            absl::StrCat("--map expects FROM->TO, got \"", mapping, "\""));
      }
    }
    absl::StatusOr<MapLocation> map =
        ParseMapLocation(absl::StrJoin(line.flags.at("map"), ","));
    if (!map.ok()) return map.status();
    if (map->kind != MapLocation::Kind::kRemap) {
      return absl::InvalidArgumentError(
          "--map expects FROM->TO (use --device for one target)");
    }
    for (const auto& [from, to] : map->remap) options.remap[from] = to;
    if (!line.Has("device")) options.device = "";
  }
  if (line.Has("tensor")) options.filter = line.flags.at("tensor");
  RETURN_IF_ERROR(ShardOptionsFrom(line, options));
  return options;
}

int Load(const std::string& address, const std::vector<std::string>& args,
         std::ostream& out, std::ostream& err) {
  auto line = ParseCommandLine(args, {"json", "hash", "quiet", "copy"},
                               {"device", "cast", "map", "tensor", "format",
                                "tp", "tp_rules", "tp_rule_set"});
  if (!line.ok()) return Fail(err, "load", line.status());
  if (line->positional.size() != 1) {
    err << "usage: weightctl load FILE|MODEL_DIR [--device DEV] [--json] "
           "[--hash] "
           "[--cast DTYPE] "
           "[--map FROM->TO] [--tensor NAME] [--copy]\n"
           "       [--tp RANK/WORLD [--tp_rules FILE.json | --tp_rule_set "
           "NAME]]\n";
    return 2;
  }
  const std::string& file = line->positional[0];
  auto options = LoadOptionsFrom(*line);
  if (!options.ok()) return Fail(err, file, options.status());
  auto client = ConnectOrExplain(address);
  if (!client.ok()) return Fail(err, file, client.status());
  std::optional<ProgressBar> bar;
  if (!line->Has("quiet")) bar.emplace();
  auto model = (*client)->Load(*options, [&](uint64_t done, uint64_t total) {
    if (bar) bar->Update(done, total);
  });
  bar.reset();
  if (!model.ok()) return Fail(err, file, model.status());
  const v1::ModelDescription& description = (*model)->description();
  if (!line->Has("json")) {
    PrintTensorTable(description, out);
    return 0;
  }
  std::vector<TensorInfo> infos;
  infos.reserve(description.tensors_size());
  for (const v1::Tensor& tensor : description.tensors()) {
    auto info = TensorInfoFromProto(tensor);
    if (!info.ok()) return Fail(err, file, info.status());
    infos.push_back(*std::move(info));
  }
  std::vector<ListedTensor> listed;
  for (int i = 0; i < description.tensors_size(); ++i) {
    ListedTensor item{&infos[i], std::nullopt};
    if (line->Has("hash")) {
      auto bytes = (*model)->ReadTensorBytes(description.tensors(i));
      if (!bytes.ok()) return Fail(err, file, bytes.status());
      item.sha256 = Sha256Hex(*bytes);
    }
    listed.push_back(std::move(item));
  }
  if (description.shards_size() > 0) {
    std::vector<std::string> shards(description.shards().begin(),
                                    description.shards().end());
    auto listing = ModelDirectoryListingJson(description.format(), shards,
                                             listed, description.config_json());
    if (!listing.ok()) return Fail(err, file, listing.status());
    out << listing->Dump(true) << "\n";
    return 0;
  }
  std::map<std::string, std::string> extra(description.extra_files().begin(),
                                           description.extra_files().end());
  out << TensorListingJson(description.format(), listed, extra,
                           description.format() == "torchscript")
             .Dump(true)
      << "\n";
  return 0;
}

int List(const std::string& address, const std::vector<std::string>& args,
         std::ostream& out, std::ostream& err) {
  auto client = ConnectOrExplain(address);
  if (!client.ok()) return Fail(err, "ls", client.status());
  auto list = (*client)->List();
  if (!list.ok()) return Fail(err, "ls", list.status());
  out << absl::StrFormat("%-28s %-12s %-10s %8s %12s %6s  %s\n", "MODEL",
                         "FORMAT", "PLACEMENT", "TENSORS", "RESIDENT", "LEASES",
                         "PATH");
  for (const v1::ModelSummary& model : list->models()) {
    out << absl::StrFormat(
        "%-28s %-12s %-10s %8d %12s %6d  %s%s\n", model.model_id(),
        model.format(), model.placement(), model.tensor_count(),
        HumanBytes(model.resident_bytes()), model.lease_count(), model.path(),
        model.stale() ? " (stale)" : "");
  }
  return 0;
}

int Describe(const std::string& address, const std::vector<std::string>& args,
             std::ostream& out, std::ostream& err) {
  if (args.size() != 1) {
    err << "usage: weightctl describe MODEL_ID\n";
    return 2;
  }
  auto client = ConnectOrExplain(address);
  if (!client.ok()) return Fail(err, args[0], client.status());
  auto model = (*client)->Describe(args[0]);
  if (!model.ok()) return Fail(err, args[0], model.status());
  PrintTensorTable(*model, out);
  return 0;
}

int Unload(const std::string& address, const std::vector<std::string>& args,
           std::ostream& out, std::ostream& err) {
  auto line = ParseCommandLine(args, {"force"}, {});
  if (!line.ok() || line->positional.size() != 1) {
    err << "usage: weightctl unload MODEL_ID [--force]\n";
    return 2;
  }
  auto client = ConnectOrExplain(address);
  if (!client.ok()) return Fail(err, line->positional[0], client.status());
  auto response = (*client)->Unload(line->positional[0], line->Has("force"));
  if (!response.ok()) return Fail(err, line->positional[0], response.status());
  out << "unloaded " << line->positional[0] << " ("
      << HumanBytes(response->freed_bytes()) << " freed)\n";
  return 0;
}

int Stats(const std::string& address, const std::vector<std::string>& args,
          std::ostream& out, std::ostream& err) {
  auto client = ConnectOrExplain(address);
  if (!client.ok()) return Fail(err, "stats", client.status());
  auto stats = (*client)->Stats();
  if (!stats.ok()) return Fail(err, "stats", stats.status());
  out << absl::StrFormat(
      "loads %d  cache hits %d  failures %d  evictions %d  bytes read %s\n"
      "models %d  active leases %d  lease sessions %d\n",
      stats->loads(), stats->cache_hits(), stats->load_failures(),
      stats->evictions(), HumanBytes(stats->bytes_read()), stats->models(),
      stats->active_leases(), stats->lease_sessions());
  for (const v1::TierStats& tier : stats->tiers()) {
    out << absl::StrFormat(
        "tier %-44s used %12s  budget %s\n", tier.tier(),
        HumanBytes(tier.used_bytes()),
        tier.budget_bytes() ? HumanBytes(tier.budget_bytes()) : "unlimited");
  }
  return 0;
}

int Info(const std::string& address, const std::vector<std::string>& args,
         std::ostream& out, std::ostream& err) {
  auto client = ConnectOrExplain(address);
  if (!client.ok()) return Fail(err, "info", client.status());
  auto info = (*client)->ServerInfo();
  if (!info.ok()) return Fail(err, "info", info.status());
  out << "weightd " << info->version() << "\n";
  out << "io backend: " << info->io_backend();
  if (!info->io_backend_reason().empty())
    out << " (" << info->io_backend_reason() << ")";
  if (!info->direct_io().empty()) {
    out << "\ndirect io: " << info->direct_io() << "; queue depth "
        << info->io_queue_depth() << ", request "
        << (info->io_request_bytes() == 0
                ? std::string("per device")
                : std::to_string(info->io_request_bytes() >> 10) + " KiB");
  }
  if (!info->huge_pages().empty())
    out << "\nhuge pages: " << info->huge_pages();
  out << "\nmodel roots: " << absl::StrJoin(info->model_roots(), ", ") << "\n";
  out << "host budget: "
      << (info->host_budget_bytes() ? HumanBytes(info->host_budget_bytes())
                                    : "unlimited")
      << "\n";
  out << "GPUs: " << info->gpus_size();
  if (!info->gpu_status().empty()) out << " (" << info->gpu_status() << ")";
  out << "\n";
  for (const v1::GpuInfo& gpu : info->gpus()) {
    out << absl::StrFormat(
        "  cuda:%d %s %s %s total, %s free%s\n", gpu.index(), gpu.uuid(),
        gpu.name(), HumanBytes(gpu.total_bytes()), HumanBytes(gpu.free_bytes()),
        gpu.fake() ? " (fake)" : "");
  }
  return 0;
}

// The output file of a fetch: written under a temporary name beside it and
// renamed into place by Commit, so that a failed fetch leaves no partial file
// (the temporary one is removed when this goes away uncommitted).
class PartialFile {
 public:
  static absl::StatusOr<std::unique_ptr<PartialFile>> Create(
      const std::string& path) {
    std::string temp = path + ".partial-XXXXXX";
    int fd = mkstemp(temp.data());
    if (fd < 0) return ErrnoStatus("create", path);
    // mkstemp makes 0600; the output gets what open(2) would give it.
    mode_t mask = umask(0);
    umask(mask);
    (void)fchmod(fd, 0666 & ~mask);
    return std::unique_ptr<PartialFile>(new PartialFile(path, temp, fd));
  }

  ~PartialFile() {
    if (fd_ >= 0) close(fd_);
    if (!committed_) unlink(temp_.c_str());
  }

  absl::Status Write(absl::string_view data) {
    while (!data.empty()) {
      ssize_t n = write(fd_, data.data(), data.size());
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return ErrnoStatus("write", path_);
      data.remove_prefix(static_cast<size_t>(n));
    }
    return absl::OkStatus();
  }

  absl::Status Commit() {
    int fd = fd_;
    fd_ = -1;
    if (close(fd) != 0) return ErrnoStatus("write", path_);
    if (rename(temp_.c_str(), path_.c_str()) != 0)
      return ErrnoStatus("rename into", path_);
    committed_ = true;
    return absl::OkStatus();
  }

 private:
  PartialFile(std::string path, std::string temp, int fd)
      : path_(std::move(path)), temp_(std::move(temp)), fd_(fd) {}

  static absl::Status ErrnoStatus(absl::string_view what,
                                  const std::string& path) {
    int error = errno;
    return absl::ErrnoToStatus(error, absl::StrCat(what, " ", path));
  }

  const std::string path_;
  const std::string temp_;
  int fd_;
  bool committed_ = false;
};

// Writes tensors streamed by ReadTensors into a .safetensors file: the header
// from the model's description first, then each chunk as it arrives (one
// chunk in memory, whatever the model's size).
int Fetch(const std::string& address, const std::vector<std::string>& args,
          std::ostream& out, std::ostream& err) {
  auto line = ParseCommandLine(args, {}, {"tensor"});
  if (!line.ok() || line->positional.size() != 2) {
    err << "usage: weightctl fetch MODEL_ID|FILE OUT.safetensors [--tensor "
           "NAME]\n";
    return 2;
  }
  const std::string& source = line->positional[0];
  const std::string& output = line->positional[1];
  auto client = ConnectOrExplain(address);
  if (!client.ok()) return Fail(err, source, client.status());
  auto description = (*client)->Describe(source);
  std::unique_ptr<ClientModel> loaded;  // holds the lease while fetching
  if (!description.ok()) {
    ClientLoadOptions options;
    options.path = source;
    options.device = "cpu";
    auto model = (*client)->Load(options);
    if (!model.ok()) return Fail(err, source, model.status());
    loaded = *std::move(model);
    description = (*client)->Describe(loaded->model_id());
    if (!description.ok()) return Fail(err, source, description.status());
  }
  // The tensors in the order ReadTensors sends them: every one, or the named
  // ones (each name once) as the daemon finds them (its first of a name).
  std::vector<const v1::Tensor*> tensors;
  std::vector<std::string> names;
  if (line->Has("tensor")) {
    absl::flat_hash_map<absl::string_view, const v1::Tensor*> by_name;
    for (const v1::Tensor& tensor : description->tensors())
      by_name.emplace(tensor.name(), &tensor);
    absl::flat_hash_set<std::string> seen;
    for (const std::string& name : line->flags.at("tensor")) {
      if (!seen.insert(name).second) continue;
      auto it = by_name.find(name);
      if (it == by_name.end()) {
        return Fail(err, source,
                    absl::NotFoundError(absl::StrCat(
                        "no tensor \"", name, "\" in ", description->path())));
      }
      tensors.push_back(it->second);
      names.push_back(name);
    }
  } else {
    for (const v1::Tensor& tensor : description->tensors())
      tensors.push_back(&tensor);
  }
  Json header = Json::MakeObject();
  uint64_t total = 0;
  for (const v1::Tensor* tensor : tensors) {
    auto dtype = DTypeFromName(tensor->dtype());
    if (!dtype.ok()) return Fail(err, source, dtype.status());
    absl::string_view st_dtype = DTypeSafetensorsName(*dtype);
    if (st_dtype.empty()) {
      return Fail(err, source,
                  absl::InvalidArgumentError(absl::StrCat(
                      "tensor ", tensor->name(),
                      ": safetensors has no dtype for ", tensor->dtype())));
    }
    Json entry = Json::MakeObject();
    entry.Set("dtype", Json(std::string(st_dtype)));
    Json shape = Json::MakeArray();
    for (int64_t dim : tensor->shape()) shape.Append(Json(dim));
    entry.Set("shape", std::move(shape));
    Json offsets = Json::MakeArray();
    offsets.Append(Json(total));
    offsets.Append(Json(total + tensor->byte_size()));
    entry.Set("data_offsets", std::move(offsets));
    header.Set(tensor->name(), std::move(entry));
    total += tensor->byte_size();
  }
  std::string header_text = header.Dump(false);
  while (header_text.size() % 8 != 0) header_text.push_back(' ');
  auto file = PartialFile::Create(output);
  if (!file.ok()) return Fail(err, output, file.status());
  std::string prefix(8, '\0');
  for (int i = 0; i < 8; ++i)
    prefix[i] =
        static_cast<char>(static_cast<uint64_t>(header_text.size()) >> (8 * i));
  absl::Status status = (*file)->Write(prefix);
  if (status.ok()) status = (*file)->Write(header_text);
  if (!status.ok()) return Fail(err, output, status);
  // Each chunk must belong to the tensor the header put next, with the
  // description's byte count.
  size_t next = 0;
  uint64_t written = 0;
  status = (*client)->StreamTensors(
      description->model_id(), names,
      [&](const v1::Tensor& tensor, uint64_t offset, absl::string_view data,
          bool last) -> absl::Status {
        if (offset == 0) ++next;
        const v1::Tensor* want =
            next > 0 && next <= tensors.size() ? tensors[next - 1] : nullptr;
        if (want == nullptr || tensor.name() != want->name() ||
            offset + data.size() > want->byte_size() ||
            (last && offset + data.size() != want->byte_size())) {
          return absl::DataLossError(absl::StrCat(
              "ReadTensors sent tensor \"", tensor.name(), "\" bytes ", offset,
              "..", offset + data.size(), " where the description has ",
              want == nullptr ? std::string("no more tensors")
                              : absl::StrCat("\"", want->name(), "\" of ",
                                             want->byte_size(), " bytes")));
        }
        written += data.size();
        return (*file)->Write(data);
      });
  if (status.ok() && (next != tensors.size() || written != total)) {
    status = absl::DataLossError(
        absl::StrCat("ReadTensors ended after ", next, " of ", tensors.size(),
                     " tensors (", written, " of ", total, " bytes)"));
  }
  if (!status.ok()) return Fail(err, source, status);
  status = (*file)->Commit();
  if (!status.ok()) return Fail(err, output, status);
  out << "wrote " << header.size() << " tensors (" << HumanBytes(total)
      << ") to " << output << "\n";
  return 0;
}

int Inspect(const std::string& address, const std::vector<std::string>& args,
            std::ostream& out, std::ostream& err) {
  return RunInspect(args, out, err);
}

}  // namespace

const std::map<std::string, WeightctlCommand>& WeightctlCommands() {
  static const auto* commands = new std::map<std::string, WeightctlCommand>{
      {"health", Health}, {"info", Info},   {"inspect", Inspect},
      {"load", Load},     {"ls", List},     {"describe", Describe},
      {"unload", Unload}, {"stats", Stats}, {"fetch", Fetch},
  };
  return *commands;
}

}  // namespace weightd
