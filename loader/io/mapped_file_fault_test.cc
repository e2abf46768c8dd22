// Reads of a mapping whose file shrank: DATA_LOSS through the guard, and the
// process survives; a fault outside any guard still kills it.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "loader/common/mutex.h"
#include "loader/io/mapped_file.h"
#include "loader/io/mapping_fault_guard.h"
#include "loader/io/test_util.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define WEIGHTD_UNDER_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define WEIGHTD_UNDER_SANITIZER 1
#endif
#endif

namespace weightd {
namespace {

using testing::FirstPatternMismatch;
using testing::PatternByte;
using testing::WritePatternFile;

const uint64_t kPage = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));

std::string LossMessage(const std::string& path, uint64_t offset) {
  return absl::StrCat(path, ": file truncated or unreadable at offset ", offset,
                      " while mapped (changed under the daemon?)");
}

// How a process that met an unguarded SIGBUS ended: killed by the signal, or
// (under ASan / TSan, whose own handler ours passes it to) a sanitizer's
// report and a failing exit.
bool DiedOfSigbus(int status) {
  if (WIFSIGNALED(status) && WTERMSIG(status) == SIGBUS) return true;
#ifdef WEIGHTD_UNDER_SANITIZER
  if (WIFEXITED(status) && WEXITSTATUS(status) != 0) return true;
#endif
  return false;
}
#ifdef WEIGHTD_UNDER_SANITIZER
constexpr char kSigbusReport[] = "BUS";
#else
constexpr char kSigbusReport[] = "";
#endif

// Reads every byte through a volatile pointer so the loads really happen.
uint64_t SumBytes(const uint8_t* data, uint64_t size) {
  const volatile uint8_t* p = data;
  uint64_t sum = 0;
  for (uint64_t i = 0; i < size; ++i) sum += p[i];
  return sum;
}

class MappedFileFaultTest : public ::testing::Test {
 protected:
  void MakeFile(uint64_t size, uint32_t seed = 7) {
    path_ = WritePatternFile("fault", size, seed);
    ASSERT_FALSE(path_.empty());
    auto file = MappedFile::Open(path_);
    ASSERT_TRUE(file.ok()) << file.status();
    file_ = std::move(*file);
  }
  void TearDown() override {
    file_.reset();
    if (!path_.empty()) unlink(path_.c_str());
  }

  std::string path_;
  std::unique_ptr<MappedFile> file_;
};

TEST_F(MappedFileFaultTest, HealthyReadsSucceed) {
  MakeFile(5 * kPage + 123);
  std::vector<uint8_t> out(file_->size());
  ASSERT_TRUE(file_->CopyTo(0, out.size(), out.data()).ok());
  EXPECT_EQ(FirstPatternMismatch(out.data(), out.size(), 0, 7), -1);
  uint8_t tail[10];
  ASSERT_TRUE(file_->CopyTo(file_->size() - 10, 10, tail).ok());
  EXPECT_EQ(FirstPatternMismatch(tail, 10, file_->size() - 10, 7), -1);
  EXPECT_TRUE(file_->CopyTo(file_->size(), 0, tail).ok());
  EXPECT_FALSE(file_->damaged());
}

TEST_F(MappedFileFaultTest, RangesOutsideTheFileAreRefused) {
  MakeFile(3 * kPage);
  uint8_t out[16];
  for (auto [offset, length] :
       std::vector<std::pair<uint64_t, uint64_t>>{{3 * kPage, 1},
                                                  {3 * kPage + 1, 0},
                                                  {3 * kPage - 8, 16},
                                                  {8, ~uint64_t{0}},
                                                  {~uint64_t{0}, 2}}) {
    absl::Status status = file_->CopyTo(offset, length, out);
    EXPECT_TRUE(absl::IsOutOfRange(status)) << offset << " +" << length;
    EXPECT_NE(status.message().find(path_), std::string::npos) << status;
  }
  EXPECT_FALSE(file_->damaged());
}

