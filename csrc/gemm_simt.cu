// SIMT GEMM ("TN": C[m, n] = sum_k A[m, k] * B[n, k]) with an optional fused bias + Mish + Mish epilogue.
//
// The plain-FMA path of the extension: fp32 `ieee`, float64 (so gradcheck runs on real CUDA kernels), and the
// fallback for fp16/bf16 and the tf32 modes where the tensor-core kernels cannot take a call. Classic
// register-blocked design: a block computes a BM x BN tile of C, each thread a TM x TN sub-tile held in
// registers; A and B k-slices of depth BK are staged through double-buffered shared memory (the next slice
// is fetched into registers while the current one is multiplied, so one __syncthreads per k-step suffices).
// Operands are converted to the accumulator type (fp32, or fp64 for double) when written to shared memory,
// so the inner loop is the same for every dtype.
//
// Any M, N, K >= 1 and any leading dimensions: global loads are predicated per element; 4-wide vector loads
// are used when the leading dimensions and base pointers allow it, with a scalar tail for the last K group.
// Offsets are int64_t; tiles are numbered on a 1-D grid (gridDim.x allows 2^31 - 1, gridDim.y only 65535).
#include "gemm.h"
#include "msg.h"
#include "mish.cuh"

#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <climits>
#include <cstdint>
#include <type_traits>

namespace mishbench {
namespace {

template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };

// Four consecutive elements, aligned so one (or, for double, two) vector load(s) fetch them.
template <typename T>
struct alignas(4 * sizeof(T)) Vec4 {
  T v[4];
};

// Block-tile configuration. Each thread fetches exactly one 4-element K-group of A and one of B per k-step,
// hence kThreads * 4 == BM * BK == BN * BK.
template <int BM_, int BN_, int BK_, int TM_, int TN_>
struct TileConfig {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, TM = TM_, TN = TN_;
  static constexpr int kThreads = (BM / TM) * (BN / TN);
  static_assert(BM % TM == 0 && BN % TN == 0, "thread tiles must divide the block tile");
  static_assert(BK % 4 == 0, "K groups are 4 wide");
  static_assert(kThreads * 4 == BM * BK && kThreads * 4 == BN * BK, "one A group + one B group per thread");
  static_assert(kThreads <= 1024, "block too large");
};

using LargeTile = TileConfig<128, 128, 8, 8, 8>;  // big GEMMs, fp32 accumulate: 64 accumulators/thread
using MediumTile = TileConfig<64, 64, 16, 4, 4>;  // mid-size, and big fp64 GEMMs (register budget)
using SmallTile = TileConfig<32, 32, 32, 2, 2>;   // launch-bound shapes: e.g. 128x10x20 is 4 blocks

template <typename Acc, typename T>
__device__ __forceinline__ Acc to_acc(T v) {
  return static_cast<Acc>(v);
}

// Loads row[k .. k+3] (zeros beyond K, or everything when the row is out of range) as Acc. `vec` is a
// runtime flag (uniform over the grid, so no divergence): a template parameter doubled the kernel count and
// the CI compile time for no measurable gain.
template <typename T, typename Acc>
__device__ __forceinline__ void load_group(const T* row, int64_t k, int64_t K, bool row_ok, bool vec,
                                           Acc (&r)[4]) {
  if (vec && row_ok && k + 3 < K) {
    // Aligned: the launcher checked base % (4 * sizeof(T)) == 0 and ld % 4 == 0, and k % 4 == 0 here.
    const Vec4<T> v = *reinterpret_cast<const Vec4<T>*>(row + k);
#pragma unroll
    for (int i = 0; i < 4; ++i) r[i] = to_acc<Acc>(v.v[i]);
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) r[i] = (row_ok && k + i < K) ? to_acc<Acc>(row[k + i]) : Acc(0);
  }
}

