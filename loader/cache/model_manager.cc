#include "loader/cache/model_manager.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <thread>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "loader/cache/mapped_read.h"
#include "loader/cache/placement.h"
#include "loader/common/logging.h"
#include "loader/common/mutex.h"
#include "loader/common/status_macros.h"
#include "loader/format/hf_model.h"
#include "loader/format/reader.h"
#include "loader/io/file_watcher.h"
#include "loader/io/mapped_file.h"

namespace weightd {
namespace {

bool IsUnder(const std::string& path, const std::string& root) {
  if (root == "/") return true;
  return path == root || absl::StartsWith(path, root + "/");
}

std::string IdentityKey(const FileIdentity& id) {
  return absl::StrCat(id.device, ":", id.inode, ":", id.size, ":", id.mtime_ns,
                      ":", id.ctime_ns);
}

// A format reader's "unsupported" is the request's problem, like any other
// bad file.
absl::Status AsLoadError(const absl::Status& status) {
  if (status.code() != absl::StatusCode::kUnimplemented) return status;
  return absl::InvalidArgumentError(status.message());
}

// Copies the bytes of a small mapped file (an index, a config) under the
// mapping's guard.
absl::StatusOr<std::string> CopyMapped(const MappedFile& file) {
  std::string text;
  RETURN_IF_ERROR(ReadMapped(file, [&] {
    text.assign(reinterpret_cast<const char*>(file.data()), file.size());
    return absl::OkStatus();
  }));
  return text;
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

}  // namespace

// The files one model directory is made of, resolved inside the roots, with
// the identities the cache key is made of: a change to any of them (the
// index, a shard, config.json, generation_config.json) is a new entry.
struct ModelManager::DirectoryFile {
  std::string name;  // in the directory
  std::string path;  // canonical
  FileIdentity identity;
};

struct ModelManager::DirectoryFiles {
  using File = DirectoryFile;
  std::optional<File> index;
  std::optional<HfIndex> parsed_index;  // set when the index was read
  std::vector<File> shards;
  std::optional<File> config;
  std::optional<File> generation_config;

  // FORMAT, then one "NAME\tPATH\tIDENTITY\n" line per file: a watcher
  // cookie "PATH\nIDENTITY" of a shard is found in it (OnFileChanged).
  std::string IdentityKey(HfFormat format) const {
    std::string key = HfFormatName(format);
    key += "\n";
    auto line = [&key](const File& file) {
      absl::StrAppend(&key, file.name, "\t", file.path, "\t",
                      weightd::IdentityKey(file.identity), "\n");
    };
    if (index) line(*index);
    for (const File& shard : shards) line(shard);
    if (config) line(*config);
    if (generation_config) line(*generation_config);
    return key;
  }
};

// One mapping per file identity, shared by every model of that file (so
// loads of one file with many placements or filters cost one descriptor).
class ModelManager::MappedFiles {
 public:
  // `watcher` (outlives every mapping) is told of each new mapping; a change
  // fires with the cookie "PATH\nIDENTITYKEY".
  explicit MappedFiles(FileWatcher* watcher) : watcher_(watcher) {}

  // The live mapping of `path` with identity `expected`, or a new one.
  // ABORTED when the file on disk no longer has that identity.
  absl::StatusOr<std::shared_ptr<const MappedFile>> Open(
      const std::string& path, const FileIdentity& expected) {
    const std::string key = absl::StrCat(path, "\n", IdentityKey(expected));
    {
      MutexLock lock(&mu_);
      auto it = open_.find(key);
      if (it != open_.end()) {
        if (std::shared_ptr<const MappedFile> file = it->second.lock())
          return file;
      }
    }
    ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> opened,
                     MappedFile::Open(path));
    if (opened->identity() != expected) {
      return absl::AbortedError(absl::StrCat(
          path, " changed while it was being loaded; load it again"));
    }
    std::shared_ptr<const MappedFile> file = Watched(std::move(opened), key);
    MutexLock lock(&mu_);
    auto [it, inserted] = open_.try_emplace(key, file);
    if (!inserted) {
      // Another load mapped it meanwhile: share that mapping.
      if (std::shared_ptr<const MappedFile> other = it->second.lock())
        return other;
      it->second = file;
    }
    // Forget mappings every model has let go of.
    if (open_.size() > 2 * pruned_at_) {
      absl::erase_if(open_,
                     [](const auto& entry) { return entry.second.expired(); });
      pruned_at_ = std::max<size_t>(open_.size(), 16);
    }
    return file;
  }