// Several threads read the whole file after it shrank to a size that is not a
// page multiple: each sees DATA_LOSS at the new end (bytes past it inside the
// last page read as zeros without faulting; the pages after it fault).
TEST_F(MappedFileFaultTest, ShrunkFileFailsEveryThreadWithTheOffset) {
  MakeFile(16 * kPage);
  const uint64_t new_size = 5 * kPage + kPage / 2;
  ASSERT_EQ(truncate(path_.c_str(), new_size), 0);
  constexpr int kThreads = 4;
  std::vector<absl::Status> results(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<uint8_t> out(file_->size());
      results[t] = file_->CopyTo(0, out.size(), out.data());
    });
  }
  for (auto& thread : threads) thread.join();
  for (const absl::Status& status : results) {
    EXPECT_TRUE(absl::IsDataLoss(status)) << status;
    EXPECT_NE(status.message().find(LossMessage(path_, new_size)),
              std::string::npos)
        << status;
  }
  EXPECT_TRUE(file_->damaged());
}

TEST_F(MappedFileFaultTest, FileTruncatedToZero) {
  MakeFile(4 * kPage);
  ASSERT_EQ(truncate(path_.c_str(), 0), 0);
  uint8_t out[64];
  absl::Status status = file_->CopyTo(2 * kPage, sizeof(out), out);
  EXPECT_TRUE(absl::IsDataLoss(status)) << status;
  EXPECT_NE(status.message().find(LossMessage(path_, 0)), std::string::npos)
      << status;
}

// The fault itself names its offset: the handler records where the read
// faulted, before the size check at the end of the scope adds the new size.
TEST_F(MappedFileFaultTest, FaultRecordsTheFaultingOffset) {
  MakeFile(8 * kPage);
  ASSERT_EQ(truncate(path_.c_str(), 2 * kPage), 0);
  MappingDamage damage;
  uint64_t sum = 1;
  {
    MappingFaultScope scope(file_->data(), file_->size(), &damage);
    ASSERT_TRUE(scope.installed());
    sum = SumBytes(file_->data() + 6 * kPage + 5, 100);
    EXPECT_TRUE(scope.faulted());
    EXPECT_EQ(scope.first_fault_offset(), 6 * kPage + 5);
  }
  EXPECT_EQ(sum, 0u);  // the patched page reads as zeros
  EXPECT_TRUE(damage.damaged());
  EXPECT_EQ(damage.first_offset(), 6 * kPage + 5);
  // A scope over the same range that reads only sound pages does not fault.
  MappingFaultScope again(file_->data(), file_->size(), &damage);
  EXPECT_EQ(SumBytes(file_->data(), 10), [] {
    uint64_t s = 0;
    for (int i = 0; i < 10; ++i) s += PatternByte(i, 7);
    return s;
  }());
  EXPECT_FALSE(again.faulted());
}

// After one fault the mapping is refused as a whole, even for pages that were
// never patched and even once the file is whole again.
TEST_F(MappedFileFaultTest, DamagedMappingRefusesLaterReads) {
  MakeFile(10 * kPage);
  ASSERT_EQ(truncate(path_.c_str(), 5 * kPage), 0);
  uint8_t out[32];
  absl::Status first = file_->CopyTo(8 * kPage, sizeof(out), out);
  ASSERT_TRUE(absl::IsDataLoss(first)) << first;
  // The file grows back to its old size: the sound pages are still refused.
  ASSERT_EQ(truncate(path_.c_str(), 10 * kPage), 0);
  absl::Status sound = file_->CopyTo(0, sizeof(out), out);
  EXPECT_TRUE(absl::IsDataLoss(sound)) << sound;
  EXPECT_NE(sound.message().find(LossMessage(path_, 5 * kPage)),
            std::string::npos)
      << sound;
  bool ran = false;
  EXPECT_TRUE(absl::IsDataLoss(file_->GuardedRead([&] { ran = true; })));
  EXPECT_FALSE(ran);  // refused before reading
  EXPECT_TRUE(file_->damaged());
}

