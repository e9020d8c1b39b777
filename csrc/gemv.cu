// Forward for few batch rows (M <= 16): a memory-bound GEMV-like kernel, plus the split reduction that
// every skinny route shares (skinny.h has the contract and the plans).
//
// Why: at M = 1, K = N = 8192 the tile kernels launch N/128 = 64 blocks (half of an H200's 132 SMs idle)
// and each block walks all of K alone: 359 µs against eager's 122 µs, while reading W once at the 4.0 TB/s
// copy rate takes 67 µs. Here W is streamed once, 16 bytes per lane per load, by every SM:
//   - a block is 8 warps; warp w owns R consecutive rows of W (output features); the lanes stride over K
//     in 16-byte vectors, so a warp reads R x 512 contiguous bytes per step, U steps in flight;
//   - x's M rows are staged in shared memory one K-chunk at a time (32 KB: 512 fp32 elements of each of 16
//     rows, 8192 of one row) and read as 16-byte vectors in the same lane order as W;
//   - each lane keeps R x MB fp32 (fp64) accumulators over its share of K -- K / 32 / V products in one
//     chain, 256 at K = 8192 in fp32 -- and a 5-level butterfly over the warp sums the lanes: a blocked/tree
//     reduction, not one FMA chain over all of K (such a chain erred 1.4e-6 against a 1.26e-6 bar);
//   - when the row blocks alone do not give every SM a block (N small, K large), K is split too and the
//     slices' partial sums go through the workspace to launch_split_reduce, which adds them in a fixed order.
// Accumulation is fp32 for fp32, fp16 and bf16 (this also serves the ieee, 3xtf32 and tf32 modes: plain FMA
// is at least as accurate as each, and the kernel is memory-bound anyway) and fp64 for fp64.
#include "mish.cuh"
#include "msg.h"
#include "skinny.cuh"
#include "skinny.h"

#include <c10/cuda/CUDAException.h>

#include <climits>

namespace mishbench {
namespace skinny {
namespace {

template <typename T, int MB>
__global__ void __launch_bounds__(kGemvThreads)
    gemv_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias, T* __restrict__ y,
                T* __restrict__ z, typename Acc<T>::type* __restrict__ partial, int64_t M, int64_t N, int64_t K,
                int64_t slice, bool vec) {
  using A = typename Acc<T>::type;
  constexpr int V = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte vector
  constexpr int R = gemv_rows_per_warp(MB);
  constexpr int U = MB >= 8 ? 1 : 2;  // vectors per lane in flight: with few batch rows the FMAs cannot hide
                                      // the loads' latency, so two steps are loaded before either is used
  constexpr int KC = kGemvXSmemBytes / (MB * static_cast<int>(sizeof(T)));
  static_assert(KC % V == 0, "x chunks are whole vectors");
  __shared__ __align__(16) T xs[MB][KC];

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * (8 * R) + warp * R;
  const int64_t k_begin = static_cast<int64_t>(blockIdx.y) * slice;
  const int64_t k_end = min(K, k_begin + slice);

  const T* wrow[R];
  bool rok[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    rok[r] = n0 + r < N;
    wrow[r] = w + (rok[r] ? n0 + r : 0) * K;  // out-of-range rows point at row 0 and are never read
  }
  A acc[R][MB];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int m = 0; m < MB; ++m) acc[r][m] = A(0);

