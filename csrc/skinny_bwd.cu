// Backward for few batch rows (M <= 16): dx = dz·W and dW = dzᵀ·x without the GEMM route's transposes.
// dz (M, N) and db come from the fused dz pass (elementwise.cu, launch_mish_mish_bwd); skinny.h has the plans.
//
// Both products are memory-bound at these shapes: dx reads W once (N x K), dW writes N x K once, and each
// has only 2·M FLOPs per element of W. The GEMM route instead copies Wᵀ and xᵀ (another read and write of W)
// and runs tile kernels whose grids are as skinny as the forward's were.
//   dx: a thread owns 4 consecutive columns k of W and walks the rows n of its slice, 4 rows in flight,
//       accumulating dz[m, n] · W[n, k..k+3] for every m into M x 4 registers: a warp reads 512 contiguous
//       bytes (fp32) of a row per step; dz[m, n] is one broadcast load per warp. N is split into slices when
//       the column blocks alone leave SMs idle; the slices go through the workspace and launch_split_reduce
//       adds them in slice order. Each chain is one slice long (~500 at N = 8192 on 132 SMs).
//   dW: an outer-product-shaped GEMM with inner size M, so the work is tiled over N x K, never over M: a
//       thread holds x[0..M, k..k+3] in registers and, for each row n of its block, writes
//       dW[n, k..k+3] = sum over m of dz[m, n] · x[m, k..k+3] (m in order), one 16-byte store (fp32).
// Accumulation in fp32 (fp64 for double); dz is the dtype-rounded value the dz pass stored, as on the GEMM
// route; each output rounds once.
#include "msg.h"
#include "skinny.cuh"
#include "skinny.h"

#include <c10/cuda/CUDAException.h>

#include <climits>

namespace mishbench {
namespace skinny {
namespace {

template <typename T, int MB>
__global__ void __launch_bounds__(kDxThreads)
    dx_kernel(const T* __restrict__ dz, const T* __restrict__ w, T* __restrict__ dx,
              typename Acc<T>::type* __restrict__ partial, int64_t M, int64_t N, int64_t K, int64_t slice, bool vec_w,
              bool vec_out) {
  using A = typename Acc<T>::type;
  constexpr int U = 4;  // rows of W in flight per thread
  const int64_t k = (static_cast<int64_t>(blockIdx.x) * kDxThreads + threadIdx.x) * 4;
  if (k >= K) return;  // no barriers below
  const int64_t n_begin = static_cast<int64_t>(blockIdx.y) * slice;
  const int64_t n_end = min(N, n_begin + slice);

  A acc[MB][4];
#pragma unroll
  for (int m = 0; m < MB; ++m)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[m][e] = A(0);

  for (int64_t n = n_begin; n < n_end; n += U) {
    A wv[U][4];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const bool ok = n + u < n_end;
      load_vec<T, 4, A>(w + (ok ? n + u : 0) * K, k, K, ok, vec_w, wv[u]);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (n + u >= n_end) break;
#pragma unroll
      for (int m = 0; m < MB; ++m) {
        if (m >= M) break;
        const A d = static_cast<A>(dz[m * N + n + u]);
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[m][e] = fma(d, wv[u][e], acc[m][e]);
      }
    }
  }

#pragma unroll
  for (int m = 0; m < MB; ++m) {
    if (m >= M) break;
    if (partial != nullptr) {
      store_vec<A, 4, A>(partial + (static_cast<int64_t>(blockIdx.y) * M + m) * K, k, K, K % 4 == 0, acc[m]);
    } else {
      store_vec<T, 4, A>(dx + m * K, k, K, vec_out, acc[m]);
    }
  }
}

// Up to 4 batch rows: 4 blocks per SM (<= 64 registers). Without the hint ptxas (CUDA 13, sm_80) gave the
// fp64 one-row kernel 32 registers and spilled 12 bytes; larger buckets need more than 64 (fp64 x 16: 164).
template <typename T, int MB>
__global__ void __launch_bounds__(kDwThreads, MB <= 4 ? 4 : 1)
    dw_kernel(const T* __restrict__ dz, const T* __restrict__ x, T* __restrict__ dw, int64_t M, int64_t N, int64_t K,
              int64_t rows_per_block, bool vec_x, bool vec_out) {
  using A = typename Acc<T>::type;
  const int64_t k = (static_cast<int64_t>(blockIdx.x) * kDwThreads + threadIdx.x) * 4;
  if (k >= K) return;  // no barriers below
  A xr[MB][4];
#pragma unroll
  for (int m = 0; m < MB; ++m) load_vec<T, 4, A>(x + (m < M ? m : 0) * K, k, K, m < M, vec_x, xr[m]);

  const int64_t n_begin = static_cast<int64_t>(blockIdx.y) * rows_per_block;
  const int64_t n_end = min(N, n_begin + rows_per_block);
  for (int64_t n = n_begin; n < n_end; ++n) {
    A o[4] = {A(0), A(0), A(0), A(0)};
#pragma unroll
    for (int m = 0; m < MB; ++m) {
      if (m >= M) break;
      const A d = static_cast<A>(dz[m * N + n]);
#pragma unroll
      for (int e = 0; e < 4; ++e) o[e] = fma(d, xr[m][e], o[e]);
    }
    store_vec<T, 4, A>(dw + n * K, k, K, vec_out, o);
  }
}

// Runtime M -> the compiled bucket MB (1, 2, 4, 8, 16). Usage: MISHBENCH_MB_SWITCH(gemv_bucket(M), MB, f<T, MB>(...));
#define MISHBENCH_MB_SWITCH(bucket, MB, ...) \
  switch (bucket) {                          \
    case 1: {                                \
      constexpr int MB = 1;                  \
      __VA_ARGS__;                           \
      break;                                 \
    }                                        \
    case 2: {                                \
      constexpr int MB = 2;                  \
      __VA_ARGS__;                           \
      break;                                 \
    }                                        \
    case 4: {                                \
      constexpr int MB = 4;                  \
      __VA_ARGS__;                           \
      break;                                 \
    }                                        \
    case 8: {                                \
      constexpr int MB = 8;                  \
      __VA_ARGS__;                           \
      break;                                 \
    }                                        \
    default: {                               \
      constexpr int MB = 16;                 \
      __VA_ARGS__;                           \
      break;                                 \
    }                                        \
  }

template <typename T>
void dx_typed(const void* dz, const void* w, void* dx, void* partial, int64_t M, int64_t N, int64_t K,
              const Split& split, int64_t col_blocks, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  const bool vec_w = vec_ok<T, 4>(w, K), vec_out = vec_ok<T, 4>(dx, K);
  A* part = split.splits > 1 ? static_cast<A*>(partial) : nullptr;
  const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(split.splits));
  MISHBENCH_MB_SWITCH(gemv_bucket(M), MB,
                      dx_kernel<T, MB><<<grid, dim3(kDxThreads), 0, stream>>>(
                          static_cast<const T*>(dz), static_cast<const T*>(w), static_cast<T*>(dx), part, M, N, K,
                          split.slice, vec_w, vec_out);
                      C10_CUDA_KERNEL_LAUNCH_CHECK());
  if (part != nullptr) launch_split_reduce(part, split.splits, M, K, nullptr, dx, nullptr,
                                           c10::CppTypeToScalarType<T>::value, stream);
}

template <typename T>
void dw_typed(const void* dz, const void* x, void* dw, int64_t M, int64_t N, int64_t K, int64_t rows_per_block,
              cudaStream_t stream) {
  const bool vec_x = vec_ok<T, 4>(x, K), vec_out = vec_ok<T, 4>(dw, K);
  const dim3 grid(static_cast<unsigned>(ceil_div(K, 4 * kDwThreads)),
                  static_cast<unsigned>(ceil_div(N, rows_per_block)));
  MISHBENCH_MB_SWITCH(gemv_bucket(M), MB,
                      dw_kernel<T, MB><<<grid, dim3(kDwThreads), 0, stream>>>(
                          static_cast<const T*>(dz), static_cast<const T*>(x), static_cast<T*>(dw), M, N, K,
                          rows_per_block, vec_x, vec_out);
                      C10_CUDA_KERNEL_LAUNCH_CHECK());
}

}  // namespace

