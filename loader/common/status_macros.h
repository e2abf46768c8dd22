// Status propagation helpers: Debian's Abseil 20220623 ships none.
#ifndef WEIGHTD_LOADER_COMMON_STATUS_MACROS_H_
#define WEIGHTD_LOADER_COMMON_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define WEIGHTD_CONCAT_INNER_(a, b) a##b
#define WEIGHTD_CONCAT_(a, b) WEIGHTD_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` yields a non-OK absl::Status.
#define RETURN_IF_ERROR(expr)                                              \
  do {                                                                     \
    ::absl::Status weightd_status_ = (expr);                               \
    if (ABSL_PREDICT_FALSE(!weightd_status_.ok())) return weightd_status_; \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, MakeX());` binds the value or returns the error.
#define ASSIGN_OR_RETURN(lhs, expr)                                         \
  ASSIGN_OR_RETURN_IMPL_(WEIGHTD_CONCAT_(weightd_statusor_, __LINE__), lhs, \
                         expr)

#define ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr)                 \
  auto statusor = (expr);                                           \
  if (ABSL_PREDICT_FALSE(!statusor.ok())) return statusor.status(); \
  lhs = std::move(statusor).value()

#endif  // WEIGHTD_LOADER_COMMON_STATUS_MACROS_H_