  for (int64_t c0 = k_begin; c0 < k_end; c0 += KC) {
    // With `vec`, K % V == 0 and slices and chunks start at multiples of V, so len is whole vectors.
    const int len = static_cast<int>(min(static_cast<int64_t>(KC), k_end - c0));
    __syncthreads();  // the previous chunk has been read by every warp
    if (vec) {
      const int nv = len / V;
      for (int i = threadIdx.x; i < MB * nv; i += kGemvThreads) {
        const int m = i / nv, v = i - m * nv;
        Vec<T, V> val;
        if (m < M) {
          val = *reinterpret_cast<const Vec<T, V>*>(x + m * K + c0 + v * V);
        } else {
#pragma unroll
          for (int e = 0; e < V; ++e) val.v[e] = T(0);  // rows past M: zeros (their sums are never stored)
        }
        *reinterpret_cast<Vec<T, V>*>(&xs[m][v * V]) = val;
      }
    } else {
      for (int i = threadIdx.x; i < MB * len; i += kGemvThreads) {
        const int m = i / len, j = i - m * len;
        xs[m][j] = m < M ? x[m * K + c0 + j] : T(0);
      }
    }
    __syncthreads();

    if (vec) {
      const int nv = len / V;
      for (int v0 = lane; v0 < nv; v0 += 32 * U) {
        A wv[U][R][V];
#pragma unroll
        for (int u = 0; u < U; ++u)
#pragma unroll
          for (int r = 0; r < R; ++r)
            load_vec<T, V, A>(wrow[r], c0 + static_cast<int64_t>(v0 + 32 * u) * V, k_end,
                              rok[r] && v0 + 32 * u < nv, true, wv[u][r]);
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int v = v0 + 32 * u;
          if (v >= nv) break;
#pragma unroll
          for (int m = 0; m < MB; ++m) {
            const Vec<T, V> xv = *reinterpret_cast<const Vec<T, V>*>(&xs[m][v * V]);
#pragma unroll
            for (int e = 0; e < V; ++e) {
              const A xe = static_cast<A>(xv.v[e]);
#pragma unroll
              for (int r = 0; r < R; ++r) acc[r][m] = fma(wv[u][r][e], xe, acc[r][m]);
            }
          }
        }
      }
    } else {
      // Misaligned x or W, or K not a multiple of V: scalar loads, consecutive lanes on consecutive k.
      for (int j = lane; j < len; j += 32) {
        A wr[R];
#pragma unroll
        for (int r = 0; r < R; ++r) wr[r] = rok[r] ? static_cast<A>(wrow[r][c0 + j]) : A(0);
#pragma unroll
        for (int m = 0; m < MB; ++m) {
          const A xe = static_cast<A>(xs[m][j]);
#pragma unroll
          for (int r = 0; r < R; ++r) acc[r][m] = fma(wr[r], xe, acc[r][m]);
        }
      }
    }
  }

  // Butterfly over the warp: every lane ends with the same sum (each step adds the same two values in
  // either order, and IEEE addition commutes), so any lane may store it.
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int m = 0; m < MB; ++m)
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) acc[r][m] += __shfl_xor_sync(0xffffffffu, acc[r][m], off);

  // The R x MB results are spread over the lanes for the stores (indices stay compile-time constants).
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int m = 0; m < MB; ++m) {
      if (lane != (r * MB + m) % 32 || !rok[r] || m >= M) continue;
      const int64_t n = n0 + r;
      const A s = acc[r][m];
      if (partial != nullptr) {
        partial[(static_cast<int64_t>(blockIdx.y) * M + m) * N + n] = s;
      } else {
        const A v = s + static_cast<A>(bias[n]);
        if (z != nullptr) z[m * N + n] = static_cast<T>(v);
        y[m * N + n] = static_cast<T>(mish(mish(v)));
      }
    }
  }
}

// Sum of the slices in slice order, then (with bias) the forward epilogue; one rounding to T per store.
template <typename T>
__global__ void __launch_bounds__(256)
    split_reduce_kernel(const typename Acc<T>::type* __restrict__ part, int64_t splits, int64_t rows, int64_t cols,
                        const T* __restrict__ bias, T* __restrict__ out, T* __restrict__ z) {
  using A = typename Acc<T>::type;
  const int64_t total = rows * cols;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    A s = part[i];
    for (int64_t j = 1; j < splits; ++j) s += part[j * total + i];  // coalesced across threads
    if (bias != nullptr) {
      s += static_cast<A>(bias[i % cols]);
      if (z != nullptr) z[i] = static_cast<T>(s);
      s = mish(mish(s));
    }
    out[i] = static_cast<T>(s);
  }
}

