#include "server/metrics.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace weightd {
namespace {

std::string FormatValue(double value) {
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  if (std::isnan(value)) return "NaN";
  if (value == std::floor(value) && std::fabs(value) < 1e15) {
    return absl::StrCat(static_cast<int64_t>(value));
  }
  return absl::StrCat(value);
}

std::string FormatLabels(const MetricLabels& labels,
                         const std::string& extra_key = "",
                         const std::string& extra_value = "") {
  std::vector<std::string> parts;
  for (const auto& [key, value] : labels) {
    parts.push_back(absl::StrCat(key, "=\"", EscapeLabelValue(value), "\""));
  }
  if (!extra_key.empty()) {
    parts.push_back(
        absl::StrCat(extra_key, "=\"", EscapeLabelValue(extra_value), "\""));
  }
  if (parts.empty()) return "";
  return absl::StrCat("{", absl::StrJoin(parts, ","), "}");
}

}  // namespace

std::string EscapeLabelValue(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

void Gauge::Add(double delta) {
  double current = value_.load(std::memory_order_relaxed);
  while (!value_.compare_exchange_weak(current, current + delta,
                                       std::memory_order_relaxed)) {
  }
}

Histogram::Histogram(std::vector<double> upper_bounds)
    : upper_bounds_(std::move(upper_bounds)),
      counts_(upper_bounds_.size() + 1, 0) {}

void Histogram::Observe(double value) {
  size_t bucket = 0;
  while (bucket < upper_bounds_.size() && value > upper_bounds_[bucket])
    ++bucket;
  MutexLock lock(&mu_);
  ++counts_[bucket];
  sum_ += value;
  ++count_;
}

Histogram::Snapshot Histogram::Read() const {
  Snapshot snapshot;
  snapshot.upper_bounds = upper_bounds_;
  MutexLock lock(&mu_);
  uint64_t running = 0;
  for (uint64_t count : counts_) {
    running += count;
    snapshot.cumulative_counts.push_back(running);
  }
  snapshot.sum = sum_;
  snapshot.count = count_;
  return snapshot;
}

MetricsRegistry::Family& MetricsRegistry::FamilyFor(const std::string& name,
                                                    const std::string& help,
                                                    const std::string& type) {
  for (auto& family : families_) {
    if (family->name == name) return *family;
  }
  families_.push_back(std::make_unique<Family>());
  Family& family = *families_.back();
  family.name = name;
  family.help = help;
  family.type = type;
  return family;
}

Counter* MetricsRegistry::AddCounter(const std::string& name,
                                     const std::string& help,
                                     const MetricLabels& labels) {
  MutexLock lock(&mu_);
  auto& family = FamilyFor(name, help, "counter");
  family.counters.emplace_back(labels, std::make_unique<Counter>());
  return family.counters.back().second.get();
}

Gauge* MetricsRegistry::AddGauge(const std::string& name,
                                 const std::string& help,
                                 const MetricLabels& labels) {
  MutexLock lock(&mu_);
  auto& family = FamilyFor(name, help, "gauge");
  family.gauges.emplace_back(labels, std::make_unique<Gauge>());
  return family.gauges.back().second.get();
}

Histogram* MetricsRegistry::AddHistogram(const std::string& name,
                                         const std::string& help,
                                         std::vector<double> upper_bounds,
                                         const MetricLabels& labels) {
  MutexLock lock(&mu_);
  auto& family = FamilyFor(name, help, "histogram");
  family.histograms.emplace_back(
      labels, std::make_unique<Histogram>(std::move(upper_bounds)));
  return family.histograms.back().second.get();
}

void MetricsRegistry::AddGaugeCallback(const std::string& name,
                                       const std::string& help,
                                       std::function<GaugeSamples()> callback) {
  MutexLock lock(&mu_);
  FamilyFor(name, help, "gauge").callback = std::move(callback);
}

void MetricsRegistry::AddCounterCallback(
    const std::string& name, const std::string& help,
    std::function<GaugeSamples()> callback) {
  MutexLock lock(&mu_);
  FamilyFor(name, help, "counter").callback = std::move(callback);
}

std::string MetricsRegistry::RenderText() const {
  std::string out;
  MutexLock lock(&mu_);
  for (const auto& family : families_) {
    absl::StrAppend(&out, "# HELP ", family->name, " ", family->help, "\n");
    absl::StrAppend(&out, "# TYPE ", family->name, " ", family->type, "\n");
    for (const auto& [labels, counter] : family->counters) {
      absl::StrAppend(&out, family->name, FormatLabels(labels), " ",
                      counter->Value(), "\n");
    }
    for (const auto& [labels, gauge] : family->gauges) {
      absl::StrAppend(&out, family->name, FormatLabels(labels), " ",
                      FormatValue(gauge->Value()), "\n");
    }
    if (family->callback) {
      for (const auto& [labels, value] : family->callback()) {
        absl::StrAppend(&out, family->name, FormatLabels(labels), " ",
                        FormatValue(value), "\n");
      }
    }
    for (const auto& [labels, histogram] : family->histograms) {
      Histogram::Snapshot snapshot = histogram->Read();
      for (size_t i = 0; i < snapshot.cumulative_counts.size(); ++i) {
        double bound = i < snapshot.upper_bounds.size()
                           ? snapshot.upper_bounds[i]
                           : INFINITY;
        absl::StrAppend(&out, family->name, "_bucket",
                        FormatLabels(labels, "le", FormatValue(bound)), " ",
                        snapshot.cumulative_counts[i], "\n");
      }
      absl::StrAppend(&out, family->name, "_sum", FormatLabels(labels), " ",
                      FormatValue(snapshot.sum), "\n");
      absl::StrAppend(&out, family->name, "_count", FormatLabels(labels), " ",
                      snapshot.count, "\n");
    }
  }
  return out;
}

}  // namespace weightd
