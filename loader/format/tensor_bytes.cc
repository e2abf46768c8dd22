#include "loader/format/tensor_bytes.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "loader/common/sha256.h"

namespace weightd {
namespace {

size_t SwapUnit(DType dtype) {
  switch (dtype) {
    case DType::kComplex32:
    case DType::kComplex64:
    case DType::kComplex128:
      return DTypeSize(dtype) / 2;
    default:
      return DTypeSize(dtype);
  }
}

void SwapInPlace(char* p, size_t n, size_t unit) {
  if (unit <= 1) return;
  for (size_t i = 0; i + unit <= n; i += unit)
    std::reverse(p + i, p + i + unit);
}

}  // namespace

absl::Status CheckTensorView(const TensorInfo& t, uint64_t storage_len) {
  if (t.shape.size() != t.stride.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor \"", t.name, "\": shape and stride differ in rank"));
  }
  if (t.storage_offset < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor \"", t.name, "\": negative storage offset"));
  }
  uint64_t last = 0;
  bool empty = false;
  for (size_t d = 0; d < t.shape.size(); ++d) {
    if (t.shape[d] < 0 || t.stride[d] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor \"", t.name, "\": negative size or stride"));
    }
    if (t.shape[d] == 0) empty = true;
  }
  if (empty) return absl::OkStatus();
  for (size_t d = 0; d < t.shape.size(); ++d) {
    uint64_t span;
    if (__builtin_mul_overflow(static_cast<uint64_t>(t.shape[d] - 1),
                               static_cast<uint64_t>(t.stride[d]), &span) ||
        __builtin_add_overflow(last, span, &last)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor \"", t.name, "\": extent overflows"));
    }
  }
  uint64_t end, bytes;
  if (__builtin_add_overflow(last, static_cast<uint64_t>(t.storage_offset),
                             &end) ||
      __builtin_add_overflow(end, uint64_t{1}, &end) ||
      __builtin_mul_overflow(end, static_cast<uint64_t>(DTypeSize(t.dtype)),
                             &bytes)) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor \"", t.name, "\": extent overflows"));
  }
  if (bytes > storage_len) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor \"", t.name, "\" needs ", bytes,
                     " bytes of its storage, which has ", storage_len));
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> TensorLogicalBytes(const TensorInfo& t) {
  uint64_t bytes = DTypeSize(t.dtype);
  for (int64_t n : t.shape) {
    if (n < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor \"", t.name, "\": negative size"));
    }
    if (__builtin_mul_overflow(bytes, static_cast<uint64_t>(n), &bytes)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor \"", t.name, "\": shape [", absl::StrJoin(t.shape, ", "),
          "] has more bytes than fit in 64 bits"));
    }
  }
  return bytes;
}

absl::Status CheckViewWorkBounded(const TensorInfo& t, uint64_t storage_len) {
  absl::StatusOr<uint64_t> logical = TensorLogicalBytes(t);
  if (!logical.ok()) return logical.status();
  if (*logical <= storage_len ||
      *logical - storage_len <= kMaxViewExpansionBytes) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "tensor \"", t.name, "\" (shape [", absl::StrJoin(t.shape, ", "),
      "], stride [", absl::StrJoin(t.stride, ", "), "]) claims ", *logical,
      " bytes over a storage of ", storage_len,
      " bytes: an expanded or overlapping view more than ",
      kMaxViewExpansionBytes,
      " bytes larger than its storage; refusing to "
      "produce its bytes"));
}

absl::Status ForEachTensorChunk(
    const TensorInfo& t, const uint8_t* storage, uint64_t storage_len,
    ByteOrder order, const std::function<void(absl::string_view)>& sink) {
  absl::Status s = CheckTensorView(t, storage_len);
  if (!s.ok()) return s;
  s = CheckViewWorkBounded(t, storage_len);
  if (!s.ok()) return s;
  const size_t elem = DTypeSize(t.dtype);
  const size_t unit = SwapUnit(t.dtype);
  const bool swap = order == ByteOrder::kBig && unit > 1;
  const int64_t numel = t.NumElements();
  if (numel == 0) return absl::OkStatus();
  const char* base =
      reinterpret_cast<const char*>(storage) + t.storage_offset * elem;
  // Merge trailing dims that are contiguous into one run.
  const size_t ndim = t.shape.size();
  int64_t run = 1;      // elements per contiguous run
  size_t outer = ndim;  // dims [0, outer) iterate; [outer, ndim) are the run
  int64_t expected_stride = 1;
  while (outer > 0) {
    size_t d = outer - 1;
    if (t.shape[d] == 1) {
      --outer;
      continue;
    }
    if (t.stride[d] != expected_stride) break;
    run *= t.shape[d];
    expected_stride *= t.shape[d];
    --outer;
  }
  std::vector<char> buffer;
  const size_t kBufferBytes = 1 << 20;
  auto emit = [&](const char* p, size_t n) {
    if (!swap) {
      sink(absl::string_view(p, n));
      return;
    }
    while (n > 0) {
      size_t chunk = std::min(n, kBufferBytes - kBufferBytes % elem);
      buffer.assign(p, p + chunk);
      SwapInPlace(buffer.data(), chunk, unit);
      sink(absl::string_view(buffer.data(), chunk));
      p += chunk;
      n -= chunk;
    }
  };
  if (outer == 0) {
    emit(base, static_cast<size_t>(numel) * elem);
    return absl::OkStatus();
  }
  // Odometer over the outer dims; runs of `run` elements. Short runs are
  // batched through a buffer.
  std::vector<int64_t> index(outer, 0);
  std::string pending;
  const size_t run_bytes = static_cast<size_t>(run) * elem;
  auto flush = [&]() {
    if (pending.empty()) return;
    if (swap) SwapInPlace(&pending[0], pending.size(), unit);
    sink(pending);
    pending.clear();
  };
  while (true) {
    int64_t off = 0;
    for (size_t d = 0; d < outer; ++d) off += index[d] * t.stride[d];
    const char* p = base + off * elem;
    if (run_bytes >= 4096) {
      flush();
      emit(p, run_bytes);
    } else {
      pending.append(p, run_bytes);
      if (pending.size() >= kBufferBytes) flush();
    }
    size_t d = outer;
    while (d > 0) {
      --d;
      if (++index[d] < t.shape[d]) break;
      index[d] = 0;
      if (d == 0) {
        flush();
        return absl::OkStatus();
      }
    }
  }
}

