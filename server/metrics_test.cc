#include "server/metrics.h"

#include "gtest/gtest.h"

namespace weightd {
namespace {

TEST(MetricsRegistryTest, RendersCountersGaugesAndHistograms) {
  MetricsRegistry registry;
  Counter* loads =
      registry.AddCounter("weightd_loads_total", "Loads that read a file.",
                          {{"format", "torch-zip"}});
  loads->Increment(3);
  registry.AddGauge("weightd_models", "Models in the cache.")->Set(2);
  Histogram* latency = registry.AddHistogram("weightd_load_seconds",
                                             "Load latency.", {0.1, 1.0});
  latency->Observe(0.05);
  latency->Observe(0.5);
  latency->Observe(5);
  registry.AddGaugeCallback("weightd_tier_bytes", "Bytes per tier.", [] {
    return MetricsRegistry::GaugeSamples{{{{"tier", "host \"a\""}}, 1024}};
  });
  EXPECT_EQ(registry.RenderText(),
            "# HELP weightd_loads_total Loads that read a file.\n"
            "# TYPE weightd_loads_total counter\n"
            "weightd_loads_total{format=\"torch-zip\"} 3\n"
            "# HELP weightd_models Models in the cache.\n"
            "# TYPE weightd_models gauge\n"
            "weightd_models 2\n"
            "# HELP weightd_load_seconds Load latency.\n"
            "# TYPE weightd_load_seconds histogram\n"
            "weightd_load_seconds_bucket{le=\"0.1\"} 1\n"
            "weightd_load_seconds_bucket{le=\"1\"} 2\n"
            "weightd_load_seconds_bucket{le=\"+Inf\"} 3\n"
            "weightd_load_seconds_sum 5.55\n"
            "weightd_load_seconds_count 3\n"
            "# HELP weightd_tier_bytes Bytes per tier.\n"
            "# TYPE weightd_tier_bytes gauge\n"
            "weightd_tier_bytes{tier=\"host \\\"a\\\"\"} 1024\n");
}

}  // namespace
}  // namespace weightd
