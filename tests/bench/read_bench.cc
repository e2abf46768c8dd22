// One table of the machine's limits against weightd's paths, same file, same
// run (a program, not a timed test):
//   cold:    dd iflag=direct and fio (sequential, direct) vs the staging
//            pipeline onto a fake GPU with the daemon's defaults (and with
//            --direct_io=on and off), both Reader backends, the file dropped
//            from the page cache before every run;
//   warm:    read() vs the same paths with the file in the page cache;
//   fresh:   anonymous first-touch memory vs the daemon's host copies
//            (shared-memory segments with and without huge pages);
//   cast:    float32 -> bfloat16 / float16 vs memcpy of the same bytes, on
//            the same pool, warm and fresh destinations;
//   attach:  a fresh Python process obtaining every tensor of a warm model
//            through weightd.Client vs numpy.memmap + torch.from_numpy.
// Each figure is the median of --repeats runs. The last line holds the four
// ratios (weightd over its baseline, higher is better):
//   ratios: cold=R warm_io_uring=R warm_pread=R cast_vs_memcpy=R
// cold= is the daemon's own path (its backend, its defaults) against the
// better of dd and fio (the lower median).
//
//   bazel run -c opt //tests/bench:read_bench -- --size_mib=1024
#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "loader/cache/cast_kernels.h"
#include "loader/cache/device_set.h"
#include "loader/common/json.h"
#include "loader/common/thread_pool.h"
#include "loader/device/fake_device.h"
#include "loader/device/shared_memory.h"
#include "loader/device/staging_pipeline.h"
#include "loader/io/direct_io.h"
#include "loader/io/reader.h"
#include "loader/io/reader_factory.h"
#include "tests/bench/bench_util.h"

ABSL_FLAG(int64_t, size_mib, 1024, "size of the file and of each buffer");
ABSL_FLAG(std::string, dir, "/tmp",
          "where the file is written (a disk: the cold rows read it)");
ABSL_FLAG(int, repeats, 3, "runs per row; the median is reported");
ABSL_FLAG(int, attach_repeats, 9,
          "fresh Python processes per attach row (they vary more than the "
          "other rows' runs); the median is reported");
ABSL_FLAG(std::string, attach_counts, "100,1000,10000",
          "tensor counts of the warm-attach rows (empty: skip them)");
ABSL_FLAG(bool, private_tmpfs, true,
          "mount tmpfs huge=never and huge=advise in a private mount "
          "namespace for the fresh-memory rows (needs CAP_SYS_ADMIN)");
ABSL_FLAG(bool, keep_file, false, "keep the generated file");
ABSL_FLAG(int64_t, prewarm_mib, -1,
          "memory touched and freed once before the rows (default 6 x "
          "size_mib): a VM's first touch of guest memory it never used is "
          "slow whatever the code, so every row gets memory the host backs");
ABSL_FLAG(std::string, sections, "cold,warm,fresh,cast,attach",
          "which sections to run");
// Reader settings for experiments (0 / -1: the daemon's defaults).
ABSL_FLAG(int, queue_depth, 0, "reader queue depth (0: the daemon's)");
ABSL_FLAG(int, pread_threads, 0, "pread reader threads (0: the daemon's)");
ABSL_FLAG(int, io_uring_async, -1,
          "io_uring IOSQE_ASYNC for buffered pieces: 0 or 1 (-1: the "
          "daemon's)");
ABSL_FLAG(int, io_uring_workers, 0,
          "io_uring bounded kernel workers at most (0: the daemon's, -1: the "
          "kernel's)");
ABSL_FLAG(int64_t, request_kib, 0,
          "bytes one read system call asks for at most, KiB (0: the "
          "daemon's)");

namespace weightd {
namespace {

using bench::Now;

constexpr uint64_t kChunk = 8ull << 20;
constexpr size_t kElementsPerTask = 4u << 20;  // placement's storage tasks

double Median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2]
                      : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

struct Row {
  std::string section;
  std::string name;
  double seconds = NAN;
  uint64_t bytes = 0;  // 0: no GiB/s column
  double ratio = NAN;  // over the section's baseline; NAN: none
  std::string note;
};

// Measures `run` `repeats` times (each returning its seconds, negative on
// failure) with `before` (untimed) ahead of each.
double Measure(int repeats, const std::function<void()>& before,
               const std::function<double()>& run, std::string* error) {
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) {
    if (before) before();
    double t = run();
    if (t < 0) {
      if (error->empty()) *error = "failed";
      return NAN;
    }
    times.push_back(t);
  }
  return Median(times);
}

// fsync, then drop the file's pages from the page cache (no privileges
// needed); returns the fraction still resident (mincore).
double DropFromPageCache(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) return 1;
  fsync(fd);
  posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  struct stat st;
  fstat(fd, &st);
  double resident = 1;
  void* p = mmap(nullptr, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
  if (p != MAP_FAILED) {
    const size_t pages = (st.st_size + 4095) / 4096;
    std::vector<unsigned char> in_core(pages);
    if (mincore(p, st.st_size, in_core.data()) == 0) {
      size_t n = 0;
      for (unsigned char c : in_core) n += c & 1;
      resident = pages ? double(n) / pages : 0;
    }
    munmap(p, st.st_size);
  }
  close(fd);
  return resident;
}

