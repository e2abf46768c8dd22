#include "loader/device/shared_memory.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include "gtest/gtest.h"

namespace weightd {
namespace {

// Runs `check` in a child process; returns its exit code.
template <typename F>
int InChild(F check) {
  pid_t pid = fork();
  if (pid == 0) _exit(check());
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 100;
}

TEST(SharedMemoryTest, AnotherProcessReadsTheSegment) {
  auto segment = SharedMemorySegment::Create(1 << 20);
  ASSERT_TRUE(segment.ok()) << segment.status();
  SharedMemorySegment& seg = **segment;
  EXPECT_EQ(seg.name().rfind("/weightd-", 0), 0u) << seg.name();
  for (size_t i = 0; i < seg.size(); ++i) seg.data()[i] = i * 7 + 3;
  std::string name = seg.name();
  EXPECT_EQ(InChild([&] {
              auto m = OpenSharedSegment(name, 1 << 20);
              if (!m.ok()) return 1;
              for (size_t i = 0; i < (1 << 20); ++i) {
                if ((*m)->data()[i] != static_cast<uint8_t>(i * 7 + 3))
                  return 2;
              }
              return 0;
            }),
            0);
}

TEST(SharedMemoryTest, HandleRoundTripAndOpen) {
  auto segment = SharedMemorySegment::Create(4096, "weightd-test");
  ASSERT_TRUE(segment.ok());
  std::memset((*segment)->data(), 0xab, 4096);
  SharedHandleInfo info;
  info.kind = SharedHandleKind::kFakeGpu;
  info.device_index = 3;
  info.size = 4096;
  info.name = (*segment)->name();
  auto handle = EncodeSharedHandle(info);
  ASSERT_TRUE(handle.ok()) << handle.status();
  EXPECT_EQ(handle->ToString().size(), 64u);
  auto decoded = DecodeSharedHandle(*handle);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->kind, SharedHandleKind::kFakeGpu);
  EXPECT_EQ(decoded->device_index, 3);
  EXPECT_EQ(decoded->size, 4096u);
  EXPECT_EQ(decoded->name, info.name);
  auto again = IpcHandle::FromString(handle->ToString());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *handle);
  auto mapping = OpenSharedHandle(*handle);
  ASSERT_TRUE(mapping.ok()) << mapping.status();
  EXPECT_EQ((*mapping)->data()[4095], 0xab);
}

TEST(SharedMemoryTest, Errors) {
  IpcHandle garbage;
  garbage.bytes.fill(0x5a);
  EXPECT_TRUE(absl::IsInvalidArgument(DecodeSharedHandle(garbage).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(IpcHandle::FromString("short").status()));
  EXPECT_TRUE(
      absl::IsInvalidArgument(OpenSharedSegment("no-slash", 1).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(OpenSharedSegment("/a/b", 1).status()));

  std::string name;
  {
    auto segment = SharedMemorySegment::Create(100);
    ASSERT_TRUE(segment.ok());
    name = (*segment)->name();
    auto too_big = OpenSharedSegment(name, 1 << 20);
    EXPECT_TRUE(absl::IsOutOfRange(too_big.status())) << too_big.status();
    auto mapping = OpenSharedSegment(name, 100);
    ASSERT_TRUE(mapping.ok());
  }
  // Unlinked with the segment.
  auto gone = OpenSharedSegment(name, 100);
  EXPECT_TRUE(absl::IsNotFound(gone.status())) << gone.status();
}

TEST(SharedMemoryTest, EmptySegment) {
  auto segment = SharedMemorySegment::Create(0);
  ASSERT_TRUE(segment.ok()) << segment.status();
  EXPECT_EQ((*segment)->data(), nullptr);
  auto mapping = OpenSharedSegment((*segment)->name(), 0);
  ASSERT_TRUE(mapping.ok()) << mapping.status();
  EXPECT_EQ((*mapping)->size(), 0u);
}

TEST(SharedMemoryTest, MappingOutlivesUnlink) {
  std::unique_ptr<SharedMapping> mapping;
  {
    auto segment = SharedMemorySegment::Create(8192, "weightd", true);
    ASSERT_TRUE(segment.ok());
    (*segment)->data()[8191] = 42;
    auto m = OpenSharedSegment((*segment)->name(), 8192);
    ASSERT_TRUE(m.ok());
    mapping = std::move(*m);
  }
  EXPECT_EQ(mapping->data()[8191], 42);
}

}  // namespace
}  // namespace weightd
