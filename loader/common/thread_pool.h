// A fixed set of worker threads with a bounded FIFO queue: the daemon's loads
// run on one (so a burst of requests never starts a thread per request), and
// casts and byte swaps split their work over another (so no thread is started
// per chunk).
#ifndef WEIGHTD_LOADER_COMMON_THREAD_POOL_H_
#define WEIGHTD_LOADER_COMMON_THREAD_POOL_H_

#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "loader/common/mutex.h"

namespace weightd {

class ThreadPool {
 public:
  // `threads` workers (at least 1); at most `max_queued` tasks wait for one
  // (0: unbounded). `name` appears in errors ("load queue is full").
  static absl::StatusOr<std::unique_ptr<ThreadPool>> Create(std::string name,
                                                            int threads,
                                                            size_t max_queued);
  // Shutdown(), then joins the workers.
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // Queues `run` (FIFO). RESOURCE_EXHAUSTED when the queue is full,
  // UNAVAILABLE after Shutdown(); `run` is then never called. A task queued
  // when Shutdown() is called gets `dropped` instead of `run` (may be empty),
  // so whoever waits for it is answered.
  absl::Status Schedule(std::function<void()> run,
                        std::function<void()> dropped = nullptr);

  // Runs work(0) ... work(count - 1) and returns when all are done; the
  // calling thread takes tasks too, so this never waits for a worker that is
  // itself blocked in ParallelFor (it may be called from a worker). Returns
  // the first error in index order.
  absl::Status ParallelFor(size_t count,
                           const std::function<absl::Status(size_t)>& work);

  // Refuses new tasks, drops queued ones (calling their `dropped`), lets
  // running ones finish. Idempotent.
  void Shutdown();

  int threads() const { return static_cast<int>(workers_.size()); }
  size_t queued() const;
  int busy() const;

 private:
  struct Task {
    std::function<void()> run;
    std::function<void()> dropped;
  };
  ThreadPool(std::string name, size_t max_queued)
      : name_(std::move(name)), max_queued_(max_queued) {}
  void WorkerLoop();

  const std::string name_;
  const size_t max_queued_;
  mutable Mutex mu_;
  CondVar work_available_;
  std::deque<Task> queue_ ABSL_GUARDED_BY(mu_);
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  int busy_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::thread> workers_;
};

}  // namespace weightd

#endif  // WEIGHTD_LOADER_COMMON_THREAD_POOL_H_