 private:
  // The mapping, watched for changes on disk for as long as a model holds it.
  std::shared_ptr<const MappedFile> Watched(std::unique_ptr<MappedFile> file,
                                            const std::string& key) {
    absl::StatusOr<FileWatcher::WatchId> watch =
        watcher_->Watch(file->path(), file->identity(), key);
    if (!watch.ok()) {
      // Not a reason to refuse the load: the identity check at each lookup
      // still sees most changes.
      LogWarning("not watching %s for changes: %s", file->path(),
                 watch.status().ToString());
      return std::shared_ptr<const MappedFile>(std::move(file));
    }
    FileWatcher* watcher = watcher_;
    return std::shared_ptr<const MappedFile>(
        file.release(), [watcher, id = *watch](const MappedFile* mapped) {
          watcher->Unwatch(id);
          delete mapped;
        });
  }

  FileWatcher* const watcher_;
  Mutex mu_;
  absl::flat_hash_map<std::string, std::weak_ptr<const MappedFile>> open_
      ABSL_GUARDED_BY(mu_);
  size_t pruned_at_ ABSL_GUARDED_BY(mu_) = 16;
};

// A load on a cache miss, in the cache's single flight: Plan maps and parses
// the file and plans the placement (the bytes to reserve), Place carries the
// plan out.
class ModelManager::LoadJob {
 public:
  LoadJob(ModelManager& manager, const Request& request, const LoadSpec& spec,
          const FileIdentity& identity, const ProgressFn& progress,
          const DirectoryFiles* directory = nullptr)
      : manager_(manager),
        request_(request),
        spec_(spec),
        identity_(identity),
        progress_(progress),
        directory_(directory) {}

  absl::StatusOr<TierBytes> Plan() {
    if (directory_ != nullptr) return PlanDirectory();
    LoadSource& source = source_.emplace();
    source.path = request_.path;
    ASSIGN_OR_RETURN(source.file,
                     manager_.mapped_files_->Open(request_.path, identity_));
    ReadOptions read_options;
    read_options.file_name = request_.path;
    absl::StatusOr<Checkpoint> parsed = absl::InternalError("not parsed");
    // DATA_LOSS (the file changed under its mapping) wins over whatever the
    // parser made of the bytes it read.
    RETURN_IF_ERROR(ReadMapped(*source.file, [&] {
      parsed = ReadCheckpoint(
          absl::string_view(reinterpret_cast<const char*>(source.file->data()),
                            source.file->size()),
          read_options);
      return absl::OkStatus();
    }));
    if (!parsed.ok()) return AsLoadError(parsed.status());
    source.checkpoint = *std::move(parsed);
    const std::string format = CheckpointFormatName(source.checkpoint.format);
    if (!spec_.format_hint.empty() && spec_.format_hint != format) {
      return absl::InvalidArgumentError(
          absl::StrCat(request_.path, ": format hint \"", spec_.format_hint,
                       "\" but the file is ", format));
    }
    ASSIGN_OR_RETURN(plan_, PlanLoad(request_.placement, source.checkpoint,
                                     manager_.gpus_, request_.path));
    return plan_.expected;
  }