void launch_skinny_dx(const void* dz, const void* w, void* dx, void* partial, int64_t M, int64_t N, int64_t K,
                      const Split& split, int64_t col_blocks, c10::ScalarType dtype, cudaStream_t stream) {
  TORCH_CHECK(M >= 1 && M <= kGemvMaxM && N >= 1 && K >= 1, "mishbench: skinny dx needs 1 <= M <= ",
              num(kGemvMaxM), " and N, K >= 1, got M=", num(M), " N=", num(N), " K=", num(K));
  TORCH_CHECK(col_blocks == ceil_div(K, 4 * kDxThreads) && col_blocks <= INT_MAX,
              "mishbench: skinny dx needs ceil(K / ", num(4 * kDxThreads), ") column blocks, got ", num(col_blocks));
  TORCH_CHECK(split.splits >= 1 && split.splits <= kMaxSplits && split.slice >= 1 && split.splits * split.slice >= N &&
                  (split.splits - 1) * split.slice < N,
              "mishbench: skinny dx split of ", num(split.splits), " x ", num(split.slice), " does not cover N=",
              num(N));
  TORCH_CHECK(split.splits == 1 || partial != nullptr, "mishbench: a split skinny dx needs a workspace");
  MISHBENCH_SKINNY_DTYPE_SWITCH(dtype, "skinny dx", T,
                                dx_typed<T>(dz, w, dx, partial, M, N, K, split, col_blocks, stream));
}

void launch_skinny_dw(const void* dz, const void* x, void* dw, int64_t M, int64_t N, int64_t K,
                      int64_t rows_per_block, c10::ScalarType dtype, cudaStream_t stream) {
  TORCH_CHECK(M >= 1 && M <= kGemvMaxM && N >= 1 && K >= 1, "mishbench: skinny dW needs 1 <= M <= ",
              num(kGemvMaxM), " and N, K >= 1, got M=", num(M), " N=", num(N), " K=", num(K));
  TORCH_CHECK(rows_per_block >= 1 && ceil_div(N, rows_per_block) <= 65535 && ceil_div(K, 4 * kDwThreads) <= INT_MAX,
              "mishbench: skinny dW grid of ", num(ceil_div(N, rows_per_block)), " row blocks (", num(rows_per_block),
              " rows each) does not fit gridDim.y");
  MISHBENCH_SKINNY_DTYPE_SWITCH(dtype, "skinny dW", T, dw_typed<T>(dz, x, dw, M, N, K, rows_per_block, stream));
}

}  // namespace skinny
}  // namespace mishbench
