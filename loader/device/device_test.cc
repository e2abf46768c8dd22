// Host and fake-GPU devices, and the registry.
#include "loader/device/device.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <regex>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "loader/device/device_registry.h"
#include "loader/device/fake_device.h"
#include "loader/device/host_device.h"
#include "loader/device/shared_memory.h"

namespace weightd {
namespace {

template <typename F>
int InChild(F check) {
  pid_t pid = fork();
  if (pid == 0) _exit(check());
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 100;
}

std::vector<uint8_t> Bytes(size_t n, int seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(i * 31 + seed);
  return v;
}

TEST(HostDeviceTest, ArenaCopyExportAndOpenElsewhere) {
  auto device = HostDevice::Create();
  ASSERT_TRUE(device.ok());
  Device& d = **device;
  EXPECT_EQ(d.kind(), DeviceKind::kHost);
  EXPECT_EQ(d.placement(), "cpu");
  auto info = d.GetMemoryInfo();
  ASSERT_TRUE(info.ok());
  EXPECT_GT(info->total_bytes, 0u);
  EXPECT_LE(info->free_bytes, info->total_bytes);

  auto arena = d.Allocate(100000);
  ASSERT_TRUE(arena.ok()) << arena.status();
  ASSERT_NE((*arena)->host_data(), nullptr);
  std::vector<uint8_t> src = Bytes(5000, 1);
  ASSERT_TRUE(
      d.CopyToDeviceAsync(arena->get(), 777, src.data(), src.size(), 0).ok());
  auto event = d.CreateEvent();
  ASSERT_TRUE(event.ok());
  ASSERT_TRUE(d.RecordEvent(event->get(), 0).ok());
  EXPECT_TRUE(*(*event)->Query());
  ASSERT_TRUE((*event)->Wait().ok());
  ASSERT_TRUE(d.Synchronize().ok());
  EXPECT_EQ(std::memcmp((*arena)->host_data() + 777, src.data(), src.size()),
            0);

  EXPECT_TRUE(absl::IsOutOfRange(
      d.CopyToDeviceAsync(arena->get(), 99999, src.data(), 2, 0)));
  EXPECT_TRUE(absl::IsInvalidArgument(
      d.CopyToDeviceAsync(arena->get(), 0, src.data(), 2, 1)));

  auto handle = d.ExportHandle(**arena);
  ASSERT_TRUE(handle.ok()) << handle.status();
  IpcHandle h = *handle;
  EXPECT_EQ(
      InChild([&] {
        auto m = OpenSharedHandle(h);
        if (!m.ok() || (*m)->size() != 100000) return 1;
        return std::memcmp((*m)->data() + 777, src.data(), src.size()) == 0 ? 0
                                                                            : 2;
      }),
      0);
  std::string name = HostDevice::Segment(**arena)->name();
  arena->reset();
  EXPECT_TRUE(absl::IsNotFound(OpenSharedSegment(name, 1).status()));

  auto pinned = d.AllocatePinned(1 << 20);
  ASSERT_TRUE(pinned.ok());
  EXPECT_EQ(reinterpret_cast<uintptr_t>((*pinned)->data()) % 4096, 0u);
}

TEST(FakeDeviceTest, IdentityAndMemoryInfo) {
  FakeDevice::Options o;
  o.index = 2;
  o.total_memory = 1 << 20;
  auto device = FakeDevice::Create(o);
  ASSERT_TRUE(device.ok());
  FakeDevice& d = **device;
  EXPECT_EQ(d.uuid(), "GPU-fake-0000-0000-0000-000000000002");
  EXPECT_EQ(d.placement(), "cuda:2");
  EXPECT_EQ(d.kind(), DeviceKind::kFakeGpu);
  {
    auto a = d.Allocate(600 << 10);
    ASSERT_TRUE(a.ok());
    EXPECT_EQ(d.GetMemoryInfo()->free_bytes, (1u << 20) - (600u << 10));
    auto b = d.Allocate(600 << 10);
    EXPECT_TRUE(absl::IsResourceExhausted(b.status())) << b.status();
    EXPECT_EQ(d.live_arenas(), 1);
  }
  EXPECT_EQ(d.allocated_bytes(), 0u);
  EXPECT_EQ(d.live_arenas(), 0);
  FakeDevice::Faults f;
  f.fail_memory_info = true;
  d.SetFaults(f);
  EXPECT_TRUE(absl::IsUnavailable(d.GetMemoryInfo().status()));
}

TEST(FakeDeviceTest, AsynchronousCopiesAndEvents) {
  FakeDevice::Options o;
  o.copy_delay = absl::Milliseconds(50);
  o.num_streams = 2;
  auto device = FakeDevice::Create(o);
  ASSERT_TRUE(device.ok());
  FakeDevice& d = **device;
  auto arena = d.Allocate(1 << 16);
  ASSERT_TRUE(arena.ok());
  std::vector<uint8_t> src = Bytes(1 << 16, 5);
  ASSERT_TRUE(
      d.CopyToDeviceAsync(arena->get(), 0, src.data(), 1 << 15, 0).ok());
  ASSERT_TRUE(d.CopyToDeviceAsync(arena->get(), 1 << 15, src.data() + (1 << 15),
                                  1 << 15, 1)
                  .ok());
  auto e0 = d.CreateEvent();
  auto e1 = d.CreateEvent();
  ASSERT_TRUE(d.RecordEvent(e0->get(), 0).ok());
  ASSERT_TRUE(d.RecordEvent(e1->get(), 1).ok());
  auto q = (*e0)->Query();
  ASSERT_TRUE(q.ok());
  EXPECT_FALSE(*q);  // 50 ms delay: still running
  ASSERT_TRUE((*e0)->Wait().ok());
  ASSERT_TRUE((*e1)->Wait().ok());
  EXPECT_TRUE(*(*e0)->Query());
  EXPECT_EQ(
      std::memcmp(FakeDevice::ArenaBytes(**arena), src.data(), src.size()), 0);
  // A fresh event that was never recorded is complete.
  auto e2 = d.CreateEvent();
  EXPECT_TRUE(*(*e2)->Query());
}

TEST(FakeDeviceTest, InjectedFailures) {
  FakeDevice::Options o;
  o.faults.fail_allocation = 2;
  o.faults.fail_copy = 2;
  o.faults.fail_copy_submit = 4;
  auto device = FakeDevice::Create(o);
  ASSERT_TRUE(device.ok());
  FakeDevice& d = **device;
  auto a = d.Allocate(4096);
  ASSERT_TRUE(a.ok());
  auto b = d.Allocate(4096);
  EXPECT_TRUE(absl::IsResourceExhausted(b.status()));
  EXPECT_NE(b.status().message().find("injected"), std::string::npos);
  auto c = d.Allocate(4096);
  EXPECT_TRUE(c.ok());

  std::vector<uint8_t> src = Bytes(4096, 9);
  auto event = d.CreateEvent();
  ASSERT_TRUE(d.CopyToDeviceAsync(a->get(), 0, src.data(), 100, 0).ok());
  ASSERT_TRUE(d.RecordEvent(event->get(), 0).ok());
  EXPECT_TRUE((*event)->Wait().ok());
  ASSERT_TRUE(
      d.CopyToDeviceAsync(a->get(), 0, src.data(), 100, 0).ok());  // #2 fails
  ASSERT_TRUE(d.RecordEvent(event->get(), 0).ok());
  absl::Status s = (*event)->Wait();
  EXPECT_TRUE(absl::IsInternal(s)) << s;
  EXPECT_NE(s.message().find("injected copy failure"), std::string::npos) << s;
  EXPECT_FALSE((*event)->Query().ok());
  ASSERT_TRUE(
      d.CopyToDeviceAsync(a->get(), 0, src.data(), 100, 0).ok());  // #3 ok
  ASSERT_TRUE(d.RecordEvent(event->get(), 0).ok());
  EXPECT_TRUE((*event)->Wait().ok());  // a re-recorded event reports new work
  EXPECT_FALSE(
      d.CopyToDeviceAsync(a->get(), 0, src.data(), 100, 0).ok());  // #4
  EXPECT_FALSE(d.Synchronize().ok());  // reports the failure once
  EXPECT_TRUE(d.Synchronize().ok());
}

TEST(FakeDeviceTest, ExportedArenaReadableInAnotherProcess) {
  auto device = FakeDevice::Create(FakeDevice::Options());
  ASSERT_TRUE(device.ok());
  auto arena = (*device)->Allocate(1 << 20);
  ASSERT_TRUE(arena.ok());
  std::vector<uint8_t> src = Bytes(1 << 20, 4);
  ASSERT_TRUE(
      (*device)
          ->CopyToDeviceAsync(arena->get(), 0, src.data(), src.size(), 3)
          .ok());
  ASSERT_TRUE((*device)->Synchronize().ok());
  auto handle = (*device)->ExportHandle(**arena);
  ASSERT_TRUE(handle.ok());
  auto info = DecodeSharedHandle(*handle);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->kind, SharedHandleKind::kFakeGpu);
  IpcHandle h = *handle;
  EXPECT_EQ(InChild([&] {
              auto m = OpenSharedHandle(h);
              if (!m.ok()) return 1;
              return std::memcmp((*m)->data(), src.data(), src.size()) == 0 ? 0
                                                                            : 2;
            }),
            0);
  // Arenas of another device are refused.
  auto host = HostDevice::Create();
  auto host_arena = (*host)->Allocate(10);
  EXPECT_FALSE((*device)->ExportHandle(**host_arena).ok());
  EXPECT_FALSE((*device)
                   ->CopyToDeviceAsync(host_arena->get(), 0, src.data(), 1, 0)
                   .ok());
}

TEST(FakeDeviceTest, ManyThreadsCopying) {
  FakeDevice::Options o;
  o.num_streams = 3;
  auto device = FakeDevice::Create(o);
  ASSERT_TRUE(device.ok());
  FakeDevice& d = **device;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 10; ++round) {
        auto arena = d.Allocate(64 << 10);
        auto event = d.CreateEvent();
        if (!arena.ok() || !event.ok()) {
          ++failures;
          continue;
        }
        std::vector<uint8_t> src = Bytes(64 << 10, t + round);
        for (int k = 0; k < 16; ++k) {
          if (!d.CopyToDeviceAsync(arena->get(), k * 4096,
                                   src.data() + k * 4096, 4096, (t + k) % 3)
                   .ok()) {
            ++failures;
          }
        }
        for (int s = 0; s < 3; ++s) {
          if (!d.RecordEvent(event->get(), s).ok() || !(*event)->Wait().ok()) {
            ++failures;
          }
        }
        if (std::memcmp(FakeDevice::ArenaBytes(**arena), src.data(),
                        src.size()) != 0) {
          ++failures;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(d.live_arenas(), 0);
}

TEST(DeviceRegistryTest, FakeGpusAfterRealOnes) {
  DeviceRegistryOptions o;
  o.fake_gpus = 2;
  auto registry = DeviceRegistry::Create(o);
  ASSERT_TRUE(registry.ok()) << registry.status();
  DeviceRegistry& r = **registry;
  std::printf("CUDA: %s\n", r.cuda_status().c_str());
  EXPECT_FALSE(r.cuda_status().empty());
  int real = r.num_cuda_gpus();
  ASSERT_EQ(r.gpus().size(), static_cast<size_t>(real + 2));
  for (size_t i = 0; i < r.gpus().size(); ++i) {
    EXPECT_EQ(r.gpus()[i]->index(), static_cast<int>(i));
  }
  EXPECT_EQ(*r.Find("cpu"), r.host());
  EXPECT_EQ(*r.Find(absl::StrCat("cuda:", real + 1)), r.gpus()[real + 1]);
  EXPECT_EQ(*r.Find(r.gpus()[real]->uuid()), r.gpus()[real]);
  EXPECT_EQ(*r.Find(absl::StrCat("cuda:", r.gpus()[real]->uuid())),
            r.gpus()[real]);
  EXPECT_EQ(*r.Find("cuda"), r.gpus()[0]);
  auto missing = r.Find("cuda:99");
  EXPECT_TRUE(absl::IsNotFound(missing.status()));
  EXPECT_NE(missing.status().message().find("GPU-fake"), std::string::npos);
  EXPECT_NE(r.fake_gpu(real), nullptr);
  std::regex uuid(
      "GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}");
  for (int i = 0; i < real; ++i) {
    EXPECT_TRUE(std::regex_match(r.gpus()[i]->uuid(), uuid))
        << r.gpus()[i]->uuid();
  }
}

TEST(DeviceRegistryTest, NoGpusWithoutCudaOrFakes) {
  DeviceRegistryOptions o;
  o.use_cuda = false;
  auto registry = DeviceRegistry::Create(o);
  ASSERT_TRUE(registry.ok());
  EXPECT_TRUE((*registry)->gpus().empty());
  auto missing = (*registry)->Find("cuda:0");
  EXPECT_TRUE(absl::IsNotFound(missing.status()));
  EXPECT_NE(missing.status().message().find("none"), std::string::npos);
  o.fake_gpus = -1;
  EXPECT_FALSE(DeviceRegistry::Create(o).ok());
}

}  // namespace
}  // namespace weightd