  absl::StatusOr<std::shared_ptr<const CacheValue>> Place(
      const CancellationToken& abandoned) {
    ASSIGN_OR_RETURN(
        std::shared_ptr<LoadedModel> model,
        weightd::Place(plan_, *source_, request_.key.placement,
                       *manager_.devices_, *manager_.workers_, abandoned,
                       progress_, manager_.shared_reads_.get()));
    if (directory_ != nullptr) {
      model->identity = directory_->index ? directory_->index->identity
                                          : directory_->shards[0].identity;
    }
    manager_.bytes_read_ += model->bytes_read;
    return std::shared_ptr<const CacheValue>(std::move(model));
  }

 private:
  // A model directory: every shard mapped (once per identity, shared with
  // single-file loads of it) and parsed under its guard, the index checked
  // against them, the shards merged into one checkpoint and planned as one.
  absl::StatusOr<TierBytes> PlanDirectory() {
    const HfLayout& layout = *request_.layout;
    auto directory = std::make_shared<ModelDirectory>();
    directory->format = HfFormatName(layout.format);
    std::vector<HfShard> shards;
    for (const DirectoryFiles::File& shard : directory_->shards) {
      ASSIGN_OR_RETURN(
          std::shared_ptr<const MappedFile> file,
          manager_.mapped_files_->Open(shard.path, shard.identity));
      ReadOptions read_options;
      read_options.file_name = absl::StrCat(request_.path, "/", shard.name);
      absl::StatusOr<Checkpoint> parsed = absl::InternalError("not parsed");
      RETURN_IF_ERROR(ReadMapped(*file, [&] {
        parsed = ReadCheckpoint(
            absl::string_view(reinterpret_cast<const char*>(file->data()),
                              file->size()),
            read_options);
        return absl::OkStatus();
      }));
      if (!parsed.ok()) return AsLoadError(parsed.status());
      shards.push_back(HfShard{shard.name, *std::move(parsed)});
      directory->shard_paths.push_back(shard.path);
      directory->shard_files.push_back(std::move(file));
    }
    absl::StatusOr<HfModel> model = AssembleHfModel(
        layout.format,
        directory_->parsed_index ? &*directory_->parsed_index : nullptr,
        std::move(shards), request_.path);
    if (!model.ok()) return AsLoadError(model.status());
    directory->shards = std::move(model->shards);
    directory->storage_shard = std::move(model->storage_shard);
    if (directory_->config) {
      ASSIGN_OR_RETURN(directory->config_json,
                       ReadJsonObject(*directory_->config));
    }
    if (directory_->generation_config) {
      ASSIGN_OR_RETURN(directory->generation_config_json,
                       ReadJsonObject(*directory_->generation_config));
    }
    LoadSource& source = source_.emplace();
    source.path = request_.path;
    source.file = directory->shard_files.front();
    source.checkpoint = std::move(model->checkpoint);
    source.directory = std::move(directory);
    ASSIGN_OR_RETURN(plan_, PlanLoad(request_.placement, source.checkpoint,
                                     manager_.gpus_, request_.path));
    return plan_.expected;
  }

  // A config file's text, refused unless it is the file that was keyed and
  // one JSON object.
  absl::StatusOr<std::string> ReadJsonObject(const DirectoryFiles::File& file) {
    ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> mapped,
                     MappedFile::Open(file.path));
    if (mapped->identity() != file.identity) {
      return absl::AbortedError(absl::StrCat(
          file.path, " changed while it was being loaded; load it again"));
    }
    if (mapped->size() > kMaxHfJsonFileBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(request_.path, "/", file.name, ": ", mapped->size(),
                       " bytes is too big for a config file"));
    }
    ASSIGN_OR_RETURN(std::string text, CopyMapped(*mapped));
    RETURN_IF_ERROR(
        CheckJsonObjectFile(text, absl::StrCat(request_.path, "/", file.name)));
    return text;
  }

  ModelManager& manager_;
  const Request& request_;
  const LoadSpec& spec_;
  const FileIdentity identity_;
  const ProgressFn& progress_;
  const DirectoryFiles* const directory_;
  std::optional<LoadSource> source_;
  LoadPlan plan_;
};

