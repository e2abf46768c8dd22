// O_DIRECT reopening, refusals remembered per file system, sysfs queue shape,
// page-cache residency.
#include "loader/io/direct_io.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "loader/common/test_child.h"
#include "loader/io/test_util.h"

namespace weightd {
namespace {

using testing::TempPath;
using testing::WritePatternFile;

void WriteText(const std::string& path, const std::string& text) {
  FILE* f = std::fopen(path.c_str(), "w");
  ASSERT_NE(f, nullptr) << path;
  std::fputs(text.c_str(), f);
  std::fclose(f);
}

TEST(DirectIoTest, ParsesModes) {
  EXPECT_EQ(*ParseDirectIoMode("auto"), DirectIoMode::kAuto);
  EXPECT_EQ(*ParseDirectIoMode(""), DirectIoMode::kAuto);
  EXPECT_EQ(*ParseDirectIoMode("OFF"), DirectIoMode::kOff);
  EXPECT_EQ(*ParseDirectIoMode("on"), DirectIoMode::kOn);
  EXPECT_FALSE(ParseDirectIoMode("always").ok());
  for (DirectIoMode m :
       {DirectIoMode::kAuto, DirectIoMode::kOn, DirectIoMode::kOff}) {
    EXPECT_EQ(*ParseDirectIoMode(DirectIoModeName(m)), m);
  }
  EXPECT_EQ(DirectIoSummary(DirectIoMode::kOff), "off: --direct_io=off");
  EXPECT_EQ(DirectIoSummary(DirectIoMode::kOn).rfind("on", 0), 0u);
  EXPECT_EQ(DirectIoSummary(DirectIoMode::kAuto).rfind("auto", 0), 0u);
}

TEST(DirectIoTest, AutoRequestBytesFromTheDevice) {
  BlockQueueInfo q;
  EXPECT_EQ(AutoRequestBytes(q), 4u << 20);  // unknown
  q.max_sectors_bytes = 128 << 10;
  EXPECT_EQ(AutoRequestBytes(q), 4u << 20);  // the kernel splits it
  q.max_sectors_bytes = 1280 << 10;
  EXPECT_EQ(AutoRequestBytes(q), 4u << 20);
  q.max_sectors_bytes = 8 << 20;
  EXPECT_EQ(AutoRequestBytes(q), 8u << 20);  // the device's own
  q.max_sectors_bytes = 12 << 20;
  EXPECT_EQ(AutoRequestBytes(q), 12u << 20);
  q.max_sectors_bytes = 2ull << 30;
  EXPECT_EQ(AutoRequestBytes(q), 16u << 20);
}

using Clock = DirectIoProbe::Clock;

// Runs one whole window of `reads` reads of `bytes` each, of the kind the
// probe asks for, landing `seconds` after the first; returns that kind.
bool RunWindow(DirectIoProbe* probe, int reads, uint64_t bytes, double seconds,
               Clock::time_point* now) {
  std::optional<bool> kind = probe->NextRead();
  EXPECT_TRUE(kind.has_value());
  for (int i = 0; i < reads; ++i) {
    EXPECT_EQ(probe->NextRead(), kind) << "read " << i;
    probe->Issued(bytes, *now);
  }
  // All its bytes are out: nothing more until they land.
  EXPECT_FALSE(probe->NextRead().has_value());
  *now += std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(seconds));
  for (int i = 0; i < reads; ++i) probe->Landed(true, *now);
  return kind.value_or(true);
}

TEST(DirectIoProbeTest, AlternatesDirectBufferedBufferedDirect) {
  DirectIoProbe probe(4 << 20);
  Clock::time_point now;
  std::vector<bool> kinds;
  while (!probe.done()) {
    // Direct a little faster: all four windows.
    const bool direct = probe.NextRead().value();
    kinds.push_back(RunWindow(&probe, 2, 2 << 20, direct ? 0.01 : 0.012, &now));
    ASSERT_LE(kinds.size(), 4u);
  }
  EXPECT_EQ(kinds, (std::vector<bool>{true, false, false, true}));
}

TEST(DirectIoProbeTest, ChoosesTheFasterKindBufferedOnlyByAMargin) {
  // Seconds per window: direct, buffered; windows measured.
  struct Case {
    double direct, buffered;
    bool direct_wins;
    int windows;
  };
  for (const Case& c :
       {Case{0.01, 0.015, true, 4}, Case{0.015, 0.01, false, 4},
        Case{0.0105, 0.01, true, 4},  // 5%: within the margin
        Case{0.02, 0.019, true, 4}, Case{0.012, 0.01, false, 4},
        // Twice as fast or more: two windows tell.
        Case{0.01, 0.02, true, 2}, Case{0.03, 0.01, false, 2}}) {
    DirectIoProbe probe(8 << 20);
    Clock::time_point now;
    int windows = 0;
    while (!probe.done()) {
      bool direct = probe.NextRead().value();
      RunWindow(&probe, 4, 2 << 20, direct ? c.direct : c.buffered, &now);
      ++windows;
    }
    EXPECT_EQ(probe.direct_wins(), c.direct_wins)
        << c.direct << " " << c.buffered << ": " << probe.Describe();
    EXPECT_EQ(windows, c.windows) << c.direct << " " << c.buffered;
    EXPECT_EQ(probe.NextRead(), c.direct_wins);
  }
  DirectIoProbe probe(1 << 30);
  Clock::time_point now;
  while (!probe.done()) {
    bool direct = probe.NextRead().value();
    RunWindow(&probe, 1, 1 << 30, direct ? 0.5 : 1.0, &now);
  }
  EXPECT_EQ(probe.Describe(), "direct 2.00 GiB/s, buffered 1.00 GiB/s");
}

// The window waits for its last read however the reads land, and the next
// window starts only then.
TEST(DirectIoProbeTest, WindowEndsWhenItsLastReadLands) {
  DirectIoProbe probe(3 << 20);
  Clock::time_point now;
  EXPECT_FALSE(probe.window_open());
  probe.Issued(2 << 20, now);
  EXPECT_TRUE(probe.window_open());
  EXPECT_EQ(probe.NextRead(), true);  // 2 of 3 MiB issued
  probe.Landed(true, now + std::chrono::milliseconds(1));
  EXPECT_EQ(probe.NextRead(), true);  // still short of the window
  probe.Issued(2 << 20, now + std::chrono::milliseconds(1));
  EXPECT_FALSE(probe.NextRead().has_value());
  probe.Landed(true, now + std::chrono::milliseconds(4));
  EXPECT_EQ(probe.NextRead(), false);  // the buffered window
  EXPECT_FALSE(probe.window_open());
  // 4 MiB from the first issue to the last landing, 4 ms.
  EXPECT_EQ(probe.Describe(), "direct 0.98 GiB/s, buffered 0.00 GiB/s");
}

// A window with a failed read, or cut short by the end of a Run, is not
// counted: the same kind is measured again.
TEST(DirectIoProbeTest, SpoiledAndInterruptedWindowsAreMeasuredAgain) {
  DirectIoProbe probe(2 << 20);
  Clock::time_point now;
  probe.Issued(1 << 20, now);
  probe.Issued(1 << 20, now);
  probe.Landed(false, now);
  probe.Landed(true, now + std::chrono::milliseconds(1));
  EXPECT_EQ(probe.NextRead(), true);
  EXPECT_EQ(probe.Describe(), "direct 0.00 GiB/s, buffered 0.00 GiB/s");
  probe.Issued(1 << 20, now);
  probe.Interrupt();
  EXPECT_EQ(probe.NextRead(), true);
  // A read landing after the interruption is not the new window's.
  probe.Landed(true, now);
  EXPECT_EQ(RunWindow(&probe, 2, 1 << 20, 0.001, &now), true);
  EXPECT_EQ(probe.NextRead(), false);
}

// Windows that other Runs' uncached reads of the device overlapped are
// measured again, kMaxSharedSkips times; then the device is in shared use and
// they count, and the figures say so. A read before a window starts does not
// make it shared.
TEST(DirectIoProbeTest, WindowsSharedWithOtherLoadsAreMeasuredAgain) {
  DirectIoProbe probe(2 << 20, makedev(4000, 9));
  EXPECT_EQ(probe.device(), makedev(4000, 9));
  Clock::time_point now;
  const auto ms = std::chrono::milliseconds(1);
  uint64_t others = 7;
  for (int i = 0; i < DirectIoProbe::kMaxSharedSkips; ++i) {
    probe.Issued(1 << 20, now, others);
    probe.Issued(1 << 20, now, ++others);  // another Run read meanwhile
    probe.Landed(true, now + ms, others);
    probe.Landed(true, now + ms, others);
    EXPECT_EQ(probe.NextRead(), true) << "the direct window again, " << i;
    EXPECT_EQ(probe.Describe(), "direct 0.00 GiB/s, buffered 0.00 GiB/s");
  }
  probe.Issued(2 << 20, now, others);
  probe.Landed(true, now + ms, others + 1);  // shared, and counted now
  EXPECT_EQ(probe.NextRead(), false);
  EXPECT_EQ(probe.Describe(),
            "direct 1.95 GiB/s, buffered 0.00 GiB/s, 1 of 1 windows shared "
            "with other loads");
  ++others;  // between windows: not this window's
  probe.Issued(2 << 20, now, others);
  probe.Landed(true, now + 2 * ms, others);
  EXPECT_EQ(probe.Describe(),
            "direct 1.95 GiB/s, buffered 0.98 GiB/s, 1 of 2 windows shared "
            "with other loads");
  EXPECT_TRUE(probe.done());  // 2x apart after two windows
}

// The count of other Runs' reads is per device, and a probe handed out by
// PlanDirectIo knows its device.
TEST(DirectIoProbeTest, UnmeasuredReadsAreCountedPerDevice) {
  const uint64_t dev = makedev(4000, 10);
  const uint64_t other = makedev(4000, 11);
  EXPECT_EQ(UnmeasuredReads(dev), 0u);
  NoteUnmeasuredRead(dev);
  NoteUnmeasuredRead(dev);
  EXPECT_EQ(UnmeasuredReads(dev), 2u);
  EXPECT_EQ(UnmeasuredReads(other), 0u);
  DirectIoPlan plan = PlanDirectIo(dev, 1 << 20);
  ASSERT_NE(plan.probe, nullptr);
  EXPECT_EQ(plan.probe->device(), dev);
  ReturnDirectIoProbe(dev, std::move(plan.probe));
}

// The process-wide choices, on made-up device numbers: one Run measures a
// device at a time, an unfinished probe keeps its windows for the next Run,
// a finished one decides the device for good and the summary says so.
TEST(DirectIoProbeTest, PlansHandOutOneProbePerDeviceAndRemember) {
  const uint64_t dev = makedev(4000, 7);
  DirectIoPlan first = PlanDirectIo(dev, 1 << 20);
  ASSERT_NE(first.probe, nullptr);
  EXPECT_TRUE(first.direct);
  DirectIoPlan second = PlanDirectIo(dev, 1 << 20);
  EXPECT_EQ(second.probe, nullptr);  // being measured: direct meanwhile
  EXPECT_TRUE(second.direct);
  Clock::time_point now;
  RunWindow(first.probe.get(), 1, 1 << 20, 0.004, &now);  // direct
  first.probe->Issued(1 << 20, now);  // cut short by the Run's end
  ReturnDirectIoProbe(dev, std::move(first.probe));

  DirectIoPlan again = PlanDirectIo(dev, 1 << 20);
  ASSERT_NE(again.probe, nullptr);
  EXPECT_EQ(again.probe->NextRead(), false);  // the direct window was kept
  while (!again.probe->done()) {
    bool direct = again.probe->NextRead().value();
    RunWindow(again.probe.get(), 1, 1 << 20, direct ? 0.004 : 0.001, &now);
  }
  ReturnDirectIoProbe(dev, std::move(again.probe));
  DirectIoPlan decided = PlanDirectIo(dev, 1 << 20);
  EXPECT_EQ(decided.probe, nullptr);
  EXPECT_FALSE(decided.direct);
  std::string summary = DirectIoSummary(DirectIoMode::kAuto);
  EXPECT_NE(summary.find("; buffered on device 4000:7: direct 0.24 GiB/s, "
                         "buffered 0.98 GiB/s"),
            std::string::npos)
      << summary;
  EXPECT_EQ(summary.find("no device measured yet"), std::string::npos);
  // --direct_io=on lists no measurements.
  EXPECT_EQ(DirectIoSummary(DirectIoMode::kOn).find("4000:7"),
            std::string::npos);
}

// A choice is measured again once it is kDirectIoRemeasureAfter old, the
// device keeping it meanwhile; the new measurement replaces it.
TEST(DirectIoProbeTest, ChoicesAreMeasuredAgainAfterAWhile) {
  const uint64_t dev = makedev(4001, 3);
  const Clock::time_point t0 = Clock::now();
  auto measure = [&](DirectIoProbe* probe, double direct_s, double buffered_s) {
    Clock::time_point at = t0;
    while (!probe->done()) {
      const bool direct = probe->NextRead().value();
      RunWindow(probe, 1, 1 << 20, direct ? direct_s : buffered_s, &at);
    }
  };
  DirectIoPlan plan = PlanDirectIo(dev, 1 << 20, t0);
  ASSERT_NE(plan.probe, nullptr);
  measure(plan.probe.get(), 0.001, 0.004);  // direct 4x faster
  ReturnDirectIoProbe(dev, std::move(plan.probe), t0);

  plan = PlanDirectIo(dev, 1 << 20, t0 + kDirectIoRemeasureAfter / 2);
  EXPECT_EQ(plan.probe, nullptr);
  EXPECT_TRUE(plan.direct);
  const Clock::time_point later = t0 + kDirectIoRemeasureAfter;
  plan = PlanDirectIo(dev, 1 << 20, later);
  ASSERT_NE(plan.probe, nullptr);
  EXPECT_TRUE(plan.direct);  // the old choice while it is measured
  DirectIoPlan meanwhile = PlanDirectIo(dev, 1 << 20, later);
  EXPECT_EQ(meanwhile.probe, nullptr);
  EXPECT_TRUE(meanwhile.direct);
  measure(plan.probe.get(), 0.004, 0.001);  // now buffered 4x faster
  ReturnDirectIoProbe(dev, std::move(plan.probe), later);

  plan = PlanDirectIo(dev, 1 << 20, later + std::chrono::seconds(1));
  EXPECT_EQ(plan.probe, nullptr);
  EXPECT_FALSE(plan.direct);
  EXPECT_NE(DirectIoSummary(DirectIoMode::kAuto)
                .find("; buffered on device 4001:3: direct 0.24 GiB/s, "
                      "buffered 0.98 GiB/s"),
            std::string::npos)
      << DirectIoSummary(DirectIoMode::kAuto);
}

TEST(DirectIoTest, ReopensTheSameFileDirect) {
  std::string path = WritePatternFile("direct", 1 << 20, 3);
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  // The path now names another file: the reopen still finds ours.
  std::string moved = path + ".moved";
  ASSERT_EQ(rename(path.c_str(), moved.c_str()), 0);
  WriteText(path, "another file");
  DirectFd direct = OpenDirectIo(fd, path);
  if (!direct.fd.valid()) {
    close(fd);
    unlink(path.c_str());
    unlink(moved.c_str());
    GTEST_SKIP() << "O_DIRECT refused here: " << direct.why_not;
  }
  EXPECT_GE(direct.alignment, 512u);
  EXPECT_EQ(direct.alignment & (direct.alignment - 1), 0u);
  struct stat a, b;
  ASSERT_EQ(fstat(fd, &a), 0);
  ASSERT_EQ(fstat(direct.fd.get(), &b), 0);
  EXPECT_EQ(a.st_ino, b.st_ino);
  EXPECT_NE(fcntl(direct.fd.get(), F_GETFL) & O_DIRECT, 0);
  close(fd);
  unlink(path.c_str());
  unlink(moved.c_str());
}

// In a mount namespace of its own, on a ramfs (which has no direct I/O): the
// refusal comes back as a reason, is remembered for the file system (a second
// file is not tried) and shows in the summary.
TEST(DirectIoTest, FileSystemThatRefusesIsRememberedOnce) {
  std::string dir = TempPath("ramfs");
  ASSERT_EQ(mkdir(dir.c_str(), 0700), 0);
  int rc = testing::RunInChild([&] {
    if (unshare(CLONE_NEWNS) != 0) return 77;
    if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
      return 77;
    }
    if (mount("ramfs", dir.c_str(), "ramfs", 0, nullptr) != 0) return 77;
    std::string a = dir + "/a", b = dir + "/b";
    for (const std::string& p : {a, b}) {
      int w = open(p.c_str(), O_WRONLY | O_CREAT, 0600);
      if (w < 0 || write(w, "0123456789", 10) != 10) return 2;
      close(w);
    }
    int fa = open(a.c_str(), O_RDONLY), fb = open(b.c_str(), O_RDONLY);
    if (fa < 0 || fb < 0) return 3;
    DirectFd da = OpenDirectIo(fa, a);
    if (da.fd.valid()) return 4;
    if (da.why_not.find("Invalid argument") == std::string::npos) return 5;
    DirectFd db = OpenDirectIo(fb, b);
    if (db.fd.valid() || db.why_not != da.why_not) return 6;  // remembered
    std::string summary = DirectIoSummary(DirectIoMode::kOn);
    if (summary.rfind("on; off on device ", 0) != 0) return 7;
    if (summary.find(da.why_not) == std::string::npos) return 8;
    summary = DirectIoSummary(DirectIoMode::kAuto);
    if (summary.find("; off on device ") == std::string::npos) return 9;
    return 0;
  });
  rmdir(dir.c_str());
  if (rc == 77) GTEST_SKIP() << "cannot mount a ramfs here (unshare/mount)";
  EXPECT_EQ(rc, 0);
}