template <typename T, class Cfg, Epilogue kEpi>
__global__ void __launch_bounds__(Cfg::kThreads)
    gemm_simt_kernel(const GemmParams p, const int64_t tiles_n, const bool vec) {
  using Acc = typename AccType<T>::type;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK, TM = Cfg::TM, TN = Cfg::TN;
  // +4 padding: the transposed smem stores of the two K-groups of a row pair land in different banks, and
  // rows stay 16-byte aligned for vectorised smem reads.
  constexpr int kLdsA = BM + 4, kLdsB = BN + 4;
  __shared__ __align__(16) Acc As[2][BK][kLdsA];
  __shared__ __align__(16) Acc Bs[2][BK][kLdsB];

  const int64_t tile = blockIdx.x;
  const int64_t m0 = (tile / tiles_n) * BM;
  const int64_t n0 = (tile % tiles_n) * BN;
  const int tid = threadIdx.x;

  // Global -> shared mapping: thread loads K-group lk..lk+3 of tile row lr, for both A and B.
  constexpr int kGroups = BK / 4;
  const int lr = tid / kGroups;
  const int lk = (tid % kGroups) * 4;
  const T* __restrict__ A = static_cast<const T*>(p.A);
  const T* __restrict__ B = static_cast<const T*>(p.B);
  const bool a_ok = m0 + lr < p.M;
  const bool b_ok = n0 + lr < p.N;
  // Out-of-range rows point at row 0 (never dereferenced) so no out-of-bounds pointer is formed.
  const T* a_row = A + (a_ok ? m0 + lr : 0) * p.lda;
  const T* b_row = B + (b_ok ? n0 + lr : 0) * p.ldb;

  Acc ra[4], rb[4];
  auto fetch = [&](int64_t k0) {
    load_group<T, Acc>(a_row, k0 + lk, p.K, a_ok, vec, ra);
    load_group<T, Acc>(b_row, k0 + lk, p.K, b_ok, vec, rb);
  };
  auto stash = [&](int buf) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      As[buf][lk + i][lr] = ra[i];
      Bs[buf][lk + i][lr] = rb[i];
    }
  };

  // Compute mapping: thread (ty, tx) owns rows ty*TM.. and columns tx*TN.. of the block tile.
  const int tx = tid % (BN / TN);
  const int ty = tid / (BN / TN);
  Acc acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = Acc(0);

  const int64_t nk = (p.K + BK - 1) / BK;
  fetch(0);
  stash(0);
  __syncthreads();
  for (int64_t kt = 0; kt < nk; ++kt) {
    const int cur = static_cast<int>(kt & 1);
    const bool more = kt + 1 < nk;
    if (more) fetch((kt + 1) * BK);  // in flight while we multiply
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      Acc a[TM], b[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) a[i] = As[cur][kk][ty * TM + i];
#pragma unroll
      for (int j = 0; j < TN; ++j) b[j] = Bs[cur][kk][tx * TN + j];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
    }
    // The other buffer was last read in iteration kt-1, which ended with a barrier: safe to overwrite.
    if (more) stash(cur ^ 1);
    __syncthreads();
  }

  // Epilogue: accumulator-type math, one rounding to T per store.
  T* __restrict__ C = static_cast<T*>(p.C);
  T* __restrict__ Z = static_cast<T*>(p.Z);
  Acc bias_r[TN];
  if (kEpi == Epilogue::kBiasMishMish) {
    const T* __restrict__ bias = static_cast<const T*>(p.bias);
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int64_t n = n0 + tx * TN + j;
      bias_r[j] = n < p.N ? to_acc<Acc>(bias[n]) : Acc(0);
    }
  }
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t m = m0 + ty * TM + i;
    if (m >= p.M) break;
    T* c_row = C + m * p.ldc;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int64_t n = n0 + tx * TN + j;
      if (n >= p.N) break;
      Acc v = acc[i][j];
      if (kEpi == Epilogue::kBiasMishMish) {
        v += bias_r[j];
        if (Z != nullptr) Z[m * p.ldz + n] = static_cast<T>(v);
        v = mish(mish(v));
      }
      c_row[n] = static_cast<T>(v);
    }
  }
}