template <typename T>
void split_reduce_typed(const void* partial, int64_t splits, int64_t rows, int64_t cols, const void* bias, void* out,
                        void* z, cudaStream_t stream) {
  // Grid-stride: enough blocks to fill any current GPU several times over.
  const int64_t blocks = std::min<int64_t>(ceil_div(rows * cols, 256), 4096);
  split_reduce_kernel<T><<<dim3(static_cast<unsigned>(blocks)), dim3(256), 0, stream>>>(
      static_cast<const typename Acc<T>::type*>(partial), splits, rows, cols, static_cast<const T*>(bias),
      static_cast<T*>(out), static_cast<T*>(z));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int MB>
void gemv_launch(const void* x, const void* w, const void* bias, void* y, void* z, void* partial, int64_t M, int64_t N,
                 int64_t K, const GemvPlan& plan, bool vec, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  const dim3 grid(static_cast<unsigned>(plan.row_blocks), static_cast<unsigned>(plan.k.splits));
  gemv_kernel<T, MB><<<grid, dim3(kGemvThreads), 0, stream>>>(
      static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(bias), static_cast<T*>(y),
      static_cast<T*>(z), plan.k.splits > 1 ? static_cast<A*>(partial) : nullptr, M, N, K, plan.k.slice, vec);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void gemv_typed(const void* x, const void* w, const void* bias, void* y, void* z, void* partial, int64_t M, int64_t N,
                int64_t K, const GemvPlan& plan, cudaStream_t stream) {
  constexpr int V = 16 / static_cast<int>(sizeof(T));
  const bool vec = vec_ok<T, V>(x, K) && vec_ok<T, V>(w, K);
  switch (plan.mb) {
    case 1:
      gemv_launch<T, 1>(x, w, bias, y, z, partial, M, N, K, plan, vec, stream);
      break;
    case 2:
      gemv_launch<T, 2>(x, w, bias, y, z, partial, M, N, K, plan, vec, stream);
      break;
    case 4:
      gemv_launch<T, 4>(x, w, bias, y, z, partial, M, N, K, plan, vec, stream);
      break;
    case 8:
      gemv_launch<T, 8>(x, w, bias, y, z, partial, M, N, K, plan, vec, stream);
      break;
    default:
      gemv_launch<T, 16>(x, w, bias, y, z, partial, M, N, K, plan, vec, stream);
      break;
  }
  if (plan.k.splits > 1) split_reduce_typed<T>(partial, plan.k.splits, M, N, bias, y, z, stream);
}

}  // namespace

void launch_split_reduce(const void* partial, int64_t splits, int64_t rows, int64_t cols, const void* bias,
                         void* out, void* z, c10::ScalarType dtype, cudaStream_t stream) {
  TORCH_CHECK(splits >= 1 && rows >= 1 && cols >= 1 && partial != nullptr,
              "mishbench: split reduction needs splits, rows, cols >= 1 and a workspace, got ", num(splits), ", ",
              num(rows), ", ", num(cols));
  TORCH_CHECK(z == nullptr || bias != nullptr, "mishbench: split reduction stores z only with the bias epilogue");
  MISHBENCH_SKINNY_DTYPE_SWITCH(dtype, "split reduction", T,
                                split_reduce_typed<T>(partial, splits, rows, cols, bias, out, z, stream));
}

void launch_gemv(const void* x, const void* w, const void* bias, void* y, void* z, void* partial, int64_t M,
                 int64_t N, int64_t K, const GemvPlan& plan, c10::ScalarType dtype, cudaStream_t stream) {
  TORCH_CHECK(M >= 1 && M <= kGemvMaxM && N >= 1 && K >= 1, "mishbench: gemv needs 1 <= M <= ", num(kGemvMaxM),
              " and N, K >= 1, got M=", num(M), " N=", num(N), " K=", num(K));
  TORCH_CHECK(plan.mb == gemv_bucket(M) && plan.row_blocks >= 1 && plan.row_blocks <= INT_MAX,
              "mishbench: gemv plan does not fit M=", num(M), " (bucket ", num(plan.mb), ", ", num(plan.row_blocks),
              " row blocks)");
  TORCH_CHECK(plan.k.splits >= 1 && plan.k.splits <= kMaxSplits && plan.k.slice >= 1 &&
                  plan.k.splits * plan.k.slice >= K && (plan.k.splits == 1 || plan.k.slice % 256 == 0),
              "mishbench: gemv K split of ", num(plan.k.splits), " x ", num(plan.k.slice), " does not cover K=",
              num(K));
  TORCH_CHECK(plan.k.splits == 1 || partial != nullptr, "mishbench: a K-split gemv needs a workspace");
  TORCH_CHECK(bias != nullptr && y != nullptr, "mishbench: gemv needs bias and y");
  MISHBENCH_SKINNY_DTYPE_SWITCH(dtype, "gemv", T, gemv_typed<T>(x, w, bias, y, z, partial, M, N, K, plan, stream));
}

}  // namespace skinny
}  // namespace mishbench
