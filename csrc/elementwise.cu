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

}  // namespace

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
