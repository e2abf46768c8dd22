// Needs a real GPU: every test skips with the reason where there is none.
// The arena's bytes are checked the way a client sees them: this binary re-runs
// itself as a child (CUDA does not survive fork) with WEIGHTD_TEST_IPC_HANDLE
// set, which opens the exported handle with OpenArenaHandle().
#include "loader/device/cuda_device.h"

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <regex>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "loader/device/arena_handle.h"
#include "loader/device/staging_pipeline.h"
#include "loader/io/mapped_file.h"
#include "loader/io/reader_factory.h"
#include "loader/io/test_util.h"

extern char** environ;

namespace weightd {
namespace {

using testing::FirstPatternMismatch;
using testing::WritePatternFile;

class CudaDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::getenv("WEIGHTD_TEST_IPC_HANDLE") != nullptr) {
      GTEST_SKIP() << "IPC child run";
    }
    CudaEnumeration e = EnumerateCudaDevices();
    if (e.count == 0) GTEST_SKIP() << "no GPU: " << e.status;
    auto device = CreateCudaDevice(0, CudaDeviceOptions());
    ASSERT_TRUE(device.ok()) << device.status();
    device_ = std::move(*device);
  }
  std::unique_ptr<Device> device_;
};

TEST(CudaEnumerationTest, ReportsZeroOrMoreWithAReason) {
  CudaEnumeration e = EnumerateCudaDevices();
  std::printf("CUDA compiled in: %d, GPUs: %d (%s)\n", CudaCompiledIn(),
              e.count, e.status.c_str());
  EXPECT_GE(e.count, 0);
  EXPECT_FALSE(e.status.empty());
  if (!CudaCompiledIn()) {
    EXPECT_EQ(e.count, 0);
    EXPECT_TRUE(absl::IsUnimplemented(
        CreateCudaDevice(0, CudaDeviceOptions()).status()));
  }
  uint8_t bytes[16] = {0xde, 0xad, 0xbe, 0xef, 1, 2,  3,  4,
                       5,    6,    7,    8,    9, 10, 11, 12};
  EXPECT_EQ(FormatGpuUuid(bytes), "GPU-deadbeef-0102-0304-0506-0708090a0b0c");
}

TEST_F(CudaDeviceTest, IdentityAndMemory) {
  std::regex uuid(
      "GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}");
  EXPECT_TRUE(std::regex_match(device_->uuid(), uuid)) << device_->uuid();
  std::printf("GPU 0: %s %s\n", device_->name().c_str(),
              device_->uuid().c_str());
  auto info = device_->GetMemoryInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_GT(info->total_bytes, 0u);
  EXPECT_LE(info->free_bytes, info->total_bytes);
  auto huge = device_->Allocate(info->total_bytes * 4);
  EXPECT_TRUE(absl::IsResourceExhausted(huge.status())) << huge.status();
  EXPECT_NE(huge.status().message().find("cudaMalloc"), std::string::npos);
}

TEST_F(CudaDeviceTest, CopiesEventsAndPipeline) {
  const uint64_t kSize = (64 << 20) + 4097;
  std::string path = WritePatternFile("cuda", kSize, 21);
  auto file = MappedFile::Open(path);
  ASSERT_TRUE(file.ok());
  auto reader = CreateReader(ReaderOptions());
  ASSERT_TRUE(reader.ok());
  StagingOptions options;
  options.chunk_bytes = 4 << 20;
  options.num_buffers = 4;
  auto pipeline =
      StagingPipeline::Create(device_.get(), std::move(*reader), options);
  ASSERT_TRUE(pipeline.ok());
  FileSource source;
  source.fd = (*file)->fd();
  source.size = kSize;
  source.name = path;
  std::vector<CopyRange> ranges = {CopyRange::FromFile(4097, kSize - 4097, 0),
                                   CopyRange::FromFile(0, 4097, kSize - 4097)};
  auto arena = (*pipeline)->Load(kSize, source, ranges, nullptr, nullptr);
  ASSERT_TRUE(arena.ok()) << arena.status();

  // A child process opens the handle by its kind and checks every byte.
  auto handle = device_->ExportHandle(**arena);
  ASSERT_TRUE(handle.ok()) << handle.status();
  EXPECT_EQ(handle->kind, ArenaHandleKind::kCudaIpc);
  std::string env =
      absl::StrCat("WEIGHTD_TEST_IPC_HANDLE=",
                   absl::BytesToHexString(handle->bytes.ToString()), ":",
                   device_->uuid(), ":", kSize);
  std::vector<char*> envp;
  for (char** e = environ; *e != nullptr; ++e) envp.push_back(*e);
  envp.push_back(env.data());
  envp.push_back(nullptr);
  std::string filter = "--gtest_filter=CudaIpcChild.*";
  char self[] = "/proc/self/exe";
  char* argv[] = {self, filter.data(), nullptr};
  pid_t pid;
  ASSERT_EQ(
      posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv, envp.data()),
      0);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  unlink(path.c_str());
}

TEST_F(CudaDeviceTest, OpeningNamesTheMissingGpu) {
  IpcHandle bytes;
  auto opened = OpenArenaHandle({ArenaHandleKind::kCudaIpc, bytes}, 16,
                                "GPU-00000000-0000-0000-0000-000000000000");
  EXPECT_TRUE(absl::IsNotFound(opened.status())) << opened.status();
  EXPECT_NE(opened.status().message().find(device_->uuid()), std::string::npos)
      << opened.status();
}

TEST(CudaIpcChild, ReadsArenaThroughHandle) {
  const char* env = std::getenv("WEIGHTD_TEST_IPC_HANDLE");
  if (env == nullptr) GTEST_SKIP() << "runs only as the IPC child";
  std::vector<std::string> parts = absl::StrSplit(env, ':');
  ASSERT_EQ(parts.size(), 3u) << env;
  uint64_t size = 0;
  ASSERT_TRUE(absl::SimpleAtoi(parts[2], &size));
  ASSERT_GT(size, 4097u);
  auto bytes = IpcHandle::FromString(absl::HexStringToBytes(parts[0]));
  ASSERT_TRUE(bytes.ok());
  auto opened =
      OpenArenaHandle({ArenaHandleKind::kCudaIpc, *bytes}, size, parts[1]);
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_EQ((*opened)->host_data(), nullptr);
  EXPECT_NE((*opened)->device_pointer(), nullptr);
  std::vector<uint8_t> back(size);
  ASSERT_TRUE((*opened)->CopyToHost(0, size, back.data()).ok());
  // The layout CopiesEventsAndPipeline loaded: the file rotated by 4097.
  EXPECT_EQ(FirstPatternMismatch(back.data(), size - 4097, 4097, 21), -1);
  EXPECT_EQ(FirstPatternMismatch(back.data() + size - 4097, 4097, 0, 21), -1);
  EXPECT_TRUE(
      absl::IsOutOfRange((*opened)->CopyToHost(size - 1, 2, back.data())));
}

}  // namespace
}  // namespace weightd
