// Host side of the tensor-core GEMM families (device code: gemm_tc.cuh for mma.sync, gemm_wgmma.cuh for
// Hopper's wgmma): capability/alignment/size checks and compile-time dispatch over (dtype, precision,
// epilogue). Contract: gemm.h, launch_gemm_tc.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>

#include "device.h"
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

constexpr int kMaxCachedDevices = 64;  // ensure_smem_optin's per-device flags (device.h caches the rest)

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

template <typename T, Mode kMode, bool kMish, bool kTransC = false>
void launch_wgmma(const GemmParams& p, int dev, cudaStream_t stream) {
  auto* kernel = wg::gemm_wgmma_kernel<T, kMode, kMish, kTransC>;
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
    // Only the pre-split 3xtf32 kernels write a transposed output (GemmParams::trans_c).
    if constexpr (kMode == Mode::k3xTf32) {
      if (p.trans_c) {
        mish ? launch_wgmma<T, kMode, true, true>(p, dev, stream) : launch_wgmma<T, kMode, false, true>(p, dev, stream);
        return;
      }
    }
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

namespace {

enum class Route { kNone, kMma, kWgmma };

// Which (dtype, precision) pairs this family covers: the element size, and the mode in *mode; 0 for every
// pair that is the SIMT path's.
int tc_elem(c10::ScalarType dtype, Precision precision, Mode* mode) {
  if (dtype == c10::ScalarType::Float) {
    if (precision != Precision::k3xTf32 && precision != Precision::kTf32) return 0;
    *mode = precision == Precision::k3xTf32 ? Mode::k3xTf32 : Mode::kTf32;
    return 4;
  }
  if (dtype == c10::ScalarType::Half || dtype == c10::ScalarType::BFloat16) {
    if (precision != Precision::kNative) return 0;
    *mode = Mode::kHalf;
    return 2;
  }
  return 0;
}

// The checks that depend on the shape, the leading dimensions and the device only (not on the pointers):
// shared by route() below and by tc_family(), which names the family for the dispatch table.
Route shape_route(int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int elem, Mode mode,
                  const DeviceCaps& caps) {
  // Size: too small to fill the GPU with 128×128 tiles (see kMinMacs).
  if (static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K) < kMinMacs) return Route::kNone;
  const int64_t tiles = ((M + tc::kBM - 1) / tc::kBM) * ((N + tc::kBN - 1) / tc::kBN);
  if (tiles > 2147483647LL) return Route::kNone;

  // Alignment: operands are moved in 16-byte cp.async chunks that never straddle the end of K.
  const int64_t vec = 16 / elem;
  if (K % vec != 0 || lda % vec != 0 || ldb % vec != 0) return Route::kNone;

  // Architecture: mma.sync tf32/bf16 and cp.async need sm_80; the 96 KB tile ring needs the smem opt-in.
  if (caps.major < 8 || caps.smem_optin < tc::kSmemBytes) return Route::kNone;
  return wgmma_usable(caps, mode) ? Route::kWgmma : Route::kMma;
}

// Which family takes p (the checks shared by launch_gemm_tc and gemm_tc_presplit); fills dev/mode.
Route route(const GemmParams& p, c10::ScalarType dtype, Precision precision, int* dev, Mode* mode) {
  const int elem = tc_elem(dtype, precision, mode);
  if (elem == 0) return Route::kNone;
  TORCH_CHECK(p.M >= 1 && p.N >= 1 && p.K >= 1, "launch_gemm_tc: M, N, K must be >= 1, got ", num(p.M), ", ",
              num(p.N), ", ", num(p.K));
  TORCH_CHECK(p.epilogue != Epilogue::kBiasMishMish || p.bias != nullptr,
              "launch_gemm_tc: kBiasMishMish needs a bias pointer");
  if (!aligned(p.A, 16) || !aligned(p.B, 16)) return Route::kNone;
  *dev = current_device();
  return shape_route(p.M, p.N, p.K, p.lda, p.ldb, elem, *mode, device_caps(*dev));
}

#if MISHBENCH_TC_ENABLED
#define MISHBENCH_SPLIT_BODY 1
#else
#define MISHBENCH_SPLIT_BODY 0
#endif

// launch_split_tf32's kernel: one 16-byte vector per thread and grid-stride step; rows of `cols` floats.
__global__ void __launch_bounds__(256) split_tf32_kernel(const float* __restrict__ src, int64_t rows, int64_t cols,
                                                         int64_t ld, float* __restrict__ big,
                                                         float* __restrict__ small) {
#if MISHBENCH_SPLIT_BODY
  const int64_t vecs_per_row = cols / 4;
  const int64_t total = rows * vecs_per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < total; v += stride) {
    const int64_t r = v / vecs_per_row, c = (v - r * vecs_per_row) * 4;
    const float4 x = *reinterpret_cast<const float4*>(src + r * ld + c);
    float4 b, s;
    b.x = __uint_as_float(tc::tf32_rna(x.x));
    b.y = __uint_as_float(tc::tf32_rna(x.y));
    b.z = __uint_as_float(tc::tf32_rna(x.z));
    b.w = __uint_as_float(tc::tf32_rna(x.w));
    s.x = __uint_as_float(tc::tf32_rna(x.x - b.x));
    s.y = __uint_as_float(tc::tf32_rna(x.y - b.y));
    s.z = __uint_as_float(tc::tf32_rna(x.z - b.z));
    s.w = __uint_as_float(tc::tf32_rna(x.w - b.w));
    *reinterpret_cast<float4*>(big + r * cols + c) = b;
    *reinterpret_cast<float4*>(small + r * cols + c) = s;
  }
#endif
}

}  // namespace