absl::StatusOr<std::unique_ptr<ModelManager>> ModelManager::Create(
    const Options& options, std::unique_ptr<DeviceSet> devices,
    const WatcherFactory& make_watcher) {
  if (devices == nullptr)
    return absl::InvalidArgumentError("ModelManager needs a DeviceSet");
  auto manager = std::unique_ptr<ModelManager>(new ModelManager());
  manager->options_ = options;
  for (const std::string& root : options.model_roots) {
    char resolved[PATH_MAX];
    if (realpath(root.c_str(), resolved) == nullptr) {
      return absl::NotFoundError(
          absl::StrCat("model root ", root, ": ", std::strerror(errno)));
    }
    manager->canonical_roots_.push_back(resolved);
  }
  manager->devices_ = std::move(devices);
  manager->gpus_ = manager->devices_->Gpus();
  CheckpointCache::Options cache_options;
  cache_options.budgets = manager->Budgets();
  cache_options.max_entries = options.max_models;
  manager->cache_ = std::make_unique<CheckpointCache>(cache_options);
  ModelManager* raw = manager.get();
  FileWatcher::ChangeCallback on_change = [raw](const FileWatcher::Change& c) {
    raw->OnFileChanged(c);
  };
  manager->watcher_ = make_watcher ? make_watcher(std::move(on_change))
                                   : CreateFileWatcher(FileWatcherOptions{},
                                                       std::move(on_change));
  manager->mapped_files_ =
      std::make_unique<MappedFiles>(manager->watcher_.get());
  SharedRegionReads::Options shared_options;
  shared_options.budget_bytes = options.shared_read_budget_bytes;
  shared_options.linger = options.shared_read_linger;
  if (options.host_budget_bytes > 0) {
    shared_options.budget_bytes =
        std::min(shared_options.budget_bytes, options.host_budget_bytes);
  }
  manager->shared_reads_ = std::make_unique<SharedRegionReads>(shared_options);
  int workers = options.worker_threads;
  if (workers <= 0) {
    workers = std::min(
        8, std::max(1, static_cast<int>(std::thread::hardware_concurrency())));
  }
  ASSIGN_OR_RETURN(manager->workers_,
                   ThreadPool::Create("worker pool", workers, 0));
  ASSIGN_OR_RETURN(manager->load_pool_,
                   ThreadPool::Create("load queue",
                                      std::max(1, options.max_concurrent_loads),
                                      options.max_queued_loads));
  return manager;
}

ModelManager::~ModelManager() {
  Shutdown();
  load_pool_.reset();  // joins running loads before the rest goes
  MutexLock lock(&changes_mu_);
  accepting_changes_ = false;
}

void ModelManager::OnFileChanged(const FileWatcher::Change& change) {
  const size_t split = change.cookie.find('\n');
  if (split == std::string::npos) return;
  MutexLock lock(&changes_mu_);
  if (!accepting_changes_) return;  // the cache is going away
  const std::string path = change.cookie.substr(0, split);
  const std::string identity = change.cookie.substr(split + 1);
  int marked = cache_->MarkStale(path, identity);
  // Model directories with this file as a shard (see DirectoryFiles).
  const std::string line = absl::StrCat("\t", path, "\t", identity, "\n");
  for (const CacheEntryInfo& entry : cache_->List()) {
    if (absl::StrContains(entry.key.identity, line))
      marked += cache_->MarkStale(entry.key.path, entry.key.identity);
  }
  LogInfo("%s changed on disk (%s: %s): %d model(s) no longer handed out",
          change.path, FileChangeKindName(change.kind), change.detail, marked);
}

void ModelManager::Shutdown() {
  if (load_pool_) load_pool_->Shutdown();
}

int ModelManager::queued_loads() const {
  return static_cast<int>(load_pool_->queued());
}

