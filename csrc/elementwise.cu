// Backward prologue: dz = dy * mish'(mish(z)) * mish'(z), written as dz (M x N) and dzᵀ (N x M), plus the
// bias gradient db = sum over rows of dz.
//
// One pass over dy and z produces everything the two backward GEMMs need in their "TN" form (gemm.h):
// dx = dz · W uses dz as is, dW = dzᵀ · x uses dzᵀ, so the transpose is done here through a 32x33 shared
// tile (coalesced reads and coalesced writes both ways) instead of by a separate kernel.
// db is deterministic: no float atomics. Each block sums its columns over its row chunk in a fixed order
// into partial[chunk][n] (fp32 for half types, fp64 for double); a second tiny kernel adds the chunks of
// each column in order and rounds once to the dtype.
#include "mish.cuh"
#include "msg.h"

#include <c10/core/ScalarType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>

namespace mishbench {
namespace {

template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };

constexpr int kTile = 32;        // tile edge (one warp wide)
constexpr int kRowsPerPass = 8;  // blockDim.y: a 32x8 block walks a 32x32 tile in 4 passes
constexpr int kChunkRows = 256;  // rows per block: 8 tiles, so partial has ceil(M/256) rows

template <typename T>
__global__ void __launch_bounds__(kTile * kRowsPerPass)
    mish_mish_bwd_kernel(const T* __restrict__ dy, const T* __restrict__ z, T* __restrict__ dz,
                         T* __restrict__ dzt, typename AccType<T>::type* __restrict__ partial, int64_t M,
                         int64_t N, int64_t tiles_n) {
  using Acc = typename AccType<T>::type;
  __shared__ T tile[kTile][kTile + 1];  // +1: column reads hit 32 different banks
  __shared__ Acc colsum_s[kRowsPerPass][kTile];

  const int64_t chunk = blockIdx.x / tiles_n;
  const int64_t n0 = (blockIdx.x % tiles_n) * kTile;
  const int64_t r0 = chunk * kChunkRows;
  const int tx = threadIdx.x, ty = threadIdx.y;

  Acc colsum = Acc(0);  // column n0 + tx, over the rows this thread visits, in a fixed order
  for (int rt = 0; rt < kChunkRows / kTile; ++rt) {
    const int64_t mbase = r0 + rt * kTile;
    if (mbase >= M) break;  // uniform across the block, so the barriers below stay matched
#pragma unroll
    for (int i = 0; i < kTile; i += kRowsPerPass) {
      const int64_t m = mbase + ty + i;
      const int64_t n = n0 + tx;
      if (m < M && n < N) {
        const int64_t idx = m * N + n;
        const Acc zz = static_cast<Acc>(z[idx]);
        Acc y1, d1;
        mish_and_grad(zz, y1, d1);
        const Acc v = static_cast<Acc>(dy[idx]) * mish_grad(y1) * d1;
        colsum += v;
        const T vt = static_cast<T>(v);
        if (dz != nullptr) dz[idx] = vt;
        tile[ty + i][tx] = vt;
      }
    }
    if (dzt != nullptr) {
      __syncthreads();
#pragma unroll
      for (int i = 0; i < kTile; i += kRowsPerPass) {
        const int64_t n = n0 + ty + i;
        const int64_t m = mbase + tx;
        if (n < N && m < M) dzt[n * M + m] = tile[tx][ty + i];
      }
      __syncthreads();  // the tile is rewritten by the next row tile
    }
  }

  if (partial != nullptr) {
    colsum_s[ty][tx] = colsum;
    __syncthreads();
    if (ty == 0) {
      const int64_t n = n0 + tx;
      Acc s = Acc(0);
#pragma unroll
      for (int j = 0; j < kRowsPerPass; ++j) s += colsum_s[j][tx];
      if (n < N) partial[chunk * N + n] = s;
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(256)
    column_sum_kernel(const typename AccType<T>::type* __restrict__ partial, T* __restrict__ out,
                      int64_t chunks, int64_t N) {
  using Acc = typename AccType<T>::type;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  Acc s = Acc(0);
  for (int64_t c = 0; c < chunks; ++c) s += partial[c * N + n];  // coalesced across threads
  out[n] = static_cast<T>(s);
}

// y = mish(mish(z)) elementwise: the epilogue of the cuBLAS route (ieee mode at large shapes, where
// cuBLAS's SGEMM is what eager runs too). Memory-bound: one read, one write, a grid-stride loop.
template <typename T>
__global__ void __launch_bounds__(256) mish_mish_fwd_kernel(const T* __restrict__ z, T* __restrict__ y, int64_t n) {
  using Acc = typename AccType<T>::type;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    y[i] = static_cast<T>(mish(mish(static_cast<Acc>(z[i]))));
  }
}

template <typename T>
void launch_fwd_typed(const void* z, void* y, int64_t n, cudaStream_t stream) {
  // Enough blocks to fill any current GPU several times over; the loop strides past that.
  const int64_t blocks = std::min<int64_t>((n + 255) / 256, 132 * 16);
  mish_mish_fwd_kernel<T><<<dim3(static_cast<unsigned>(blocks)), dim3(256), 0, stream>>>(
      static_cast<const T*>(z), static_cast<T*>(y), n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_typed(const void* dy, const void* z, void* dz, void* dzt, void* db, void* partial, int64_t M,
                  int64_t N, cudaStream_t stream) {
  using Acc = typename AccType<T>::type;
  const int64_t tiles_n = (N + kTile - 1) / kTile;
  const int64_t chunks = (M + kChunkRows - 1) / kChunkRows;
  const int64_t blocks = tiles_n * chunks;
  TORCH_CHECK(blocks <= INT_MAX, "mishbench: backward of ", num(M), "x", num(N), " needs ", num(blocks),
              " blocks, more than one grid can hold");
  Acc* part = db != nullptr ? static_cast<Acc*>(partial) : nullptr;
  TORCH_CHECK(db == nullptr || part != nullptr, "mishbench: db needs a partial-sum workspace");
  mish_mish_bwd_kernel<T><<<dim3(static_cast<unsigned>(blocks)), dim3(kTile, kRowsPerPass), 0, stream>>>(
      static_cast<const T*>(dy), static_cast<const T*>(z), static_cast<T*>(dz), static_cast<T*>(dzt), part, M,
      N, tiles_n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (db != nullptr) {
    const int64_t grid = (N + 255) / 256;
    TORCH_CHECK(grid <= INT_MAX, "mishbench: db of size ", num(N), " is too large for one grid");
    column_sum_kernel<T><<<dim3(static_cast<unsigned>(grid)), dim3(256), 0, stream>>>(part, static_cast<T*>(db),
                                                                                    chunks, N);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// The whole backward of a launch-bound problem in one block (host: launch_small_bwd). dz (unrounded, in the
// accumulator type) goes to shared memory once; then each thread owns output elements of dx (M x K), dW
// (N x K) and db (N), in that order, and reduces over n or m in a fixed order. dx and dW multiply the
// dtype-rounded dz, as the GEMM route does (it stores dz in the dtype); db sums the unrounded values, as
// mish_mish_bwd_kernel does. At 128x10x20 the GEMM route is 6 launches and 8 allocations (dz, dzᵀ, the db
// partials, Wᵀ, xᵀ and the three gradients); this is one launch and the three gradients.
constexpr int kSmallThreads = 1024;
constexpr int64_t kSmallMaxDz = 4096;    // M·N: 16 KB of shared memory in fp32, 32 KB in fp64
constexpr int64_t kSmallMaxOut = 16384;  // dx + dW + db elements: at most 16 per thread
constexpr int64_t kSmallMaxWork = int64_t(1) << 20;  // M·N·K multiply-adds per GEMM

template <typename T>
__global__ void __launch_bounds__(kSmallThreads)
    small_bwd_kernel(const T* __restrict__ dy, const T* __restrict__ z, const T* __restrict__ x,
                     const T* __restrict__ w, T* __restrict__ dx, T* __restrict__ dw, T* __restrict__ db, int64_t M,
                     int64_t N, int64_t K) {
  using Acc = typename AccType<T>::type;
  __shared__ Acc dz_s[kSmallMaxDz];
  const int64_t MN = M * N;
  for (int64_t i = threadIdx.x; i < MN; i += blockDim.x) {
    Acc y1, d1;
    mish_and_grad(static_cast<Acc>(z[i]), y1, d1);
    dz_s[i] = static_cast<Acc>(dy[i]) * mish_grad(y1) * d1;
  }
  __syncthreads();
  auto rounded = [](Acc v) { return static_cast<Acc>(static_cast<T>(v)); };
  const int64_t n_dx = dx != nullptr ? M * K : 0;
  const int64_t n_dw = dw != nullptr ? N * K : 0;
  const int64_t total = n_dx + n_dw + (db != nullptr ? N : 0);
  for (int64_t t = threadIdx.x; t < total; t += blockDim.x) {
    Acc s = Acc(0);
    if (t < n_dx) {  // dx[m, k] = sum_n dz[m, n] W[n, k]
      const int64_t m = t / K, k = t - (t / K) * K;
      for (int64_t n = 0; n < N; ++n) s += rounded(dz_s[m * N + n]) * static_cast<Acc>(w[n * K + k]);
      dx[t] = static_cast<T>(s);
    } else if (t < n_dx + n_dw) {  // dW[n, k] = sum_m dz[m, n] x[m, k]
      const int64_t u = t - n_dx;
      const int64_t n = u / K, k = u - (u / K) * K;
      for (int64_t m = 0; m < M; ++m) s += rounded(dz_s[m * N + n]) * static_cast<Acc>(x[m * K + k]);
      dw[u] = static_cast<T>(s);
    } else {  // db[n] = sum_m dz[m, n]
      const int64_t n = t - n_dx - n_dw;
      for (int64_t m = 0; m < M; ++m) s += dz_s[m * N + n];
      db[n] = static_cast<T>(s);
    }
  }
}

template <typename T>
void launch_small_typed(const void* dy, const void* z, const void* x, const void* w, void* dx, void* dw, void* db,
                        int64_t M, int64_t N, int64_t K, cudaStream_t stream) {
  small_bwd_kernel<T><<<1, kSmallThreads, 0, stream>>>(
      static_cast<const T*>(dy), static_cast<const T*>(z), static_cast<const T*>(x), static_cast<const T*>(w),
      static_cast<T*>(dx), static_cast<T*>(dw), static_cast<T*>(db), M, N, K);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

bool small_bwd_fits(int64_t M, int64_t N, int64_t K) {
  return M >= 1 && N >= 1 && K >= 0 && M * N <= kSmallMaxDz && M * K + N * K + N <= kSmallMaxOut &&
         M * N * K <= kSmallMaxWork;
}

// One launch for the whole backward of a small problem (small_bwd_fits): dy, z (M, N), x (M, K), w (N, K) all
// contiguous; dx (M, K), dw (N, K), db (N) written where non-null.
void launch_small_bwd(const void* dy, const void* z, const void* x, const void* w, void* dx, void* dw, void* db,
                      int64_t M, int64_t N, int64_t K, c10::ScalarType dtype, cudaStream_t stream) {
  TORCH_CHECK(small_bwd_fits(M, N, K), "mishbench: launch_small_bwd called for ", num(M), "x", num(N), "x",
              num(K), ", which small_bwd_fits rejects");
  switch (dtype) {
    case c10::ScalarType::Float:
      return launch_small_typed<float>(dy, z, x, w, dx, dw, db, M, N, K, stream);
    case c10::ScalarType::Double:
      return launch_small_typed<double>(dy, z, x, w, dx, dw, db, M, N, K, stream);
    case c10::ScalarType::Half:
      return launch_small_typed<c10::Half>(dy, z, x, w, dx, dw, db, M, N, K, stream);
    case c10::ScalarType::BFloat16:
      return launch_small_typed<c10::BFloat16>(dy, z, x, w, dx, dw, db, M, N, K, stream);
    default:
      TORCH_CHECK(false, "mishbench: backward supports float32, float64, float16 and bfloat16, got ", dtype);
  }
}

// y = mish(mish(z)) over n contiguous elements (y may equal z: each element is read before it is written).
void launch_mish_mish_fwd(const void* z, void* y, int64_t n, c10::ScalarType dtype, cudaStream_t stream) {
  TORCH_CHECK(n >= 1, "mishbench: mish_mish_fwd needs n >= 1, got ", num(n));
  switch (dtype) {
    case c10::ScalarType::Float:
      return launch_fwd_typed<float>(z, y, n, stream);
    case c10::ScalarType::Double:
      return launch_fwd_typed<double>(z, y, n, stream);
    case c10::ScalarType::Half:
      return launch_fwd_typed<c10::Half>(z, y, n, stream);
    case c10::ScalarType::BFloat16:
      return launch_fwd_typed<c10::BFloat16>(z, y, n, stream);
    default:
      TORCH_CHECK(false, "mishbench: mish_mish_fwd supports float32, float64, float16 and bfloat16, got ", dtype);
  }
}

// Rows of the partial-sum workspace launch_mish_mish_bwd needs for db: (chunks, N) in the accumulator type
// (float32 for fp32/fp16/bf16, float64 for double).
int64_t mish_mish_bwd_chunks(int64_t M) { return (M + kChunkRows - 1) / kChunkRows; }

// dy, z: (M, N) contiguous. dz (M, N), dzt (N, M), db (N,) may each be null when not wanted; partial is the
// workspace above (needed only with db). M, N >= 1.
void launch_mish_mish_bwd(const void* dy, const void* z, void* dz, void* dzt, void* db, void* partial, int64_t M,
                          int64_t N, c10::ScalarType dtype, cudaStream_t stream) {
  TORCH_CHECK(M >= 1 && N >= 1, "mishbench: backward kernel needs M, N >= 1, got ", num(M), ", ", num(N));
  switch (dtype) {
    case c10::ScalarType::Float:
      launch_typed<float>(dy, z, dz, dzt, db, partial, M, N, stream);
      return;
    case c10::ScalarType::Double:
      launch_typed<double>(dy, z, dz, dzt, db, partial, M, N, stream);
      return;
    case c10::ScalarType::Half:
      launch_typed<c10::Half>(dy, z, dz, dzt, db, partial, M, N, stream);
      return;
    case c10::ScalarType::BFloat16:
      launch_typed<c10::BFloat16>(dy, z, dz, dzt, db, partial, M, N, stream);
      return;
    default:
      TORCH_CHECK(false, "mishbench: backward supports float32, float64, float16 and bfloat16, got ", dtype);
  }
}

}  // namespace mishbench
