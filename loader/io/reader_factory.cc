#include "loader/io/reader_factory.h"

#include <atomic>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "loader/common/logging.h"
#include "loader/io/io_uring_reader.h"
#include "loader/io/pread_reader.h"

namespace weightd {

absl::StatusOr<IoBackend> ParseIoBackend(absl::string_view name) {
  std::string lower = absl::AsciiStrToLower(name);
  if (lower.empty() || lower == "auto") return IoBackend::kAuto;
  if (lower == "io_uring" || lower == "uring" || lower == "iouring") {
    return IoBackend::kIoUring;
  }
  if (lower == "pread") return IoBackend::kPread;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown I/O backend '", name, "' (want auto, io_uring or pread)"));
}

const char* IoBackendName(IoBackend backend) {
  switch (backend) {
    case IoBackend::kAuto:
      return "auto";
    case IoBackend::kIoUring:
      return "io_uring";
    case IoBackend::kPread:
      return "pread";
  }
  return "?";
}

IoBackendChoice ChooseIoBackend(IoBackend requested) {
  IoBackendChoice choice;
  switch (requested) {
    case IoBackend::kPread:
      choice.backend = IoBackend::kPread;
      choice.reason = "pread requested";
      return choice;
    case IoBackend::kIoUring:
      choice.backend = IoBackend::kIoUring;
      choice.reason = "io_uring requested";
      return choice;
    case IoBackend::kAuto:
      break;
  }
  absl::Status probe = IoUringReader::Probe();
  if (probe.ok()) {
    choice.backend = IoBackend::kIoUring;
    choice.reason = "io_uring available";
  } else {
    choice.backend = IoBackend::kPread;
    choice.reason = absl::StrCat("io_uring unavailable (", probe.message(),
                                 "); using the pread thread pool");
  }
  return choice;
}

absl::StatusOr<std::unique_ptr<Reader>> CreateReader(
    const ReaderOptions& options) {
  IoBackendChoice choice = ChooseIoBackend(options.backend);
  if (choice.backend == IoBackend::kPread &&
      options.backend == IoBackend::kAuto) {
    static std::atomic<bool> logged{false};
    if (!logged.exchange(true)) LogWarning("%s", choice.reason);
  }
  if (choice.backend == IoBackend::kIoUring) {
    IoUringReader::Options o;
    o.queue_depth = options.queue_depth;
    o.max_request_bytes = options.max_request_bytes;
    o.ring_entries = options.ring_entries;
    o.async_workers = options.io_uring_async_workers;
    o.max_workers = options.io_uring_max_workers;
    o.reason = choice.reason;
    auto reader = IoUringReader::Create(o);
    if (!reader.ok()) return reader.status();
    return std::unique_ptr<Reader>(std::move(*reader));
  }
  PreadReader::Options o;
  o.queue_depth = options.queue_depth;
  o.threads = options.pread_threads;
  o.max_request_bytes = options.max_request_bytes;
  o.reason = choice.reason;
  auto reader = PreadReader::Create(o);
  if (!reader.ok()) return reader.status();
  return std::unique_ptr<Reader>(std::move(*reader));
}

}  // namespace weightd
