// Chooses the Reader backend at start: io_uring where the kernel allows it,
// else the pread thread pool (logged once, and reported by Reader::name() and
// Reader::reason()).
#ifndef WEIGHTD_LOADER_IO_READER_FACTORY_H_
#define WEIGHTD_LOADER_IO_READER_FACTORY_H_

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "loader/io/reader.h"

namespace weightd {

enum class IoBackend { kAuto, kIoUring, kPread };

// "auto", "io_uring" (also "uring"), "pread".
absl::StatusOr<IoBackend> ParseIoBackend(absl::string_view name);
const char* IoBackendName(IoBackend backend);

struct ReaderOptions {
  IoBackend backend = IoBackend::kAuto;
  int queue_depth = 16;
  int pread_threads = 4;
  // Bytes one system call (SQE) asks for at most; longer reads are split
  // into several in flight at once. 0: no cap.
  size_t max_request_bytes = 0;
  // io_uring: SQEs in flight at most (0: queue_depth). pread keeps
  // pread_threads: more threads than cores thrash on page-cache copies
  // (io_bench: 32 threads ran the warm pipeline at 13% of read(), 4 at 67%).
  int ring_entries = 0;
  bool io_uring_async_workers = true;
  // IoUringReader::Options::max_workers (0: the online CPUs).
  int io_uring_max_workers = 0;
};

// kAuto: io_uring when IoUringReader::Probe() passes, else pread (the reason
// names the refused call). kIoUring: io_uring or its error. kPread: pread.
absl::StatusOr<std::unique_ptr<Reader>> CreateReader(
    const ReaderOptions& options);

// The backend kAuto picks in this process and why, without creating a reader.
struct IoBackendChoice {
  IoBackend backend = IoBackend::kPread;
  std::string reason;
};
IoBackendChoice ChooseIoBackend(IoBackend requested);

}  // namespace weightd

#endif  // WEIGHTD_LOADER_IO_READER_FACTORY_H_