// A read that faulted nowhere still fails when another thread's fault patched
// the page it read (it saw zeros the damage flag accounts for).
TEST_F(MappedFileFaultTest, ReadOfAPagePatchedByAnotherThreadFails) {
  MakeFile(6 * kPage);
  ASSERT_EQ(truncate(path_.c_str(), 2 * kPage), 0);
  Notification patched;
  Notification reader_in_scope;
  absl::Status late_read;
  std::thread reader([&] {
    late_read = file_->GuardedRead([&] {
      reader_in_scope.Notify();
      patched.WaitForNotification();
      EXPECT_EQ(SumBytes(file_->data() + 4 * kPage, kPage), 0u);
    });
  });
  reader_in_scope.WaitForNotification();
  uint8_t out[8];
  EXPECT_TRUE(absl::IsDataLoss(file_->CopyTo(4 * kPage, sizeof(out), out)));
  patched.Notify();
  reader.join();
  EXPECT_TRUE(absl::IsDataLoss(late_read)) << late_read;
}

TEST_F(MappedFileFaultTest, RewrittenFileReadsFineWhenOpenedAgain) {
  MakeFile(6 * kPage, 7);
  ASSERT_EQ(truncate(path_.c_str(), 0), 0);
  uint8_t out[16];
  ASSERT_TRUE(absl::IsDataLoss(file_->CopyTo(kPage, sizeof(out), out)));
  // Rewrite in place with other contents, as torch.save does.
  {
    std::string fresh = WritePatternFile("fault-fresh", 6 * kPage, 9);
    ASSERT_EQ(rename(fresh.c_str(), path_.c_str()), 0);
  }
  auto reopened = MappedFile::Open(path_);
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  std::vector<uint8_t> all((*reopened)->size());
  ASSERT_TRUE((*reopened)->CopyTo(0, all.size(), all.data()).ok());
  EXPECT_EQ(FirstPatternMismatch(all.data(), all.size(), 0, 9), -1);
  EXPECT_FALSE((*reopened)->damaged());
  EXPECT_TRUE(file_->damaged());
}

// Guards nest, across files: the fault lands in the scope of its mapping.
TEST_F(MappedFileFaultTest, NestedGuardsOfDifferentFiles) {
  MakeFile(4 * kPage);
  std::string other_path = WritePatternFile("fault-other", 4 * kPage, 3);
  auto other = MappedFile::Open(other_path);
  ASSERT_TRUE(other.ok());
  ASSERT_EQ(truncate(other_path.c_str(), kPage), 0);
  absl::Status inner;
  uint64_t outer_sum = 0;
  absl::Status outer = file_->GuardedRead([&] {
    inner = (*other)->GuardedRead(
        [&] { SumBytes((*other)->data() + 3 * kPage, 64); });
    outer_sum = SumBytes(file_->data(), file_->size());
  });
  EXPECT_TRUE(outer.ok()) << outer;
  EXPECT_TRUE(absl::IsDataLoss(inner)) << inner;
  EXPECT_NE(inner.message().find(other_path), std::string::npos);
  EXPECT_FALSE(file_->damaged());
  EXPECT_NE(outer_sum, 0u);
  // The same file nested: the inner scope takes the fault, both fail.
  ASSERT_EQ(truncate(path_.c_str(), kPage), 0);
  absl::Status same_inner;
  absl::Status same_outer = file_->GuardedRead([&] {
    same_inner =
        file_->GuardedRead([&] { SumBytes(file_->data() + 2 * kPage, 8); });
  });
  EXPECT_TRUE(absl::IsDataLoss(same_inner)) << same_inner;
  EXPECT_TRUE(absl::IsDataLoss(same_outer)) << same_outer;
  other->reset();
  unlink(other_path.c_str());
}

// A guard on one thread covers that thread only: another thread's fault in a
// different mapping is its own, and a healthy reader elsewhere is untouched.
TEST_F(MappedFileFaultTest, GuardsOfOtherThreadsDoNotInterfere) {
  MakeFile(4 * kPage);
  std::string broken_path = WritePatternFile("fault-broken", 4 * kPage, 5);
  auto broken = MappedFile::Open(broken_path);
  ASSERT_TRUE(broken.ok());
  ASSERT_EQ(truncate(broken_path.c_str(), kPage), 0);
  Notification healthy_in_scope;
  Notification broken_done;
  absl::Status healthy;
  std::thread healthy_reader([&] {
    healthy = file_->GuardedRead([&] {
      healthy_in_scope.Notify();
      broken_done.WaitForNotification();
      SumBytes(file_->data(), file_->size());
    });
  });
  healthy_in_scope.WaitForNotification();
  absl::Status broken_read;
  std::thread broken_reader([&] {
    broken_read = (*broken)->GuardedRead(
        [&] { SumBytes((*broken)->data(), (*broken)->size()); });
  });
  broken_reader.join();
  broken_done.Notify();
  healthy_reader.join();
  EXPECT_TRUE(healthy.ok()) << healthy;
  EXPECT_TRUE(absl::IsDataLoss(broken_read)) << broken_read;
  EXPECT_FALSE(file_->damaged());
  broken->reset();
  unlink(broken_path.c_str());
}