double TimeCommand(const std::string& command) {
  double start = Now();
  int rc = std::system(command.c_str());
  double t = Now() - start;
  return rc == 0 ? t : -1;
}

// fio's own runtime (its process start-up excluded): io_bytes / runtime.
double FioSeconds(const std::string& path, std::string* error) {
  const std::string command = absl::StrCat(
      "fio --name=seq --filename=", path,
      " --rw=read --direct=1 --bs=1M --iodepth=16 --ioengine=io_uring"
      " --output-format=json 2>/dev/null");
  FILE* f = popen(command.c_str(), "r");
  if (f == nullptr) return -1;
  std::string out;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), f)) > 0) out.append(buffer, n);
  if (pclose(f) != 0) {
    *error = "fio failed";
    return -1;
  }
  // fio may print notes before the JSON.
  auto json = ParseJson(out.substr(std::min(out.find('{'), out.size())));
  if (!json.ok()) {
    *error = std::string(json.status().message());
    return -1;
  }
  const Json* jobs = json->Find("jobs");
  if (jobs == nullptr || !jobs->is_array() || jobs->array().empty()) return -1;
  const Json* read = jobs->array()[0].Find("read");
  const Json* runtime = read ? read->Find("runtime") : nullptr;
  if (runtime == nullptr || !runtime->is_number()) return -1;
  return runtime->double_value() / 1000;
}

// Minor page faults of the whole process so far (every thread's).
long MinorFaults() {
  struct rusage usage;
  return getrusage(RUSAGE_SELF, &usage) == 0 ? usage.ru_minflt : 0;
}

std::string FaultNote(long faults, int repeats) {
  return absl::StrCat(faults / std::max(1, repeats), " page faults");
}

// read() of the whole file into dst in kChunk calls, one thread; seconds or
// -1.
double ReadLoop(int fd, uint8_t* dst, uint64_t size) {
  const double start = Now();
  uint64_t done = 0;
  while (done < size) {
    ssize_t n = pread(fd, dst + done,
                      static_cast<size_t>(std::min(kChunk, size - done)),
                      static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return -1;
    done += static_cast<uint64_t>(n);
  }
  return Now() - start;
}

// Private tmpfs mounts for the fresh-memory rows; must run before any thread.
struct PrivateMounts {
  std::string never, advise, why_not;
};

PrivateMounts MountPrivateTmpfs(uint64_t size) {
  PrivateMounts m;
  if (unshare(CLONE_NEWNS) != 0 ||
      mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    m.why_not = absl::StrCat("private mount namespace: ", std::strerror(errno));
    return m;
  }
  for (auto [huge, dir] :
       {std::pair<const char*, std::string*>{"never", &m.never},
        {"advise", &m.advise}}) {
    char path[] = "/tmp/weightd-read-bench-XXXXXX";
    if (mkdtemp(path) == nullptr) continue;
    const std::string options =
        absl::StrCat("size=", (size >> 20) * 2 + 64, "m,huge=", huge);
    if (mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, options.c_str()) !=
        0) {
      m.why_not =
          absl::StrCat("mount -o ", options, ": ", std::strerror(errno));
      rmdir(path);
      continue;
    }
    *dir = path;
  }
  return m;
}

void Unmount(const std::string& dir) {
  if (dir.empty()) return;
  umount2(dir.c_str(), MNT_DETACH);
  rmdir(dir.c_str());
}

// Runfiles of `bazel run` (the working directory), else beside argv[0].
std::string Runfile(const std::string& argv0, const std::string& path) {
  if (access(path.c_str(), R_OK) == 0) return path;
  std::string beside = absl::StrCat(argv0, ".runfiles/weightd/", path);
  if (access(beside.c_str(), R_OK) == 0) return beside;
  return "";
}

void Print(const std::vector<Row>& rows) {
  std::printf("%-8s %-58s %9s %8s %7s\n", "section", "row", "seconds", "GiB/s",
              "ratio");
  std::string section;
  for (const Row& r : rows) {
    if (r.section != section) {
      section = r.section;
      std::printf("\n");
    }
    std::string seconds =
        std::isnan(r.seconds) ? "n/a" : absl::StrFormat("%.3f", r.seconds);
    if (!std::isnan(r.seconds) && r.seconds < 0.1) {
      seconds = absl::StrFormat("%.4f", r.seconds);
    }
    std::string rate =
        r.bytes && !std::isnan(r.seconds)
            ? absl::StrFormat("%.2f", bench::GiBps(r.bytes, r.seconds))
            : "";
    std::string ratio =
        std::isnan(r.ratio) ? "" : absl::StrFormat("%.2f", r.ratio);
    std::printf("%-8s %-58s %9s %8s %7s%s%s\n", r.section.c_str(),
                r.name.c_str(), seconds.c_str(), rate.c_str(), ratio.c_str(),
                r.note.empty() ? "" : "  ", r.note.c_str());
  }
}

