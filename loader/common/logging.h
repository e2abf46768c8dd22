// A tiny leveled logger: one line per event on stderr, timestamped. Debian's
// Abseil has no absl/log, and library code must never abort, so there is no
// FATAL level.
#ifndef WEIGHTD_LOADER_COMMON_LOGGING_H_
#define WEIGHTD_LOADER_COMMON_LOGGING_H_

#include <string>

#include "absl/strings/str_format.h"

namespace weightd {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

void SetMinLogLevel(LogLevel level);
void LogLine(LogLevel level, const std::string& message);

template <typename... Args>
void LogInfo(const absl::FormatSpec<Args...>& format, const Args&... args) {
  LogLine(LogLevel::kInfo, absl::StrFormat(format, args...));
}
template <typename... Args>
void LogWarning(const absl::FormatSpec<Args...>& format, const Args&... args) {
  LogLine(LogLevel::kWarning, absl::StrFormat(format, args...));
}
template <typename... Args>
void LogError(const absl::FormatSpec<Args...>& format, const Args&... args) {
  LogLine(LogLevel::kError, absl::StrFormat(format, args...));
}
template <typename... Args>
void LogDebug(const absl::FormatSpec<Args...>& format, const Args&... args) {
  LogLine(LogLevel::kDebug, absl::StrFormat(format, args...));
}

}  // namespace weightd

#endif  // WEIGHTD_LOADER_COMMON_LOGGING_H_
