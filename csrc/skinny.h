// Kernels for skinny problems (few batch rows, or few output tiles), host-side contract: tile constants,
// the launch plans (how many blocks, how K is split) and the launchers. Kernels: gemv.cu (forward,
// M <= 16, and the split reduction every route here shares), splitk.cu (forward, few output tiles),
// skinny_bwd.cu (backward, M <= 16). Which route runs where is dispatch.cpp's business.
//
// Shared conventions: x (M, K), W (N, K), y/z (M, N), all contiguous; accumulation in fp32 (fp64 for
// double); the result of a K-split goes through an fp32 (fp64) workspace `partial` of shape (splits, rows,
// cols), summed in slice order 0, 1, ... by launch_split_reduce -- the same bits on every run.
#pragma once

#include <c10/core/ScalarType.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

namespace mishbench {
namespace skinny {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// How a reduction of length `len` is cut into slices so that `blocks` independent blocks times the slices
// give about two blocks per SM (the kernels here run 2-3 blocks per SM; two keep every SM busy while the
// last blocks drain). No split when the blocks alone already give one per SM: a split costs a second launch
// (~2 µs) and a workspace round trip. Slices are multiples of `align` and at least `min_slice` long.
struct Split {
  int64_t splits = 1;
  int64_t slice = 0;  // elements of the reduced dimension per slice (the last may be shorter)
};
constexpr int64_t kMaxSplits = 32;  // bounds the workspace: splits x rows x cols accumulators

inline Split plan_split(int64_t blocks, int64_t len, int64_t sm_count, int64_t min_slice, int64_t align) {
  Split s;
  s.slice = len;
  if (blocks >= sm_count || len < 2 * min_slice) return s;
  const int64_t want = std::min(ceil_div(2 * sm_count, blocks), std::min(kMaxSplits, len / min_slice));
  if (want < 2) return s;
  s.slice = ceil_div(ceil_div(len, want), align) * align;
  s.splits = ceil_div(len, s.slice);  // rounding the slice up may leave fewer, never empty, slices
  if (s.splits < 2) s.slice = len, s.splits = 1;
  return s;
}

// ---- forward GEMV (gemv.cu): M <= kGemvMaxM batch rows ------------------------------------------------
constexpr int64_t kGemvMaxM = 16;
constexpr int kGemvThreads = 256;           // 8 warps; warp w owns rows_per_warp consecutive rows of W
constexpr int kGemvXSmemBytes = 32 * 1024;  // x's rows staged per K-chunk (MB x chunk elements)
constexpr int64_t kGemvMinSlice = 1024;     // K elements per split: 4 KB of each fp32 W row per block

// Batch rows rounded up to the compiled bucket (1, 2, 4, 8, 16).
inline int gemv_bucket(int64_t M) { return M <= 1 ? 1 : M <= 2 ? 2 : M <= 4 ? 4 : M <= 8 ? 8 : 16; }
// Rows of W per warp: each x value read from shared memory feeds this many FMAs. At 16 batch rows and 2
// rows per warp the warp would read 8 bytes of x from shared memory per byte of W (16 x 16 B per 2 x 16 B),
// ~136 B/clk/SM at the 17 B/clk/SM share of 4.0 TB/s: over the 128 B/clk shared-memory port. 4 rows: 68.
constexpr int gemv_rows_per_warp(int mb) { return mb >= 16 ? 4 : 2; }

struct GemvPlan {
  int mb = 1;              // compiled batch bucket
  int64_t row_blocks = 0;  // gridDim.x
  Split k;                 // gridDim.y = k.splits; workspace (splits, M, N) when splits > 1
};

inline GemvPlan gemv_plan(int64_t M, int64_t N, int64_t K, int sm_count) {
  GemvPlan p;
  p.mb = gemv_bucket(M);
  p.row_blocks = ceil_div(N, 8 * gemv_rows_per_warp(p.mb));
  p.k = plan_split(p.row_blocks, K, sm_count, kGemvMinSlice, 256);
  return p;
}

// ---- forward split-K (splitk.cu): fp32 / fp64, SIMT FMA ------------------------------------------------
constexpr int kSplitKBM = 32;   // batch rows per tile (the skinny dimension)
constexpr int kSplitKBN = 128;  // rows of W per tile
constexpr int kSplitKBK = 16;
constexpr int kSplitKThreads = 256;
constexpr int64_t kSplitKMinSlice = 512;  // K per slice: 32 k-tiles, so the pipeline's fill is amortised

struct SplitKPlan {
  int64_t tiles_m = 0, tiles_n = 0;  // gridDim.x = tiles_m * tiles_n (m fastest: the m-tiles of one W tile
                                     // run side by side and share it through L2)
  Split k;                           // gridDim.y
};

inline SplitKPlan splitk_plan(int64_t M, int64_t N, int64_t K, int sm_count) {
  SplitKPlan p;
  p.tiles_m = ceil_div(M, kSplitKBM);
  p.tiles_n = ceil_div(N, kSplitKBN);
  p.k = plan_split(p.tiles_m * p.tiles_n, K, sm_count, kSplitKMinSlice, kSplitKBK);
  return p;
}

// ---- backward at M <= kGemvMaxM (skinny_bwd.cu) ----------------------------------------------------------
// dx = dz·W: each thread owns 4 columns of W and walks rows n; a block is kDxThreads threads wide in K.
constexpr int kDxThreads = 128;
constexpr int64_t kDxMinSlice = 64;  // rows of W per split
// dW = dzᵀ·x: each thread owns 4 columns of x in registers and writes 4 columns of dW for each of its rows.
constexpr int kDwThreads = 256;

inline Split dx_plan(int64_t N, int64_t K, int sm_count, int64_t* col_blocks) {
  *col_blocks = ceil_div(K, 4 * kDxThreads);
  return plan_split(*col_blocks, N, sm_count, kDxMinSlice, 8);
}

// Rows of dW per block: enough blocks for two per SM, at least 8 rows each.
inline int64_t dw_rows_per_block(int64_t N, int64_t K, int sm_count) {
  const int64_t col_blocks = ceil_div(K, 4 * kDwThreads);
  const int64_t row_blocks = std::max<int64_t>(1, std::min(ceil_div(N, 8), ceil_div(2 * sm_count, col_blocks)));
  return ceil_div(N, row_blocks);
}

// ---- launchers (each checks its arguments and its launches) ---------------------------------------------
// y = mish(mish(x·Wᵀ + b)), z = x·Wᵀ + b where z != null; or, when plan.k.splits > 1, the slices' partial
// products into `partial` (splits, M, N), which launch_gemv then reduces with the epilogue itself.
void launch_gemv(const void* x, const void* w, const void* bias, void* y, void* z, void* partial, int64_t M,
                 int64_t N, int64_t K, const GemvPlan& plan, c10::ScalarType dtype, cudaStream_t stream);

// The same forward for fp32 / fp64 by K-split tiles: partials always (plan.k.splits >= 2), then the reduce.
void launch_splitk(const void* x, const void* w, const void* bias, void* y, void* z, void* partial, int64_t M,
                   int64_t N, int64_t K, const SplitKPlan& plan, c10::ScalarType dtype, cudaStream_t stream);

// out (rows, cols) = sum over s of partial[s] (accumulator type), rounded once to dtype; with bias != null
// the forward epilogue instead: z = sum + bias[col] (stored where z != null), out = mish(mish(z)).
void launch_split_reduce(const void* partial, int64_t splits, int64_t rows, int64_t cols, const void* bias,
                         void* out, void* z, c10::ScalarType dtype, cudaStream_t stream);

// dx (M, K) = dz (M, N) · W (N, K); with splits > 1 through `partial` (splits, M, K).
void launch_skinny_dx(const void* dz, const void* w, void* dx, void* partial, int64_t M, int64_t N, int64_t K,
                      const Split& split, int64_t col_blocks, c10::ScalarType dtype, cudaStream_t stream);

// dW (N, K) = dzᵀ · x, dz (M, N), x (M, K); no reduction across blocks (the product's inner size is M).
void launch_skinny_dw(const void* dz, const void* x, void* dw, int64_t M, int64_t N, int64_t K,
                      int64_t rows_per_block, c10::ScalarType dtype, cudaStream_t stream);

}  // namespace skinny
}  // namespace mishbench