template <typename T>
bool aligned4(const void* ptr) {
  return reinterpret_cast<uintptr_t>(ptr) % (4 * sizeof(T)) == 0;
}

template <typename T, class Cfg, Epilogue kEpi>
void launch_config(const GemmParams& p, cudaStream_t stream) {
  const int64_t tiles_m = (p.M + Cfg::BM - 1) / Cfg::BM;
  const int64_t tiles_n = (p.N + Cfg::BN - 1) / Cfg::BN;
  const int64_t tiles = tiles_m * tiles_n;
  TORCH_CHECK(tiles <= INT_MAX, "mishbench: GEMM of ", num(p.M), "x", num(p.N), " needs ", num(tiles),
              " tiles, more than one grid can hold (", num(INT_MAX), ")");
  const bool vec = p.lda % 4 == 0 && p.ldb % 4 == 0 && aligned4<T>(p.A) && aligned4<T>(p.B);
  const dim3 grid(static_cast<unsigned>(tiles));
  const dim3 block(Cfg::kThreads);
  gemm_simt_kernel<T, Cfg, kEpi><<<grid, block, 0, stream>>>(p, tiles_n, vec);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Tile choice: the largest tile that still gives about one wave of blocks (~100+ on an H100's 132 SMs);
// smaller tiles keep small and launch-bound shapes spread over the SMs.
template <typename T, Epilogue kEpi>
void launch_typed(const GemmParams& p, cudaStream_t stream) {
  auto tiles = [&](int bm, int bn) { return ((p.M + bm - 1) / bm) * ((p.N + bn - 1) / bn); };
  constexpr int64_t kEnoughBlocks = 128;
  // fp64 never takes the 128x128 tile: 64 double accumulators per thread would spill.
  if constexpr (!std::is_same<T, double>::value) {
    if (tiles(128, 128) >= kEnoughBlocks) {
      launch_config<T, LargeTile, kEpi>(p, stream);
      return;
    }
  }
  if (tiles(64, 64) >= kEnoughBlocks) {
    launch_config<T, MediumTile, kEpi>(p, stream);
  } else {
    launch_config<T, SmallTile, kEpi>(p, stream);
  }
}

template <typename T>
void launch_epilogue(const GemmParams& p, cudaStream_t stream) {
  switch (p.epilogue) {
    case Epilogue::kStore:
      launch_typed<T, Epilogue::kStore>(p, stream);
      return;
    case Epilogue::kBiasMishMish:
      TORCH_CHECK(p.bias != nullptr, "mishbench: the bias+mish epilogue needs a bias pointer");
      launch_typed<T, Epilogue::kBiasMishMish>(p, stream);
      return;
  }
  TORCH_CHECK(false, "mishbench: unknown GEMM epilogue ", num(static_cast<int>(p.epilogue)));
}

}  // namespace

void launch_gemm_simt(const GemmParams& p, c10::ScalarType dtype, cudaStream_t stream) {
  TORCH_CHECK(p.M >= 1 && p.N >= 1 && p.K >= 1, "mishbench: SIMT GEMM needs M, N, K >= 1, got ", num(p.M),
              ", ", num(p.N), ", ", num(p.K));
  switch (dtype) {
    case c10::ScalarType::Float:
      launch_epilogue<float>(p, stream);
      return;
    case c10::ScalarType::Double:
      launch_epilogue<double>(p, stream);
      return;
    case c10::ScalarType::Half:
      launch_epilogue<c10::Half>(p, stream);
      return;
    case c10::ScalarType::BFloat16:
      launch_epilogue<c10::BFloat16>(p, stream);
      return;
    default:
      TORCH_CHECK(false, "mishbench: SIMT GEMM supports float32, float64, float16 and bfloat16, got ", dtype);
  }
}

}  // namespace mishbench