TierBytes ModelManager::Budgets() const {
  TierBytes budgets;
  if (options_.host_budget_bytes > 0)
    budgets["host"] = options_.host_budget_bytes;
  for (const GpuDescription& gpu : devices_->Gpus()) {
    budgets[gpu.uuid] = options_.gpu_budget_bytes > 0
                            ? options_.gpu_budget_bytes
                            : gpu.total_bytes / 10 * 9;
  }
  return budgets;
}

ManagerInfo ModelManager::Info() const {
  ManagerInfo info;
  info.gpus = devices_->Gpus();
  info.gpu_status = devices_->gpu_status();
  info.io_backend = devices_->io_backend();
  info.io_backend_reason = devices_->io_backend_reason();
  info.direct_io = devices_->direct_io();
  info.io_queue_depth = devices_->io_queue_depth();
  info.io_request_bytes = devices_->io_request_bytes();
  info.model_roots = canonical_roots_;
  info.host_budget_bytes = options_.host_budget_bytes;
  info.gpu_budget_bytes = options_.gpu_budget_bytes;
  return info;
}

absl::StatusOr<std::string> ModelManager::ResolvePath(
    const std::string& path) const {
  if (path.empty()) return absl::InvalidArgumentError("empty path");
  char resolved[PATH_MAX];
  if (realpath(path.c_str(), resolved) == nullptr) {
    int error = errno;
    // NOT_FOUND only for a path that names a place inside a root; anything else
    // is PERMISSION_DENIED, so nothing leaks about files outside the roots.
    std::string lexical =
        std::filesystem::absolute(path).lexically_normal().string();
    for (const std::string& root : canonical_roots_) {
      if (IsUnder(lexical, root)) {
        return absl::NotFoundError(
            absl::StrCat(path, ": ", std::strerror(error)));
      }
    }
    return absl::PermissionDeniedError(
        absl::StrCat(path, " is outside the model roots (",
                     absl::StrJoin(canonical_roots_, ", "), ")"));
  }
  for (const std::string& root : canonical_roots_) {
    if (IsUnder(resolved, root)) return std::string(resolved);
  }
  return absl::PermissionDeniedError(
      absl::StrCat(path, " is outside the model roots (",
                   absl::StrJoin(canonical_roots_, ", "), ")"));
}

