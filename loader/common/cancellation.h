// A cancellation flag checked between units of work (chunks of a load).
//
// A token can also be tied to a condition: cancelled() is then true once
// Cancel() was called or `also_cancelled()` returns true (polled on each
// check, so it must be cheap and thread-safe). The cache uses that to cancel a
// load once every request waiting for it has gone away.
#ifndef WEIGHTD_LOADER_COMMON_CANCELLATION_H_
#define WEIGHTD_LOADER_COMMON_CANCELLATION_H_

#include <atomic>
#include <functional>
#include <utility>

namespace weightd {

class CancellationToken {
 public:
  CancellationToken() = default;
  explicit CancellationToken(std::function<bool()> also_cancelled)
      : also_cancelled_(std::move(also_cancelled)) {}
  CancellationToken(const CancellationToken&) = delete;
  CancellationToken& operator=(const CancellationToken&) = delete;

  void Cancel() { cancelled_.store(true, std::memory_order_release); }
  bool cancelled() const {
    if (cancelled_.load(std::memory_order_acquire)) return true;
    return also_cancelled_ && also_cancelled_();
  }

 private:
  std::atomic<bool> cancelled_{false};
  const std::function<bool()> also_cancelled_;
};

}  // namespace weightd

#endif  // WEIGHTD_LOADER_COMMON_CANCELLATION_H_
