// A small Prometheus registry rendering the text exposition format (0.0.4).
// Debian ships no Prometheus client library.
#ifndef WEIGHTD_SERVER_METRICS_H_
#define WEIGHTD_SERVER_METRICS_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "loader/common/mutex.h"

namespace weightd {

using MetricLabels = std::map<std::string, std::string>;

class Counter {
 public:
  void Increment(uint64_t by = 1) {
    value_.fetch_add(by, std::memory_order_relaxed);
  }
  uint64_t Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

class Gauge {
 public:
  void Set(double value) { value_.store(value, std::memory_order_relaxed); }
  void Add(double delta);
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void Observe(double value);

  struct Snapshot {
    std::vector<double> upper_bounds;
    std::vector<uint64_t> cumulative_counts;  // one per bound, then +Inf
    double sum = 0;
    uint64_t count = 0;
  };
  Snapshot Read() const;

 private:
  const std::vector<double> upper_bounds_;
  mutable Mutex mu_;
  std::vector<uint64_t> counts_
      ABSL_GUARDED_BY(mu_);  // per bucket, last is +Inf
  double sum_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t count_ ABSL_GUARDED_BY(mu_) = 0;
};

// Families are registered once at start; the returned pointers live as long as
// the registry.
class MetricsRegistry {
 public:
  Counter* AddCounter(const std::string& name, const std::string& help,
                      const MetricLabels& labels = {});
  Gauge* AddGauge(const std::string& name, const std::string& help,
                  const MetricLabels& labels = {});
  Histogram* AddHistogram(const std::string& name, const std::string& help,
                          std::vector<double> upper_bounds,
                          const MetricLabels& labels = {});
  // Gauges computed at scrape time (cache sizes, GPU memory): one call yields
  // every labelled sample of the family.
  using GaugeSamples = std::vector<std::pair<MetricLabels, double>>;
  void AddGaugeCallback(const std::string& name, const std::string& help,
                        std::function<GaugeSamples()> callback);
  // Monotonic totals kept elsewhere (the cache's counters), read at scrape
  // time.
  void AddCounterCallback(const std::string& name, const std::string& help,
                          std::function<GaugeSamples()> callback);

  std::string RenderText() const;

 private:
  struct Family {
    std::string name;
    std::string help;
    std::string type;  // counter | gauge | histogram
    std::vector<std::pair<MetricLabels, std::unique_ptr<Counter>>> counters;
    std::vector<std::pair<MetricLabels, std::unique_ptr<Gauge>>> gauges;
    std::vector<std::pair<MetricLabels, std::unique_ptr<Histogram>>> histograms;
    std::function<GaugeSamples()> callback;
  };
  Family& FamilyFor(const std::string& name, const std::string& help,
                    const std::string& type) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable Mutex mu_;
  std::vector<std::unique_ptr<Family>> families_ ABSL_GUARDED_BY(mu_);
};

// Escapes a label value for the text format.
std::string EscapeLabelValue(const std::string& value);

}  // namespace weightd

#endif  // WEIGHTD_SERVER_METRICS_H_