absl::StatusOr<ModelManager::Request> ModelManager::PrepareRequest(
    const LoadSpec& spec) const {
  Request request;
  ASSIGN_OR_RETURN(request.path, ResolvePath(spec.path));
  ASSIGN_OR_RETURN(request.placement, CanonicalPlacement(spec, gpus_));
  request.key.path = request.path;
  request.key.placement = request.placement.Key();
  struct stat st;
  if (::stat(request.path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    ASSIGN_OR_RETURN(request.layout,
                     DetectHfLayout(request.path, spec.format_hint));
  }
  return request;
}

absl::StatusOr<ModelManager::DirectoryFile> ModelManager::ResolveDirectoryFile(
    const Request& request, const std::string& name) const {
  DirectoryFiles::File file;
  file.name = name;
  // Symlinks (a hub snapshot's into blobs/) are followed, but must stay
  // inside a model root.
  ASSIGN_OR_RETURN(file.path,
                   ResolvePath(absl::StrCat(request.path, "/", name)));
  return file;
}

absl::Status ModelManager::StatDirectoryFiles(const Request& request,
                                              DirectoryFiles& files) const {
  auto stat_file =
      [&](const std::string& name) -> absl::StatusOr<DirectoryFiles::File> {
    ASSIGN_OR_RETURN(DirectoryFiles::File file,
                     ResolveDirectoryFile(request, name));
    ASSIGN_OR_RETURN(file.identity, StatFileIdentity(file.path));
    return file;
  };
  files.shards.clear();
  std::vector<std::string> names = {request.layout->single_file};
  if (files.parsed_index) names = files.parsed_index->shards;
  for (const std::string& name : names) {
    ASSIGN_OR_RETURN(DirectoryFiles::File shard, stat_file(name));
    files.shards.push_back(std::move(shard));
  }
  for (auto [name, slot] :
       {std::pair{kHfConfigFile, &files.config},
        std::pair{kHfGenerationConfigFile, &files.generation_config}}) {
    if (!Exists(absl::StrCat(request.path, "/", name))) continue;
    ASSIGN_OR_RETURN(*slot, stat_file(name));
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelManager::DirectoryFiles> ModelManager::ReadDirectoryFiles(
    const Request& request) const {
  DirectoryFiles files;
  const HfLayout& layout = *request.layout;
  if (!layout.index_file.empty()) {
    ASSIGN_OR_RETURN(DirectoryFiles::File index,
                     ResolveDirectoryFile(request, layout.index_file));
    ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> mapped,
                     MappedFile::Open(index.path));
    // The identity keyed is the one of the bytes parsed.
    index.identity = mapped->identity();
    const std::string shown = absl::StrCat(request.path, "/", index.name);
    if (mapped->size() > kMaxHfJsonFileBytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          shown, ": ", mapped->size(), " bytes is too big for an index"));
    }
    ASSIGN_OR_RETURN(std::string text, CopyMapped(*mapped));
    ASSIGN_OR_RETURN(files.parsed_index, ParseHfIndex(text, shown));
    {
      MutexLock lock(&index_mu_);
      if (index_shards_.size() >= 4096) index_shards_.clear();
      index_shards_[index.path] = {IdentityKey(index.identity),
                                   files.parsed_index->shards};
    }
    files.index = std::move(index);
  }
  RETURN_IF_ERROR(StatDirectoryFiles(request, files));
  return files;
}

absl::StatusOr<std::optional<ModelManager::DirectoryFiles>>
ModelManager::KnownDirectoryFiles(const Request& request) const {
  DirectoryFiles files;
  const HfLayout& layout = *request.layout;
  if (!layout.index_file.empty()) {
    ASSIGN_OR_RETURN(DirectoryFiles::File index,
                     ResolveDirectoryFile(request, layout.index_file));
    ASSIGN_OR_RETURN(index.identity, StatFileIdentity(index.path));
    std::vector<std::string> shards;
    {
      MutexLock lock(&index_mu_);
      auto it = index_shards_.find(index.path);
      if (it == index_shards_.end() ||
          it->second.first != IdentityKey(index.identity)) {
        return std::nullopt;
      }
      shards = it->second.second;
    }
    // Only the shard list is needed here: the index was checked when read.
    files.parsed_index.emplace().shards = std::move(shards);
    files.index = std::move(index);
  }
  RETURN_IF_ERROR(StatDirectoryFiles(request, files));
  files.parsed_index.reset();
  return files;
}

absl::StatusOr<ModelManager::LoadResult> ModelManager::CheckHint(
    const LoadSpec& spec, absl::StatusOr<LoadResult> result) {
  if (!result.ok() || spec.format_hint.empty()) return result;
  const std::string format = result->model->FormatName();
  if (spec.format_hint == format) return result;
  // A hit must refuse a wrong hint as a fresh load does, and not keep the
  // lease it took.
  if (!spec.lease_session.empty())
    (void)cache_->Release(result->model_id, spec.lease_session);
  return absl::InvalidArgumentError(
      absl::StrCat(result->model->path, ": format hint \"", spec.format_hint,
                   "\" but the file is ", format));
}

