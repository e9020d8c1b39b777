// Forward for problems with few output tiles (fp32 in every fp32 mode, and fp64): split-K with plain FMA.
//
// Why: at 32..64 rows and K = N = 8192 the tile kernels have ceil(M/128) x N/128 = 64 tiles for 132 SMs,
// each walking all of K alone (32 x 8192 x 8192 in 3xtf32: 0.80x eager in the sweep). Here a block owns a
// 32 (batch rows) x 128 (rows of W) tile and one K-slice; the slices are chosen so that the grid holds about
// two blocks per SM (skinny.h, splitk_plan), and each slice's fp32 (fp64) partial tile goes to the
// workspace. launch_split_reduce then adds the slices in slice order -- no atomics, the same bits on every
// run -- and applies bias + Mish∘Mish, storing z too when asked.
//
// The tile is the SIMT kernel's register-blocked design (gemm_simt.cu) narrowed for skinny M: 256 threads,
// each a 4 x 4 sub-tile; A (x) and B (W) k-slices of depth 16 through double-buffered shared memory, the
// next slice fetched into registers while the current one is multiplied. The m-tiles of one W tile are
// consecutive block indices, so they run side by side and W comes from DRAM about once.
//
// Accuracy: each k-tile's 16 products are summed into a fresh register and only then added to the running
// sum (as the 3xtf32 kernels promote their tensor-core partial sums), so no FMA chain is longer than 16 and
// the running sums see slice/16 additions: far below eager's error, which a single chain over K = 8192 is not.
#include "msg.h"
#include "skinny.cuh"
#include "skinny.h"

#include <c10/cuda/CUDAException.h>

#include <climits>
#include <type_traits>

namespace mishbench {
namespace skinny {
namespace {

constexpr int BM = kSplitKBM, BN = kSplitKBN, BK = kSplitKBK;
constexpr int TM = 4, TN = 4;
static_assert((BM / TM) * (BN / TN) == kSplitKThreads, "one 4 x 4 sub-tile per thread");
static_assert(BM * BK == 2 * kSplitKThreads && BN * BK == 8 * kSplitKThreads, "loader: 2 + 8 elements per thread");

// T is float or double (half types are routed elsewhere: the tensor-core kernels beat FMA for them).
// Two blocks per SM for fp32: without the hint ptxas (CUDA 13, sm_90a) settled on 80 registers and spilled
// 16 bytes; with it, 119 and none. fp64 needs its ~130.
template <typename T>
__global__ void __launch_bounds__(kSplitKThreads, std::is_same<T, double>::value ? 1 : 2)
    splitk_kernel(const T* __restrict__ A, const T* __restrict__ B, T* __restrict__ partial, int64_t M, int64_t N,
                  int64_t K, int64_t slice, int64_t tiles_m, bool vec) {
  // +4 padding: the transposed stores of a thread's 4 k values spread over more banks; rows stay aligned
  // for the 4-wide shared-memory reads (36 and 132 elements: multiples of 16 bytes in fp32, 32 in fp64).
  __shared__ __align__(32) T As[2][BK][BM + 4];
  __shared__ __align__(32) T Bs[2][BK][BN + 4];

  const int64_t tile = blockIdx.x;
  const int64_t m0 = (tile % tiles_m) * BM;
  const int64_t n0 = (tile / tiles_m) * BN;
  const int64_t k_begin = static_cast<int64_t>(blockIdx.y) * slice;
  const int64_t k_end = min(K, k_begin + slice);
  const int tid = threadIdx.x;

  // Loader: K-group (4 wide) lk of tile row lr; A: threads 0..127 one group each, B: every thread two groups
  // (rows lr and lr + 64).
  const int lr = tid >> 2;
  const int lk = (tid & 3) * 4;
  const bool a_thread = tid < BM * BK / 4;
  const bool a_ok = a_thread && m0 + lr < M;
  const bool b_ok0 = n0 + lr < N, b_ok1 = n0 + lr + 64 < N;
  const T* a_row = A + (a_ok ? m0 + lr : 0) * K;
  const T* b_row0 = B + (b_ok0 ? n0 + lr : 0) * K;
  const T* b_row1 = B + (b_ok1 ? n0 + lr + 64 : 0) * K;

  T ra[4], rb0[4], rb1[4];
  auto fetch = [&](int64_t k0) {
    load_vec<T, 4, T>(a_row, k0 + lk, k_end, a_ok, vec, ra);
    load_vec<T, 4, T>(b_row0, k0 + lk, k_end, b_ok0, vec, rb0);
    load_vec<T, 4, T>(b_row1, k0 + lk, k_end, b_ok1, vec, rb1);
  };
  auto stash = [&](int buf) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      if (a_thread) As[buf][lk + i][lr] = ra[i];
      Bs[buf][lk + i][lr] = rb0[i];
      Bs[buf][lk + i][lr + 64] = rb1[i];
    }
  };

