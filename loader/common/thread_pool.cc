#include "loader/common/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"

namespace weightd {

absl::StatusOr<std::unique_ptr<ThreadPool>> ThreadPool::Create(
    std::string name, int threads, size_t max_queued) {
  std::unique_ptr<ThreadPool> pool(new ThreadPool(std::move(name), max_queued));
  const int count = std::max(1, threads);
  for (int i = 0; i < count; ++i) {
    try {
      pool->workers_.emplace_back([raw = pool.get()] { raw->WorkerLoop(); });
    } catch (const std::system_error& error) {
      // Under a task limit (systemd TasksMax, a pids cgroup): a clear error,
      // and the threads already started are joined by the destructor.
      return absl::ResourceExhaustedError(
          absl::StrCat(pool->name_, ": cannot start worker thread ", i + 1,
                       " of ", count, ": ", error.what()));
    }
  }
  return pool;
}

ThreadPool::~ThreadPool() {
  Shutdown();
  for (std::thread& worker : workers_) worker.join();
}

absl::Status ThreadPool::Schedule(std::function<void()> run,
                                  std::function<void()> dropped) {
  {
    MutexLock lock(&mu_);
    if (shut_down_) {
      return absl::UnavailableError(absl::StrCat(name_, " is shutting down"));
    }
    if (max_queued_ > 0 && queue_.size() >= max_queued_) {
      return absl::ResourceExhaustedError(
          absl::StrCat(name_, " is full: ", queue_.size(), " tasks wait for ",
                       workers_.size(), " busy workers; try again later"));
    }
    queue_.push_back(Task{std::move(run), std::move(dropped)});
  }
  work_available_.Signal();
  return absl::OkStatus();
}

void ThreadPool::WorkerLoop() {
  while (true) {
    Task task;
    {
      MutexLock lock(&mu_);
      while (queue_.empty() && !shut_down_) work_available_.Wait(&mu_);
      if (queue_.empty()) return;  // shut down and drained
      task = std::move(queue_.front());
      queue_.pop_front();
      ++busy_;
    }
    task.run();
    MutexLock lock(&mu_);
    --busy_;
  }
}

void ThreadPool::Shutdown() {
  std::deque<Task> dropped;
  {
    MutexLock lock(&mu_);
    if (shut_down_) return;
    shut_down_ = true;
    dropped.swap(queue_);
  }
  work_available_.SignalAll();
  for (Task& task : dropped) {
    if (task.dropped) task.dropped();
  }
}

size_t ThreadPool::queued() const {
  MutexLock lock(&mu_);
  return queue_.size();
}

int ThreadPool::busy() const {
  MutexLock lock(&mu_);
  return busy_;
}

absl::Status ThreadPool::ParallelFor(
    size_t count, const std::function<absl::Status(size_t)>& work) {
  if (count == 0) return absl::OkStatus();
  if (count == 1) return work(0);
  // Tasks are claimed from a shared counter by the caller and by helpers
  // scheduled on the pool; a helper that starts after every task was claimed
  // does nothing. The caller waits only for tasks that were claimed.
  struct State {
    std::atomic<size_t> next{0};
    Mutex mu;
    CondVar all_done;
    size_t done ABSL_GUARDED_BY(mu) = 0;
    std::vector<absl::Status> results;
  };
  auto state = std::make_shared<State>();
  state->results.resize(count);
  auto drain = [state, count, &work] {
    while (true) {
      size_t i = state->next.fetch_add(1);
      if (i >= count) return;
      state->results[i] = work(i);
      MutexLock lock(&state->mu);
      if (++state->done == count) state->all_done.SignalAll();
    }
  };
  // Helpers hold `work` by reference: they only touch it for claimed tasks,
  // and the caller returns only after every task is done.
  const size_t helpers = std::min(count - 1, workers_.size());
  for (size_t i = 0; i < helpers; ++i) {
    if (!Schedule(drain).ok()) break;  // queue full: the caller does more
  }
  drain();
  {
    MutexLock lock(&state->mu);
    while (state->done < count) state->all_done.Wait(&state->mu);
  }
  for (const absl::Status& status : state->results) {
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

}  // namespace weightd