int Main(const std::string& argv0, const PrivateMounts& mounts) {
  const uint64_t size = static_cast<uint64_t>(absl::GetFlag(FLAGS_size_mib))
                        << 20;
  const int repeats = std::max(1, absl::GetFlag(FLAGS_repeats));
  const std::string path =
      absl::StrCat(absl::GetFlag(FLAGS_dir), "/weightd-read-bench-",
                   absl::GetFlag(FLAGS_size_mib), "m.bin");
  if (!bench::EnsureFile(path, size)) {
    std::fprintf(stderr, "cannot write %s\n", path.c_str());
    return 1;
  }
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  // As the daemon opens it, with the alignment it needs.
  const DirectFd direct = OpenDirectIo(fd, path);
  int64_t prewarm_mib = absl::GetFlag(FLAGS_prewarm_mib);
  if (prewarm_mib < 0) prewarm_mib = 6 * absl::GetFlag(FLAGS_size_mib);
  double prewarm_seconds = 0;
  if (prewarm_mib > 0) {
    const double start = Now();
    const uint64_t bytes = static_cast<uint64_t>(prewarm_mib) << 20;
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p != MAP_FAILED) {
      // In 2 MiB pages where the kernel gives them: whole blocks, which
      // later huge-page allocations are carved from.
      (void)madvise(p, bytes, MADV_HUGEPAGE);
      (void)PrefaultForWrite(static_cast<uint8_t*>(p), bytes);
      munmap(p, bytes);
    }
    prewarm_seconds = Now() - start;
  }
  const int cores = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  auto pool = ThreadPool::Create("bench", std::max(1, cores), 0);
  auto fake = FakeDevice::Create(FakeDevice::Options());
  if (fd < 0 || !pool.ok() || !fake.ok()) {
    std::fprintf(stderr, "setup failed\n");
    return 1;
  }
  std::vector<IoBackend> backends = {IoBackend::kIoUring, IoBackend::kPread};
  auto make_reader = [](IoBackend backend) {
    ReaderOptions options;  // the daemon's defaults, unless a flag says
    options.backend = backend;
    // The daemon's SQEs in flight per pipeline with --io_queue_depth=0
    // (device_set.cc).
    options.ring_entries = 64;
    if (int q = absl::GetFlag(FLAGS_queue_depth); q > 0) {
      options.queue_depth = q;
    }
    if (int t = absl::GetFlag(FLAGS_pread_threads); t > 0) {
      options.pread_threads = t;
    }
    if (int a = absl::GetFlag(FLAGS_io_uring_async); a >= 0) {
      options.io_uring_async_workers = a != 0;
    }
    if (int w = absl::GetFlag(FLAGS_io_uring_workers); w != 0) {
      options.io_uring_max_workers = w;
    }
    if (int64_t k = absl::GetFlag(FLAGS_request_kib); k > 0) {
      options.max_request_bytes = static_cast<size_t>(k) << 10;
    }
    return CreateReader(options);
  };
  const std::string sections =
      absl::StrCat(",", absl::GetFlag(FLAGS_sections), ",");
  auto run = [&](const char* section) {
    return sections.find(absl::StrCat(",", section, ",")) != std::string::npos;
  };
  std::string warnings;
  auto default_instance = SharedMemoryInstance::Default();
  double max_resident = 0;
  // One pass runs every row once; the passes interleave baselines and
  // weightd rows, so both see the same (shared, noisy) machine.
  auto pass = [&](std::vector<Row>& rows) -> bool {
    const int repeats = 1;
    // One host arena and one fake-GPU arena, allocated (and prefaulted) before
    // the read rows: they measure reads, the fresh rows what new memory costs.
    auto arena_segment = SharedMemorySegment::Create(size, "weightd", true);
    auto gpu_arena = (*fake)->Allocate(size);
    if (!arena_segment.ok() || !gpu_arena.ok()) {
      std::fprintf(stderr, "arena allocation failed\n");
      return false;
    }
    auto drop = [&] {
      max_resident = std::max(max_resident, DropFromPageCache(path));
    };

    // The cold rows: the daemon's path with its defaults (DeviceSet::Options
    // as the flags leave them: staging ring, request size from the device,
    // --direct_io=auto with the descriptor OpenDirectIo gives), then the
    // same pipeline with --direct_io=on and off. (The daemon reads files
    // with the Reader only through the pipeline: host copies come from the
    // mapping.)
    auto cold_rows = [&](std::function<void()> before) {
      const DeviceSet::Options daemon;
      StagingOptions staging;
      staging.chunk_bytes = daemon.staging_chunk_bytes;
      staging.num_buffers = daemon.staging_buffers;
      staging.request_bytes = daemon.io_request_bytes;
      if (int64_t k = absl::GetFlag(FLAGS_request_kib); k > 0) {
        staging.request_bytes = static_cast<uint64_t>(k) << 10;
      }
      const DirectIoMode daemon_mode =
          ParseDirectIoMode(daemon.direct_io).value_or(DirectIoMode::kAuto);
      std::vector<DirectIoMode> modes = {daemon_mode};
      for (DirectIoMode m :
           {DirectIoMode::kAuto, DirectIoMode::kOn, DirectIoMode::kOff}) {
        if (m != daemon_mode) modes.push_back(m);
      }
      for (IoBackend backend : backends) {
        for (DirectIoMode mode : modes) {
          auto reader = make_reader(backend);
          if (!reader.ok()) {
            rows.push_back(
                {"cold", absl::StrCat(IoBackendName(backend), " skipped"), NAN,
                 0, NAN, std::string(reader.status().message())});
            break;
          }
          StagingOptions o = staging;
          o.direct_io = mode;
          auto pipeline =
              StagingPipeline::Create(fake->get(), std::move(*reader), o);
          if (!pipeline.ok()) continue;
          FileSource file;
          file.fd = fd;
          file.direct_fd = direct.fd.get();
          file.direct_alignment = direct.alignment;
          file.size = size;
          file.name = path;
          // The daemon keeps one pipeline per GPU: its staging buffers are
          // allocated by the first load, not timed here (a cached chunk).
          (void)(*pipeline)->Run(
              gpu_arena->get(), file,
              {CopyRange::FromFile(0, std::min(size, kChunk), 0)}, nullptr,
              nullptr);
          const std::vector<CopyRange> ranges = {
              CopyRange::FromFile(0, size, 0)};
          std::string error;
          StagingStats stats;
          double t = Measure(
              repeats, before,
              [&] {
                double start = Now();
                stats = StagingStats();
                absl::Status s = (*pipeline)->Run(
                    gpu_arena->get(), file, ranges, nullptr, nullptr, &stats);
                if (!s.ok()) error = s.ToString();
                return s.ok() ? Now() - start : -1;
              },
              &error);
          if (error.empty()) {
            error = absl::StrFormat(
                "%s%.0f%% direct, %llu MiB calls",
                stats.host_addressed ? "in place, " : "",
                100.0 * static_cast<double>(stats.direct_bytes) /
                    static_cast<double>(size),
                static_cast<unsigned long long>(stats.request_bytes >> 20));
            if (stats.probe_bytes > 0) {
              absl::StrAppend(&error, ", measuring the device: ",
                              stats.probe_bytes >> 20, " MiB");
            }
          }
          rows.push_back({"cold",
                          absl::StrCat("weightd ", IoBackendName(backend),
                                       " -> fake GPU, --direct_io=",
                                       DirectIoModeName(mode),
                                       mode == daemon_mode ? " (default)" : ""),
                          t, size, NAN, error});
        }
      }
    };

    // Reads into the host arena / through the pipeline, warm.
    auto read_rows = [&](const std::string& section,
                         std::function<void()> before) {
      for (IoBackend backend : backends) {
        auto reader = make_reader(backend);
        if (!reader.ok()) {
          rows.push_back({section,
                          absl::StrCat(IoBackendName(backend), " skipped"), NAN,
                          0, NAN, std::string(reader.status().message())});
          continue;
        }
        Reader* r = reader->get();  // buffered, queue_depth() reads of kChunk
        std::string error;
        const long faults = MinorFaults();
        double t = Measure(
            repeats, before,
            [&] {
              double start = Now();
              absl::Status s = bench::ReadWithReader(r, fd, size, kChunk,
                                                     (*arena_segment)->data());
              if (!s.ok()) error = s.ToString();
              return s.ok() ? Now() - start : -1;
            },
            &error);
        if (error.empty()) error = FaultNote(MinorFaults() - faults, repeats);
        rows.push_back({section,
                        absl::StrCat("weightd ", r->name(), " -> host arena"),
                        t, size, NAN, error});
        auto pipeline = StagingPipeline::Create(fake->get(), std::move(*reader),
                                                StagingOptions());
        if (!pipeline.ok()) continue;
        FileSource file;
        file.fd = fd;
        file.size = size;
        file.name = path;
        const std::vector<CopyRange> ranges = {CopyRange::FromFile(0, size, 0)};
        // The daemon keeps one pipeline per GPU: its staging buffers are
        // allocated by the first load, not timed here.
        (void)(*pipeline)->Run(
            gpu_arena->get(), file,
            {CopyRange::FromFile(0, std::min(size, kChunk), 0)}, nullptr,
            nullptr);
        error.clear();
        bool in_place = false;
        t = Measure(
            repeats, before,
            [&] {
              double start = Now();
              StagingStats stats;
              absl::Status s = (*pipeline)->Run(gpu_arena->get(), file, ranges,
                                                nullptr, nullptr, &stats);
              in_place = stats.host_addressed;
              if (!s.ok()) error = s.ToString();
              return s.ok() ? Now() - start : -1;
            },
            &error);
        rows.push_back({section,
                        absl::StrCat("weightd ", IoBackendName(backend),
                                     " -> staging pipeline -> fake GPU",
                                     in_place ? " (in place)" : ""),
                        t, size, NAN, error});
      }
    };

    std::string error;
    double warm_io_uring = NAN, warm_pread = NAN;
    if (run("cold")) {
      // ---- cold ----
      const std::string dd = absl::StrCat("dd if=", path,
                                          " of=/dev/null iflag=direct bs=16M "
                                          "status=none");
      Row dd_row{"cold", "dd iflag=direct bs=16M",
                 Measure(
                     repeats, drop, [&] { return TimeCommand(dd); }, &error),
                 size};
      rows.push_back(dd_row);
      error.clear();
      Row fio_row{
          "cold",
          "fio read direct bs=1M iodepth=16 io_uring",
          Measure(
              repeats, drop, [&] { return FioSeconds(path, &error); }, &error),
          size,
          NAN,
          error};
      rows.push_back(fio_row);
      // Ratios after the passes, against the better tool (cold_baseline).
      cold_rows(drop);
    }
    if (run("warm")) {
      // ---- warm ----
      bench::ReadWholeFile(path, kChunk, nullptr);
      error.clear();
      // One 8 MiB buffer stays in the CPU's caches: the kernel's copy never
      // waits for memory. Not what a load does, so not the baseline.
      rows.push_back({"warm", "read() 8 MiB calls into one reused buffer",
                      Measure(
                          repeats, nullptr,
                          [&] {
                            uint64_t got = 0;
                            double t = bench::ReadWholeFile(path, kChunk, &got);
                            return got == size ? t : -1;
                          },
                          &error),
                      size});
      // The baseline writes where the weightd rows write: every byte of the
      // same (prefaulted) 1 GiB host arena.
      const long faults = MinorFaults();
      Row read_row{
          "warm", "pread() 8 MiB calls into the host arena (baseline)",
          Measure(
              repeats, nullptr,
              [&] { return ReadLoop(fd, (*arena_segment)->data(), size); },
              &error),
          size};
      read_row.note = FaultNote(MinorFaults() - faults, repeats);
      rows.push_back(read_row);
      const size_t warm_begin = rows.size();
      read_rows("warm", nullptr);
      for (size_t i = warm_begin; i < rows.size(); ++i) {
        rows[i].ratio = read_row.seconds / rows[i].seconds;
        if (rows[i].name.find("host arena") == std::string::npos) continue;
        if (rows[i].name.find("io_uring") != std::string::npos) {
          warm_io_uring = rows[i].ratio;
        } else if (rows[i].name.find("pread") != std::string::npos) {
          warm_pread = rows[i].ratio;
        }
      }
    }
    arena_segment->reset();
    gpu_arena->reset();
    if (run("fresh")) {
      // ---- fresh memory: allocate, then write every byte once ----
      auto fill = [&](uint8_t* p) { std::memset(p, 1, size); };
      error.clear();
      // Each row runs once untimed first: what an allocation costs depends
      // on what the memory it is handed did before (in this VM, 2 MiB
      // blocks that 4 KiB allocations just broke up, or that were never
      // touched, are several times slower to fault in), so every row
      // measures memory its own kind of allocation just freed.
      auto anon_once = [&] {
        double start = Now();
        void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return -1.0;
        fill(static_cast<uint8_t*>(p));
        double t = Now() - start;
        munmap(p, size);
        return t;
      };
      (void)anon_once();
      Row anon_row{"fresh", "anonymous mmap, first touch by memset (baseline)",
                   Measure(repeats, nullptr, anon_once, &error), size};
      rows.push_back(anon_row);
      auto fresh_row = [&](const std::string& name,
                           const std::function<absl::Status(
                               uint8_t**, std::function<void()>*)>& make) {
        std::string err;
        auto once = [&] {
          double start = Now();
          uint8_t* p = nullptr;
          std::function<void()> release;
          absl::Status s = make(&p, &release);
          if (!s.ok()) {
            err = s.ToString();
            return -1.0;
          }
          fill(p);
          double elapsed = Now() - start;
          release();
          return elapsed;
        };
        (void)once();
        double t = Measure(repeats, nullptr, once, &err);
        rows.push_back({"fresh", name, t, size, anon_row.seconds / t, err});
      };
      // The fake GPU's host memory (AllocateHostMemory), each way it can
      // get its pages.
      for (bool huge : {true, false}) {
        for (bool prefault : {true, false}) {
          HostMemoryOptions options;
          options.huge_pages = huge;
          options.prefault = prefault;
          fresh_row(absl::StrCat(
                        "host memory (", huge ? "MADV_HUGEPAGE" : "4 KiB pages",
                        ", ", prefault ? "parallel prefault" : "first touch",
                        ") + memset", huge && !prefault ? ", the default" : ""),
                    [&, options](uint8_t** p, std::function<void()>* release) {
                      auto buffer = AllocateHostMemory(size, options);
                      if (!buffer.ok()) return buffer.status();
                      *p = (*buffer)->data();
                      std::shared_ptr<PinnedBuffer> held(std::move(*buffer));
                      *release = [held]() mutable { held.reset(); };
                      return absl::OkStatus();
                    });
        }
      }
      // What the daemon did before: fallocate, then MAP_POPULATE on one thread.
      fresh_row(
          "segment /dev/shm, fallocate + MAP_POPULATE (old) + memset",
          [&](uint8_t** p, std::function<void()>* release) {
            auto segment = SharedMemorySegment::Create(size, "weightd", false);
            if (!segment.ok()) return segment.status();
            const std::string name = (*segment)->name();
            int shm = shm_open(name.c_str(), O_RDWR, 0);
            void* m = mmap(nullptr, size, PROT_READ | PROT_WRITE,
                           MAP_SHARED | MAP_POPULATE, shm, 0);
            close(shm);
            if (m == MAP_FAILED) return absl::InternalError("mmap");
            *p = static_cast<uint8_t*>(m);
            std::shared_ptr<SharedMemorySegment> held(std::move(*segment));
            *release = [held, m, size]() mutable {
              munmap(m, size);
              held.reset();
            };
            return absl::OkStatus();
          });
      auto segment_in = [&](std::shared_ptr<SharedMemoryInstance> instance) {
        return [instance, size](uint8_t** p, std::function<void()>* release) {
          auto segment = instance->CreateSegment(size, "weightd", true);
          if (!segment.ok()) return segment.status();
          *p = (*segment)->data();
          std::shared_ptr<SharedMemorySegment> held(std::move(*segment));
          *release = [held]() mutable { held.reset(); };
          return absl::OkStatus();
        };
      };
      if (default_instance.ok()) {
        const HugePagePolicy& policy = (*default_instance)->huge_pages();
        fresh_row(
            absl::StrCat("segment /dev/shm (",
                         policy.segments == HugePageMode::kNever ? "4 KiB pages"
                                                                 : "huge pages",
                         "), parallel prefault + memset"),
            segment_in(*default_instance));
      }
      for (auto [dir, label] :
           {std::pair<std::string, const char*>{mounts.never, "huge=never"},
            {mounts.advise, "huge=advise, MADV_HUGEPAGE"}}) {
        if (dir.empty()) {
          rows.push_back({"fresh", absl::StrCat("segment tmpfs ", label), NAN,
                          0, NAN, mounts.why_not});
          continue;
        }
        SharedMemoryInstance::Options options;
        options.directory = dir;
        auto instance = SharedMemoryInstance::Create(options);
        if (!instance.ok()) continue;
        fresh_row(absl::StrCat("segment tmpfs ", label,
                               ", parallel prefault + memset"),
                  segment_in(*instance));
      }
    }
    double cast_ratio = NAN;
    if (run("cast")) {
      // ---- casts: float32 source, same pool and chunks as placement ----
      const size_t elements = size / 4;
      std::vector<float> source(elements);
      for (size_t i = 0; i < elements; ++i) {
        source[i] =
            static_cast<float>(static_cast<int>(i % 4093) - 2046) * 1e-3f;
      }
      const uint8_t* src = reinterpret_cast<const uint8_t*>(source.data());
      std::vector<uint8_t> warm_copy(size, 0), warm_cast(size / 2, 0);
      const size_t tasks = (elements + kElementsPerTask - 1) / kElementsPerTask;
      auto parallel = [&](const std::function<void(size_t, size_t)>& work) {
        return (*pool)
            ->ParallelFor(tasks,
                          [&](size_t task) {
                            const size_t begin = task * kElementsPerTask;
                            work(begin,
                                 std::min(kElementsPerTask, elements - begin));
                            return absl::OkStatus();
                          })
            .ok();
      };
      auto copy = [&](uint8_t* dst) {
        return parallel([&](size_t begin, size_t n) {
          std::memcpy(dst + 4 * begin, src + 4 * begin, 4 * n);
        });
      };
      auto cast = [&](uint8_t* dst, CastIsa isa, bool half) {
        return parallel([&](size_t begin, size_t n) {
          if (half) {
            Float32ToFloat16(src + 4 * begin, n, dst + 2 * begin, isa);
          } else {
            Float32ToBFloat16(src + 4 * begin, n, dst + 2 * begin, isa);
          }
        });
      };
      auto timed = [&](const std::function<bool()>& op) {
        double start = Now();
        return op() ? Now() - start : -1.0;
      };
      error.clear();
      Row copy_warm{
          "cast", "memcpy, warm destination (baseline)",
          Measure(
              repeats, nullptr,
              [&] { return timed([&] { return copy(warm_copy.data()); }); },
              &error),
          size};
      rows.push_back(copy_warm);
      rows.push_back({"cast", "memcpy one thread, warm destination",
                      Measure(
                          repeats, nullptr,
                          [&] {
                            return timed([&] {
                              std::memcpy(warm_copy.data(), src, size);
                              return true;
                            });
                          },
                          &error),
                      size, NAN});
      const CastIsa isa = BestCastIsa();
      struct CastCase {
        const char* name;
        CastIsa isa;
        bool half;
      };
      for (CastCase c :
           {CastCase{"float32 -> bfloat16", isa, false},
            CastCase{"float32 -> float16", isa, true},
            CastCase{"float32 -> bfloat16", CastIsa::kScalar, false}}) {
        if (c.isa == CastIsa::kScalar && isa == CastIsa::kScalar &&
            c.half == false && !std::isnan(cast_ratio)) {
          continue;  // the first row was already scalar
        }
        double t = Measure(
            repeats, nullptr,
            [&] {
              return timed(
                  [&] { return cast(warm_cast.data(), c.isa, c.half); });
            },
            &error);
        Row row{"cast",
                absl::StrCat(c.name, " (", CastIsaName(c.isa),
                             "), warm destination"),
                t, size, copy_warm.seconds / t};
        if (std::isnan(cast_ratio)) cast_ratio = row.ratio;
        rows.push_back(row);
      }
      // Big-endian checkpoints: the swap is the copy.
      rows.push_back({"cast",
                      absl::StrCat("byte swap of 4-byte elements (",
                                   CastIsaName(isa), "), warm destination"),
                      Measure(
                          repeats, nullptr,
                          [&] {
                            return timed([&] {
                              return parallel([&](size_t begin, size_t n) {
                                SwapBytesCopy(src + 4 * begin,
                                              warm_copy.data() + 4 * begin,
                                              4 * n, 4, isa);
                              });
                            });
                          },
                          &error),
                      size, NAN});
      rows.back().ratio = copy_warm.seconds / rows.back().seconds;
      // What placement casts from: a mapping of the file (in the page cache),
      // mapped afresh, so every 4 KiB of it faults on first access.
      {
        int file_fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
        double mapped_t = Measure(
            repeats, nullptr,
            [&] {
              void* m = mmap(nullptr, size, PROT_READ, MAP_SHARED, file_fd, 0);
              if (m == MAP_FAILED) return -1.0;
              const uint8_t* file_src = static_cast<const uint8_t*>(m);
              double t = timed([&] {
                return parallel([&](size_t begin, size_t n) {
                  Float32ToBFloat16(file_src + 4 * begin, n,
                                    warm_cast.data() + 2 * begin, isa);
                });
              });
              munmap(m, size);
              return t;
            },
            &error);
        close(file_fd);
        rows.push_back(
            {"cast",
             absl::StrCat("float32 -> bfloat16 (", CastIsaName(isa),
                          ") from a fresh mapping of the cached file"),
             mapped_t, size, copy_warm.seconds / mapped_t,
             "what placement casts from"});
      }
      // Fresh: the daemon's segment (parallel prefault) made inside the timing.
      auto fresh_segment_op = [&](uint64_t bytes,
                                  const std::function<bool(uint8_t*)>& op) {
        return timed([&] {
          auto segment = SharedMemorySegment::Create(bytes, "weightd", true);
          return segment.ok() && op((*segment)->data());
        });
      };
      Row copy_fresh{"cast",
                     "memcpy, fresh segment (baseline of the row below)",
                     Measure(
                         repeats, nullptr,
                         [&] { return fresh_segment_op(size, copy); }, &error),
                     size};
      rows.push_back(copy_fresh);
      double t = Measure(
          repeats, nullptr,
          [&] {
            return fresh_segment_op(
                size / 2, [&](uint8_t* dst) { return cast(dst, isa, false); });
          },
          &error);
      rows.push_back({"cast",
                      absl::StrCat("float32 -> bfloat16 (", CastIsaName(isa),
                                   "), fresh segment"),
                      t, size, copy_fresh.seconds / t});
      source = std::vector<float>();
      warm_copy = std::vector<uint8_t>();
      warm_cast = std::vector<uint8_t>();
    }

    (void)warm_io_uring;
    (void)warm_pread;
    (void)cast_ratio;
    return true;
  };
  std::vector<std::vector<Row>> passes(repeats);
  for (std::vector<Row>& rows : passes) {
    if (!pass(rows)) return 1;
  }
  // Medians over the passes, of the times and of each pass's own ratio.
  std::vector<Row> rows = passes[0];
  for (size_t i = 0; i < rows.size(); ++i) {
    std::vector<double> seconds, ratios;
    for (const std::vector<Row>& p : passes) {
      if (i >= p.size() || p[i].name != rows[i].name) continue;
      seconds.push_back(p[i].seconds);
      ratios.push_back(p[i].ratio);
      if (rows[i].note.empty()) rows[i].note = p[i].note;
    }
    rows[i].seconds = Median(seconds);
    rows[i].ratio = Median(ratios);
  }
  // Cold: the baseline is whichever of dd and fio has the lower median (the
  // better tool; not the faster of the two in each pass, which would pit
  // the best of two noisy samples against one); each cold row's ratio is
  // the median over the passes of that tool's time over the row's.
  {
    auto index_of = [&](const std::string& prefix) -> int {
      for (size_t i = 0; i < rows.size(); ++i) {
        if (rows[i].section == "cold" && rows[i].name.rfind(prefix, 0) == 0) {
          return static_cast<int>(i);
        }
      }
      return -1;
    };
    const int dd = index_of("dd "), fio = index_of("fio ");
    int base = dd;
    if (base < 0 || (fio >= 0 && !(rows[fio].seconds >= rows[dd].seconds))) {
      base = fio;
    }
    if (base >= 0) {
      for (size_t i = 0; i < rows.size(); ++i) {
        if (rows[i].section != "cold" ||
            rows[i].name.rfind("weightd", 0) != 0) {
          continue;
        }
        std::vector<double> ratios;
        for (const std::vector<Row>& p : passes) {
          if (i < p.size() && p[i].name == rows[i].name) {
            ratios.push_back(p[base].seconds / p[i].seconds);
          }
        }
        rows[i].ratio = Median(ratios);
      }
      rows[base].name += " (baseline)";
    }
  }
  auto ratio_of = [&](const std::string& section, const std::string& prefix) {
    double best = NAN;
    for (const Row& r : rows) {
      if (r.section == section && r.name.rfind(prefix, 0) == 0 &&
          !(r.ratio <= best)) {
        best = r.ratio;
      }
    }
    return best;
  };
  // The daemon's cold figure: the backend it picks onto the (fake) GPU with
  // its defaults.
  const double cold_ratio = ratio_of(
      "cold",
      absl::StrCat(
          "weightd ", IoBackendName(ChooseIoBackend(IoBackend::kAuto).backend),
          " -> fake GPU, --direct_io=",
          DirectIoModeName(*ParseDirectIoMode(DeviceSet::Options().direct_io)),
          " (default)"));
  const double warm_io_uring = ratio_of("warm", "weightd io_uring -> host");
  const double warm_pread = ratio_of("warm", "weightd pread -> host");
  const double cast_ratio =
      ratio_of("cast", absl::StrCat("float32 -> bfloat16 (",
                                    CastIsaName(BestCastIsa()), "), warm"));
  if (max_resident > 0.01) {
    absl::StrAppend(&warnings, "warning: up to ", int(max_resident * 100),
                    "% of the file stayed in the page cache after a drop\n");
  }

  // ---- warm attach (Python) ----
  const std::string counts = absl::GetFlag(FLAGS_attach_counts);
  const std::string weightd = Runfile(argv0, "server/weightd");
  const std::string script = Runfile(argv0, "tests/bench/attach_bench.py");
  const std::string harness = Runfile(argv0, "tests/hardening/harness.py");
  const std::string package = Runfile(argv0, "client/python/weightd/client.py");
  if (!run("attach")) {
  } else if (!counts.empty() && (weightd.empty() || script.empty() ||
                                 harness.empty() || package.empty())) {
    rows.push_back({"attach", "skipped", NAN, 0, NAN,
                    "run through bazel run (needs the daemon and client)"});
  } else if (!counts.empty()) {
    const std::string work =
        absl::StrCat(absl::GetFlag(FLAGS_dir), "/weightd-read-bench-attach");
    const std::string command = absl::StrCat(
        "/usr/bin/python3 ", script, " --weightd=", weightd, " --package=",
        package.substr(0, package.size() - strlen("/weightd/client.py")),
        " --harness=", harness, " --dir=", work, " --counts=", counts,
        " --repeats=", std::max(1, absl::GetFlag(FLAGS_attach_repeats)));
    FILE* f = popen(command.c_str(), "r");
    char line[1024];
    double weightd_seconds = NAN;
    while (f != nullptr && std::fgets(line, sizeof(line), f) != nullptr) {
      std::vector<std::string> fields =
          absl::StrSplit(absl::StripSuffix(line, "\n"), '\t');
      if (fields.size() != 3 || fields[0].rfind("ROW ", 0) != 0) continue;
      double seconds = NAN;
      int tensors = 0;
      (void)absl::SimpleAtod(fields[1], &seconds);
      (void)absl::SimpleAtoi(fields[2], &tensors);
      Row row{"attach", fields[0].substr(4), seconds, 0};
      if (tensors == 0) {  // a latency row: no tensors, no baseline
        row.note = absl::StrFormat("%.2f ms", seconds * 1e3);
        rows.push_back(row);
        continue;
      }
      row.note = absl::StrFormat("%.1f us/tensor", seconds * 1e6 / tensors);
      if (fields[0].find("weightd") != std::string::npos) {
        weightd_seconds = seconds;
      } else {
        // memmap is the baseline of the weightd row just above it.
        rows.back().ratio = seconds / weightd_seconds;
        row.note += " (baseline of the row above)";
      }
      rows.push_back(row);
    }
    if (f == nullptr || pclose(f) != 0) {
      rows.push_back({"attach", "failed", NAN, 0, NAN, command});
    }
  }

  std::printf(
      "\nread_bench: %s, %.0f MiB, median of %d interleaved passes, %d CPUs, "
      "casts %s, %lld MiB prewarmed in %.1f s\n%s\n",
      path.c_str(), size / 1048576.0, repeats, cores,
      CastIsaName(BestCastIsa()), static_cast<long long>(prewarm_mib),
      prewarm_seconds,
      default_instance.ok()
          ? (*default_instance)->huge_pages().Describe().c_str()
          : "");
  Print(rows);
  if (run("cold")) {
    std::printf("\ndirect io (--direct_io=auto): %s\n",
                DirectIoSummary(DirectIoMode::kAuto).c_str());
  }
  std::printf("\n%s", warnings.c_str());
  close(fd);
  if (!absl::GetFlag(FLAGS_keep_file)) unlink(path.c_str());
  std::printf(
      "ratios: cold=%.2f warm_io_uring=%.2f warm_pread=%.2f "
      "cast_vs_memcpy=%.2f\n",
      cold_ratio, warm_io_uring, warm_pread, cast_ratio);
  return 0;
}

}  // namespace
}  // namespace weightd

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  // Before any thread: a private mount namespace wants a single thread.
  weightd::PrivateMounts mounts;
  if (absl::GetFlag(FLAGS_private_tmpfs)) {
    mounts = weightd::MountPrivateTmpfs(
        static_cast<uint64_t>(absl::GetFlag(FLAGS_size_mib)) << 20);
  } else {
    mounts.why_not = "--private_tmpfs=false";
  }
  int rc = weightd::Main(argv[0], mounts);
  weightd::Unmount(mounts.never);
  weightd::Unmount(mounts.advise);
  return rc;
}