using MappedFileFaultDeathTest = MappedFileFaultTest;

// With the handler installed, a fault that no guard covers kills the process
// as it did before.
TEST_F(MappedFileFaultDeathTest, UnguardedFaultStillDies) {
  MakeFile(4 * kPage);
  ASSERT_TRUE(file_->GuardedRead([] {}).ok());  // installs the handler
  ASSERT_EQ(truncate(path_.c_str(), kPage), 0);
  EXPECT_EXIT(SumBytes(file_->data() + 3 * kPage, 8), DiedOfSigbus,
              kSigbusReport);
}

// A guard of another thread over the same mapping does not cover this one.
TEST_F(MappedFileFaultDeathTest, AnotherThreadsGuardDoesNotCoverThisThread) {
  MakeFile(4 * kPage);
  ASSERT_EQ(truncate(path_.c_str(), kPage), 0);
  EXPECT_EXIT(
      {
        Notification in_scope;
        Notification never;
        std::thread guarded([&] {
          file_
              ->GuardedRead([&] {
                in_scope.Notify();
                never.WaitForNotification();
              })
              .IgnoreError();
        });
        in_scope.WaitForNotification();
        SumBytes(file_->data() + 2 * kPage, 8);
        guarded.detach();
      },
      DiedOfSigbus, kSigbusReport);
}

// A guard covers its mapping only: a fault in another mapping dies.
TEST_F(MappedFileFaultDeathTest, GuardOfAnotherMappingDoesNotCoverIt) {
  MakeFile(4 * kPage);
  std::string other_path = WritePatternFile("fault-unguarded", 4 * kPage, 1);
  auto other = MappedFile::Open(other_path);
  ASSERT_TRUE(other.ok());
  ASSERT_EQ(truncate(other_path.c_str(), kPage), 0);
  EXPECT_EXIT(
      file_->GuardedRead([&] { SumBytes((*other)->data() + 2 * kPage, 8); })
          .IgnoreError(),
      DiedOfSigbus, kSigbusReport);
  other->reset();
  unlink(other_path.c_str());
}

// A SIGBUS sent by a process (not a fault) is not taken for one, even inside a
// guard.
TEST_F(MappedFileFaultDeathTest, SentSigbusStillDies) {
  MakeFile(kPage);
  EXPECT_EXIT(file_->GuardedRead([] { kill(getpid(), SIGBUS); }).IgnoreError(),
              DiedOfSigbus, kSigbusReport);
}

// A handler installed before ours still gets the faults we do not take. Run in
// a fresh process (threadsafe style) so that ours is installed after the
// test's, as it is after a sanitizer's.
void ExitFromSigbus(int, siginfo_t*, void*) { _exit(42); }

TEST_F(MappedFileFaultDeathTest, ChainsToThePreviousHandler) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  MakeFile(4 * kPage);
  EXPECT_EXIT(
      {
        struct sigaction action;
        std::memset(&action, 0, sizeof(action));
        action.sa_sigaction = &ExitFromSigbus;
        action.sa_flags = SA_SIGINFO;
        sigemptyset(&action.sa_mask);
        sigaction(SIGBUS, &action, nullptr);
        // Installs ours on top, then one guarded fault is taken by ours.
        uint8_t out[8];
        if (truncate(path_.c_str(), kPage) != 0) _exit(3);
        if (!absl::IsDataLoss(file_->CopyTo(3 * kPage, sizeof(out), out))) {
          _exit(1);
        }
        SumBytes(file_->data() + 2 * kPage, 8);  // unguarded: theirs
        _exit(2);
      },
      ::testing::ExitedWithCode(42), "");
}

}  // namespace
}  // namespace weightd
