// device.h's cache. Plain host C++: the attribute queries need only the CUDA runtime API.
#include "device.h"

#include <c10/cuda/CUDAException.h>
#include <cuda_runtime_api.h>

#include <atomic>

namespace mishbench {
namespace {

constexpr int kMaxCachedDevices = 64;

struct CachedCaps {
  std::atomic<int> major{0};  // 0 = not yet queried; stored last (release), read first (acquire)
  std::atomic<int> minor{0};
  std::atomic<int> smem_optin{0};
  std::atomic<int> sm_count{0};
};

CachedCaps g_cache[kMaxCachedDevices];

}  // namespace

int current_device() {
  int dev = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  return dev;
}

DeviceCaps device_caps(int dev) {
  const bool cacheable = dev >= 0 && dev < kMaxCachedDevices;
  if (cacheable) {
    CachedCaps& c = g_cache[dev];
    const int major = c.major.load(std::memory_order_acquire);
    if (major > 0) {
      DeviceCaps caps;
      caps.major = major;
      caps.minor = c.minor.load(std::memory_order_relaxed);
      caps.smem_optin = c.smem_optin.load(std::memory_order_relaxed);
      caps.sm_count = c.sm_count.load(std::memory_order_relaxed);
      return caps;
    }
  }
  DeviceCaps caps;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&caps.major, cudaDevAttrComputeCapabilityMajor, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&caps.minor, cudaDevAttrComputeCapabilityMinor, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&caps.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&caps.sm_count, cudaDevAttrMultiProcessorCount, dev));
  if (cacheable) {
    CachedCaps& c = g_cache[dev];
    c.minor.store(caps.minor, std::memory_order_relaxed);
    c.smem_optin.store(caps.smem_optin, std::memory_order_relaxed);
    c.sm_count.store(caps.sm_count, std::memory_order_relaxed);
    c.major.store(caps.major, std::memory_order_release);
  }
  return caps;
}

}  // namespace mishbench