bool gemm_tc_presplit(const GemmParams& p, c10::ScalarType dtype, Precision precision) {
  int dev = 0;
  Mode mode = Mode::kHalf;
  return route(p, dtype, precision, &dev, &mode) == Route::kWgmma && mode == Mode::k3xTf32;
}

TcFamily tc_family(int64_t M, int64_t N, int64_t K, c10::ScalarType dtype, Precision precision, int dev) {
  Mode mode = Mode::kHalf;
  const int elem = tc_elem(dtype, precision, &mode);
  if (elem == 0 || M < 1 || N < 1 || K < 1) return TcFamily::kNone;
  switch (shape_route(M, N, K, /*lda=*/K, /*ldb=*/K, elem, mode, device_caps(dev))) {
    case Route::kWgmma:
      return TcFamily::kWgmma;
    case Route::kMma:
      return TcFamily::kMma;
    case Route::kNone:
      break;
  }
  return TcFamily::kNone;
}

void launch_split_tf32(const void* src, int64_t rows, int64_t cols, int64_t ld, void* big, void* small,
                       cudaStream_t stream) {
  TORCH_CHECK(rows >= 1 && cols >= 4 && cols % 4 == 0 && ld % 4 == 0 && ld >= cols && aligned(src, 16),
              "launch_split_tf32: needs rows >= 1, cols a positive multiple of 4, ld % 4 == 0 and a 16-byte "
              "aligned source; got rows=", num(rows), " cols=", num(cols), " ld=", num(ld));
  const int64_t vecs = rows * (cols / 4);
  const int64_t blocks = std::min<int64_t>((vecs + 255) / 256, 132 * 8);  // grid-stride past that
  split_tf32_kernel<<<dim3(static_cast<unsigned>(blocks)), 256, 0, stream>>>(
      static_cast<const float*>(src), rows, cols, ld, static_cast<float*>(big), static_cast<float*>(small));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

bool launch_gemm_tc(const GemmParams& p, c10::ScalarType dtype, Precision precision, cudaStream_t stream) {
  int dev = 0;
  Mode mode = Mode::kHalf;
  const Route r = route(p, dtype, precision, &dev, &mode);
  if (r == Route::kNone) {
    TORCH_CHECK(p.B_small == nullptr && !p.trans_c, "launch_gemm_tc: B_small/trans_c given for a call the "
                "tensor-core path does not take (ask gemm_tc_presplit first)");
    return false;
  }
  const bool wgmma = r == Route::kWgmma;
  const bool presplit = wgmma && mode == Mode::k3xTf32;
  TORCH_CHECK(presplit == (p.B_small != nullptr), "launch_gemm_tc: B_small must be set exactly when "
              "gemm_tc_presplit says so (", presplit ? "it does" : "it does not", ")");
  TORCH_CHECK(presplit || !p.trans_c, "launch_gemm_tc: trans_c needs the pre-split 3xtf32 path");
  TORCH_CHECK(!presplit || aligned(p.B_small, 16), "launch_gemm_tc: B_small must be 16-byte aligned");
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