  // Compute mapping: warp w = rows 4w..4w+3 (so a warp reads one broadcast A vector), lane = columns 4l...
  const int tx = tid & 31;
  const int ty = tid >> 5;
  T acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = T(0);

  const int64_t nk = (k_end - k_begin + BK - 1) / BK;
  fetch(k_begin);
  stash(0);
  __syncthreads();
  for (int64_t kt = 0; kt < nk; ++kt) {
    const int cur = static_cast<int>(kt & 1);
    const bool more = kt + 1 < nk;
    if (more) fetch(k_begin + (kt + 1) * BK);  // in flight while this k-tile is multiplied
    T part[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) part[i][j] = T(0);
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      const Vec<T, 4> a = *reinterpret_cast<const Vec<T, 4>*>(&As[cur][kk][ty * TM]);
      const Vec<T, 4> b = *reinterpret_cast<const Vec<T, 4>*>(&Bs[cur][kk][tx * TN]);
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) part[i][j] = fma(a.v[i], b.v[j], part[i][j]);
    }
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] += part[i][j];
    // The other buffer was last read in iteration kt - 1, which ended with a barrier: safe to overwrite.
    if (more) stash(cur ^ 1);
    __syncthreads();
  }

  // This slice's partial tile: workspace rows (blockIdx.y, m), N wide; 4-wide stores where N allows.
  const bool vec_out = N % 4 == 0;
  T* out = partial + static_cast<int64_t>(blockIdx.y) * M * N;
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t m = m0 + ty * TM + i;
    if (m >= M) break;
    store_vec<T, 4, T>(out + m * N, n0 + tx * TN, N, vec_out, acc[i]);
  }
}

template <typename T>
void splitk_typed(const void* x, const void* w, const void* bias, void* y, void* z, void* partial, int64_t M,
                  int64_t N, int64_t K, const SplitKPlan& plan, cudaStream_t stream) {
  const bool vec = vec_ok<T, 4>(x, K) && vec_ok<T, 4>(w, K);
  const dim3 grid(static_cast<unsigned>(plan.tiles_m * plan.tiles_n), static_cast<unsigned>(plan.k.splits));
  splitk_kernel<T><<<grid, dim3(kSplitKThreads), 0, stream>>>(static_cast<const T*>(x), static_cast<const T*>(w),
                                                             static_cast<T*>(partial), M, N, K, plan.k.slice,
                                                             plan.tiles_m, vec);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  launch_split_reduce(partial, plan.k.splits, M, N, bias, y, z,
                      std::is_same<T, double>::value ? c10::ScalarType::Double : c10::ScalarType::Float, stream);
}

}  // namespace

void launch_splitk(const void* x, const void* w, const void* bias, void* y, void* z, void* partial, int64_t M,
                   int64_t N, int64_t K, const SplitKPlan& plan, c10::ScalarType dtype, cudaStream_t stream) {
  TORCH_CHECK(M >= 1 && N >= 1 && K >= 1, "mishbench: split-K needs M, N, K >= 1, got ", num(M), ", ", num(N),
              ", ", num(K));
  TORCH_CHECK(plan.tiles_m == ceil_div(M, kSplitKBM) && plan.tiles_n == ceil_div(N, kSplitKBN) &&
                  plan.tiles_m * plan.tiles_n <= INT_MAX,
              "mishbench: split-K plan does not fit ", num(M), "x", num(N), " (", num(plan.tiles_m), " x ",
              num(plan.tiles_n), " tiles)");
  TORCH_CHECK(plan.k.splits >= 2 && plan.k.splits <= kMaxSplits && plan.k.slice % kSplitKBK == 0 &&
                  plan.k.splits * plan.k.slice >= K && (plan.k.splits - 1) * plan.k.slice < K,
              "mishbench: split-K needs 2..", num(kMaxSplits), " non-empty slices, multiples of ", num(kSplitKBK),
              ", covering K=", num(K), "; got ", num(plan.k.splits), " x ", num(plan.k.slice));
  TORCH_CHECK(partial != nullptr && bias != nullptr && y != nullptr, "mishbench: split-K needs a workspace, bias and y");
  switch (dtype) {
    case c10::ScalarType::Float:
      return splitk_typed<float>(x, w, bias, y, z, partial, M, N, K, plan, stream);
    case c10::ScalarType::Double:
      return splitk_typed<double>(x, w, bias, y, z, partial, M, N, K, plan, stream);
    default:
      TORCH_CHECK(false, "mishbench: split-K supports float32 and float64 (half types take the tensor-core "
                  "kernels), got ", dtype);
  }
}

}  // namespace skinny
}  // namespace mishbench