absl::StatusOr<ModelManager::LoadResult> ModelManager::Load(
    const LoadSpec& spec, const ProgressFn& progress,
    const CancellationToken* cancel) {
  ASSIGN_OR_RETURN(Request request, PrepareRequest(spec));
  std::optional<DirectoryFiles> directory;
  FileIdentity identity;
  if (request.layout) {
    ASSIGN_OR_RETURN(directory, ReadDirectoryFiles(request));
    request.key.identity = directory->IdentityKey(request.layout->format);
  } else {
    // Identity first (a stat; a cache hit needs nothing more): a changed file
    // is a new cache key.
    ASSIGN_OR_RETURN(identity, StatFileIdentity(request.path));
    request.key.identity = IdentityKey(identity);
  }
  LoadJob job(*this, request, spec, identity, progress,
              directory ? &*directory : nullptr);
  absl::StatusOr<CheckpointCache::Result> result = cache_->GetOrLoad(
      request.key, [&job] { return job.Plan(); },
      [&job](const CancellationToken& abandoned) {
        return job.Place(abandoned);
      },
      spec.lease_session, cancel);
  if (!result.ok()) return result.status();
  return CheckHint(
      spec,
      LoadResult{result->model_id,
                 std::static_pointer_cast<const LoadedModel>(result->value),
                 result->hit});
}

void ModelManager::LoadAsync(LoadSpec spec, ProgressFn progress,
                             const CancellationToken* cancel, LoadDone done) {
  // A ready model is answered here: it never waits behind loads that read
  // files.
  absl::StatusOr<Request> request = PrepareRequest(spec);
  if (!request.ok()) return done(request.status());
  bool known = true;
  if (request->layout) {
    absl::StatusOr<std::optional<DirectoryFiles>> files =
        KnownDirectoryFiles(*request);
    if (!files.ok()) return done(files.status());
    known = files->has_value();
    if (known)
      request->key.identity = (*files)->IdentityKey(request->layout->format);
  } else {
    absl::StatusOr<FileIdentity> identity = StatFileIdentity(request->path);
    if (!identity.ok()) return done(identity.status());
    request->key.identity = IdentityKey(*identity);
  }
  absl::StatusOr<std::optional<CheckpointCache::Result>> hit =
      known ? cache_->Lookup(request->key, spec.lease_session)
            : absl::StatusOr<std::optional<CheckpointCache::Result>>(
                  std::nullopt);
  if (!hit.ok()) return done(hit.status());
  if (hit->has_value()) {
    return done(CheckHint(
        spec,
        LoadResult{(*hit)->model_id,
                   std::static_pointer_cast<const LoadedModel>((*hit)->value),
                   true}));
  }
  auto shared_done = std::make_shared<LoadDone>(std::move(done));
  absl::Status queued = load_pool_->Schedule(
      [this, spec = std::move(spec), progress = std::move(progress), cancel,
       shared_done] {
        if (cancel != nullptr && cancel->cancelled()) {
          return (*shared_done)(absl::CancelledError(absl::StrCat(
              "load of ", spec.path, " cancelled before it started")));
        }
        (*shared_done)(Load(spec, progress, cancel));
      },
      [shared_done, path = spec.path] {
        (*shared_done)(absl::UnavailableError(
            absl::StrCat("load of ", path, " dropped: weightd is stopping")));
      });
  if (!queued.ok()) (*shared_done)(queued);
}

absl::StatusOr<CacheEntryInfo> ModelManager::Describe(
    const std::string& model_id) const {
  return cache_->Describe(model_id);
}

std::vector<CacheEntryInfo> ModelManager::List() const {
  return cache_->List();
}

CacheStats ModelManager::Stats() const { return cache_->Stats(); }

void ModelManager::OpenSession(const std::string& session) {
  cache_->OpenSession(session);
}

absl::Status ModelManager::Acquire(const std::string& model_id,
                                   const std::string& session) {
  return cache_->Acquire(model_id, session);
}

absl::Status ModelManager::Release(const std::string& model_id,
                                   const std::string& session) {
  return cache_->Release(model_id, session);
}

int ModelManager::ReleaseSession(const std::string& session) {
  return cache_->ReleaseSession(session);
}

absl::StatusOr<uint64_t> ModelManager::Unload(const std::string& model_id,
                                              bool force) {
  return cache_->Unload(model_id, force);
}

}  // namespace weightd
