// Host side of the tensor-core GEMM families (device code: gemm_tc.cuh for mma.sync, gemm_wgmma.cuh for
// Hopper's wgmma): capability/alignment/size checks and compile-time dispatch over (dtype, precision,
// epilogue). Contract: gemm.h, launch_gemm_tc.
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>

#include "gemm.h"
#include "msg.h"
#include "gemm_tc.cuh"
#include "gemm_wgmma.cuh"

namespace mishbench {
namespace {

using tc::Mode;

// Below this many multiply-adds the SIMT kernel takes the call. 2^21 MACs is 16 blocks of 128×128 at
// K = 8192, or one block at K = 128: a 128×128 tile on a 132-SM part leaves almost every SM idle and the
// whole GEMM is a few microseconds of launch-bound work either way; the SIMT path (smaller tiles, no 96 KB
// smem carve-out, no split-operand overhead) is the better fit there. KernelBench's small shape
// (128×10×20 = 25.6k MACs) and every shape under ~128³ go to SIMT.
constexpr double kMinMacs = 2097152.0;  // 2^21

constexpr int kMaxCachedDevices = 64;

struct DeviceCaps {
  int major;
  int minor;
  int smem_optin;  // cudaDevAttrMaxSharedMemoryPerBlockOptin, bytes
};

// Capability of the current device, queried once per device (benign race: two first callers both query).
DeviceCaps current_device_caps(int* dev_out) {
  static std::atomic<int> major_cache[kMaxCachedDevices];  // 0 = not yet queried
  static std::atomic<int> minor_cache[kMaxCachedDevices];
  static std::atomic<int> smem_cache[kMaxCachedDevices];
  int dev = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  *dev_out = dev;
  const bool cacheable = dev >= 0 && dev < kMaxCachedDevices;
  if (cacheable) {
    const int major = major_cache[dev].load(std::memory_order_acquire);
    if (major > 0) {
      return {major, minor_cache[dev].load(std::memory_order_relaxed), smem_cache[dev].load(std::memory_order_relaxed)};
    }
  }
  DeviceCaps caps{0, 0, 0};
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&caps.major, cudaDevAttrComputeCapabilityMajor, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&caps.minor, cudaDevAttrComputeCapabilityMinor, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&caps.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  if (cacheable) {
    smem_cache[dev].store(caps.smem_optin, std::memory_order_relaxed);
    minor_cache[dev].store(caps.minor, std::memory_order_relaxed);
    major_cache[dev].store(caps.major, std::memory_order_release);
  }
  return caps;
}

bool aligned(const void* ptr, uintptr_t bytes) { return (reinterpret_cast<uintptr_t>(ptr) % bytes) == 0; }

// > 48 KB of dynamic shared memory needs the opt-in, once per device and kernel instantiation (`done` is that
// instantiation's flag array).
template <typename Kernel>
void ensure_smem_optin(Kernel kernel, int bytes, int dev, std::atomic<bool> (&done)[kMaxCachedDevices]) {
  const bool cacheable = dev >= 0 && dev < kMaxCachedDevices;
  if (cacheable && done[dev].load(std::memory_order_acquire)) return;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  if (cacheable) done[dev].store(true, std::memory_order_release);
}

struct LaunchShape {
  unsigned tiles;  // one-dimensional grid (tile order is decided in the kernel, grouped for L2)
  bool vec_c, vec_z;
};

template <typename T>
LaunchShape launch_shape(const GemmParams& p) {
  const int64_t tiles = ((p.M + tc::kBM - 1) / tc::kBM) * ((p.N + tc::kBN - 1) / tc::kBN);
  constexpr uintptr_t kPair = 2 * sizeof(T);
  return {static_cast<unsigned>(tiles), aligned(p.C, kPair) && p.ldc % 2 == 0,
          p.Z == nullptr || (aligned(p.Z, kPair) && p.ldz % 2 == 0)};
}

template <typename T, Mode kMode, bool kMish>
void launch_mma(const GemmParams& p, int dev, cudaStream_t stream) {
  auto* kernel = tc::gemm_tc_kernel<T, kMode, kMish>;
  static std::atomic<bool> optin[kMaxCachedDevices];
  ensure_smem_optin(kernel, tc::kSmemBytes, dev, optin);
  const LaunchShape ls = launch_shape<T>(p);
  kernel<<<dim3(ls.tiles), tc::threads_for(kMode), tc::kSmemBytes, stream>>>(p, ls.vec_c, ls.vec_z);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, Mode kMode, bool kMish>
void launch_wgmma(const GemmParams& p, int dev, cudaStream_t stream) {
  auto* kernel = wg::gemm_wgmma_kernel<T, kMode, kMish>;
  constexpr int kSmem = wg::smem_bytes(kMode);
  static std::atomic<bool> optin[kMaxCachedDevices];
  ensure_smem_optin(kernel, kSmem, dev, optin);
  const LaunchShape ls = launch_shape<T>(p);
  kernel<<<dim3(ls.tiles), wg::kThreads, kSmem, stream>>>(p, ls.vec_c, ls.vec_z);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, Mode kMode>
void launch_epilogue(const GemmParams& p, int dev, bool wgmma, cudaStream_t stream) {
  const bool mish = p.epilogue == Epilogue::kBiasMishMish;
  if (wgmma) {
    if (mish) {
      launch_wgmma<T, kMode, true>(p, dev, stream);
    } else {
      launch_wgmma<T, kMode, false>(p, dev, stream);
    }
  } else if (mish) {
    launch_mma<T, kMode, true>(p, dev, stream);
  } else {
    launch_mma<T, kMode, false>(p, dev, stream);
  }
}

// The wgmma kernels exist in this build only when it had an sm_90a target (build.py defines MISHBENCH_SM90A),
// and run only on sm_90 (an sm_90a image does not run on other parts). MISHBENCH_NO_WGMMA=1 (read once per
// process) falls back to the mma.sync kernels: for A/B timing and for testing that family on a Hopper card.
bool wgmma_usable(const DeviceCaps& caps, Mode mode) {
#ifdef MISHBENCH_SM90A
  static const bool disabled = [] {
    const char* v = std::getenv("MISHBENCH_NO_WGMMA");
    return v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
  }();
  return !disabled && caps.major == 9 && caps.minor == 0 && caps.smem_optin >= wg::smem_bytes(mode);
#else
  (void)caps;
  (void)mode;
  return false;
#endif
}

}  // namespace

bool launch_gemm_tc(const GemmParams& p, c10::ScalarType dtype, Precision precision, cudaStream_t stream) {
  // Which (dtype, precision) pairs this family covers; everything else is the SIMT path's.
  int elem = 0;
  if (dtype == c10::ScalarType::Float) {
    if (precision != Precision::k3xTf32 && precision != Precision::kTf32) return false;
    elem = 4;
  } else if (dtype == c10::ScalarType::Half || dtype == c10::ScalarType::BFloat16) {
    if (precision != Precision::kNative) return false;
    elem = 2;
  } else {
    return false;
  }
  TORCH_CHECK(p.M >= 1 && p.N >= 1 && p.K >= 1, "launch_gemm_tc: M, N, K must be >= 1, got ", num(p.M), ", ",
              num(p.N), ", ", num(p.K));
  TORCH_CHECK(p.epilogue != Epilogue::kBiasMishMish || p.bias != nullptr,
              "launch_gemm_tc: kBiasMishMish needs a bias pointer");

  // Size: too small to fill the GPU with 128×128 tiles (see kMinMacs).
  if (static_cast<double>(p.M) * static_cast<double>(p.N) * static_cast<double>(p.K) < kMinMacs) return false;
  const int64_t tiles = ((p.M + tc::kBM - 1) / tc::kBM) * ((p.N + tc::kBN - 1) / tc::kBN);
  if (tiles > 2147483647LL) return false;

  // Alignment: operands are moved in 16-byte cp.async chunks that never straddle the end of K.
  const int64_t vec = 16 / elem;
  if (p.K % vec != 0 || p.lda % vec != 0 || p.ldb % vec != 0) return false;
  if (!aligned(p.A, 16) || !aligned(p.B, 16)) return false;

  // Architecture: mma.sync tf32/bf16 and cp.async need sm_80; the 96 KB tile ring needs the smem opt-in.
  int dev = 0;
  const DeviceCaps caps = current_device_caps(&dev);
  if (caps.major < 8 || caps.smem_optin < tc::kSmemBytes) return false;

  const Mode mode = dtype != c10::ScalarType::Float      ? Mode::kHalf
                    : precision == Precision::k3xTf32 ? Mode::k3xTf32
                                                      : Mode::kTf32;
  const bool wgmma = wgmma_usable(caps, mode);
  if (mode == Mode::k3xTf32) {
    launch_epilogue<float, Mode::k3xTf32>(p, dev, wgmma, stream);
  } else if (mode == Mode::kTf32) {
    launch_epilogue<float, Mode::kTf32>(p, dev, wgmma, stream);
  } else if (dtype == c10::ScalarType::Half) {
    launch_epilogue<__half, Mode::kHalf>(p, dev, wgmma, stream);
  } else {
    launch_epilogue<__nv_bfloat16, Mode::kHalf>(p, dev, wgmma, stream);
  }
  return true;
}

}  // namespace mishbench