absl::Status GatherTensorBytes(const TensorInfo& t, const uint8_t* storage,
                               uint64_t storage_len, ByteOrder order,
                               std::string* out) {
  out->clear();
  // Checked before reserving: the reservation is the view's claimed size.
  absl::Status s = CheckTensorView(t, storage_len);
  if (!s.ok()) return s;
  s = CheckViewWorkBounded(t, storage_len);
  if (!s.ok()) return s;
  out->reserve(static_cast<size_t>(t.NumElements()) * DTypeSize(t.dtype));
  return ForEachTensorChunk(
      t, storage, storage_len, order,
      [out](absl::string_view c) { out->append(c.data(), c.size()); });
}

absl::StatusOr<std::string> TensorSha256(const TensorInfo& t,
                                         const uint8_t* storage,
                                         uint64_t storage_len,
                                         ByteOrder order) {
  Sha256 h;
  absl::Status s =
      ForEachTensorChunk(t, storage, storage_len, order,
                         [&h](absl::string_view c) { h.Update(c); });
  if (!s.ok()) return s;
  return h.FinishHex();
}

std::string TensorSha256Hex(const TensorInfo& t, const uint8_t* storage,
                            uint64_t storage_len, ByteOrder order) {
  absl::StatusOr<std::string> h = TensorSha256(t, storage, storage_len, order);
  return h.ok() ? *std::move(h) : "";
}

CheckpointHasher::CheckpointHasher(uint64_t held_bytes)
    : held_bytes_(held_bytes) {
  uint64_t budget;
  if (__builtin_mul_overflow(held_bytes, kBudgetMultiple, &budget) ||
      __builtin_add_overflow(budget, kBudgetBaseBytes, &budget)) {
    budget = UINT64_MAX;
  }
  budget_bytes_ = budget;
}

uint64_t CheckpointHasher::HeldBytes(const Checkpoint& checkpoint,
                                     uint64_t file_bytes) {
  uint64_t held = file_bytes;
  for (const StorageInfo& storage : checkpoint.storages) {
    if (storage.inflated == nullptr) continue;
    if (__builtin_add_overflow(held, storage.inflated->size(), &held)) {
      return UINT64_MAX;
    }
  }
  return held;
}

absl::StatusOr<std::string> CheckpointHasher::Sha256Hex(
    const TensorInfo& t, const StorageInfo& storage,
    const uint8_t* storage_bytes) {
  ViewKey key{t.storage_index, t.dtype, t.storage_offset, t.shape, t.stride};
  auto it = hashes_.find(key);
  if (it != hashes_.end()) return it->second;
  // The view's own bound first: its error says more than the budget's.
  absl::Status bounded = CheckViewWorkBounded(t, storage.num_bytes);
  if (!bounded.ok()) return bounded;
  absl::StatusOr<uint64_t> logical = TensorLogicalBytes(t);
  if (!logical.ok()) return logical.status();
  uint64_t total;
  if (__builtin_add_overflow(hashed_bytes_, *logical, &total) ||
      total > budget_bytes_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "hashing tensor \"", t.name, "\" (", *logical,
        " bytes) would bring the bytes hashed to more than this checkpoint's "
        "budget of ",
        budget_bytes_, " (", kBudgetMultiple, " x the ", held_bytes_,
        " bytes it holds + ", kBudgetBaseBytes,
        "): its tensors are views claiming far more bytes than the file "
        "holds"));
  }
  absl::StatusOr<std::string> h =
      TensorSha256(t, storage_bytes, storage.num_bytes, storage.byte_order);
  if (!h.ok()) return h.status();
  hashed_bytes_ = total;
  hashes_.emplace(std::move(key), *h);
  return h;
}

}  // namespace weightd