TEST(DirectIoTest, BlockQueueOfAPartitionIsItsDisk) {
  std::string root = TempPath("sysfs");
  ASSERT_EQ(mkdir(root.c_str(), 0700), 0);
  std::string disk = root + "/vdq";
  ASSERT_EQ(mkdir(disk.c_str(), 0700), 0);
  ASSERT_EQ(mkdir((disk + "/queue").c_str(), 0700), 0);
  WriteText(disk + "/queue/nr_requests", "1023\n");
  WriteText(disk + "/queue/max_sectors_kb", "1280\n");
  WriteText(disk + "/queue/logical_block_size", "4096\n");
  std::string part = disk + "/vdq1";
  ASSERT_EQ(mkdir(part.c_str(), 0700), 0);
  WriteText(part + "/partition", "1\n");
  for (const std::string& at : {disk, part}) {
    BlockQueueInfo q = BlockQueueAt(at);
    EXPECT_EQ(q.nr_requests, 1023u) << at;
    EXPECT_EQ(q.max_sectors_bytes, 1280u << 10) << at;
    EXPECT_EQ(q.logical_block_size, 4096u) << at;
  }
  // Garbage and absent files are unknown, not errors.
  WriteText(disk + "/queue/nr_requests", "lots\n");
  unlink((disk + "/queue/max_sectors_kb").c_str());
  BlockQueueInfo q = BlockQueueAt(disk);
  EXPECT_EQ(q.nr_requests, 0u);
  EXPECT_EQ(q.max_sectors_bytes, 0u);
  EXPECT_EQ(BlockQueueAt(root + "/absent").nr_requests, 0u);
  std::string cmd = absl::StrCat("rm -rf '", root, "'");
  EXPECT_EQ(system(cmd.c_str()), 0);
}

TEST(DirectIoTest, CachedFractionSeesEviction) {
  std::string path = WritePatternFile("cached", 4 << 20, 5);
  int fd = open(path.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  std::vector<char> buf(4 << 20);
  ASSERT_EQ(pread(fd, buf.data(), buf.size(), 0),
            static_cast<ssize_t>(buf.size()));
  EXPECT_GT(CachedFraction(fd, 0, 4 << 20), 0.9);
  ASSERT_EQ(fdatasync(fd), 0);
  ASSERT_EQ(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
  double after = CachedFraction(fd, 100, (4 << 20) - 200);
  EXPECT_GE(after, 0.0);
  EXPECT_LT(after, 0.5);
  EXPECT_EQ(CachedFraction(fd, 0, 0), 1.0);
  close(fd);
  unlink(path.c_str());
}

}  // namespace
}  // namespace weightd
