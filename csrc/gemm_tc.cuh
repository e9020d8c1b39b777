// Tensor-core "TN" GEMM kernels (mma.sync, sm_80+): C[m, n] = sum_k A[m, k] * B[n, k], both K-contiguous.
// Host dispatch and launch checks live in gemm_tc.cu; this header holds only device code.
//
// One kernel template serves three arithmetic modes over the same pipeline:
//   k3xTf32 (fp32): x = big + small, big = tf32_rna(x), small = tf32_rna(x - big); three products per k-step
//                   small·big + big·small + big·big (small terms first: they are added while the partial sum
//                   is still small, so fewer of their bits are lost), summed in the tensor cores into a
//                   `part` accumulator that is promoted into fp32 registers every kPromoteK of K.
//   kTf32   (fp32): big·big only, accumulated in the tensor cores over all of K (the tf32 class allows it).
//   kHalf   (fp16 / bf16): m16n8k16 with fp32 accumulation, fragments through ldmatrix.
//
// Tiling (all modes): block 128 × 128; warps and warp tiles per mode (threads_for below).
// A k-stage is 128 bytes of K per row (32 fp32 / 64 half), so both operand tiles are 128 rows × 128 bytes
// = 16 KB, and one XOR swizzle serves every mode: the 16-byte chunk c of row r lives at chunk c ^ (r & 7).
// That makes conflict-free (a) cp.async 16-byte writes (a quarter-warp writes one whole 128-byte row),
// (b) ldmatrix (8 rows of one logical chunk land in 8 distinct chunks), (c) the tf32 scalar fragment loads
// (rows g = 0..7, words t = 0..3 of one logical chunk: 8 distinct chunks × 4 words = 32 banks).
// 3 stages × 32 KB = 96 KB of dynamic shared memory: fits every sm_80+ part (sm_86/89/120 opt-in is 99 KB).
// At the KernelBench shape a 3xtf32 k-tile is ~1.5k mma per block, so two tiles in flight cover DRAM
// latency many times over; a 4th stage would only lock the consumer parts out.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "gemm.h"
#include "mish.cuh"

namespace mishbench {
namespace tc {

enum class Mode : int { k3xTf32 = 0, kTf32 = 1, kHalf = 2 };

constexpr int kBM = 128;
constexpr int kBN = 128;
constexpr int kRowBytes = 128;  // K bytes per tile row per stage
// Warp layout: 8 warps as 2 (M) × 4 (N), warp tile 64 × 32, in every mode. fp32 modes: 1 block/SM (3xtf32 holds
// 128 accumulator registers: acc + part); half types: 128 registers, 2 blocks/SM. Tried for fp32 on H100 at
// 1024×8192×8192: 16 warps of 32 × 32 at ≤ 128 registers (twice the warps per scheduler) ran 3xtf32 in
// 3.05 ms and tf32 in 1.33 ms, against 2.56 / 1.16 ms for 8 warps of 64 × 32: the larger warp tile's fewer
// fragment loads and splits per mma matter more than the extra latency hiding. threads_for keeps the knob.
__host__ __device__ constexpr int threads_for(Mode) { return 256; }
constexpr int kWarpsN = 4;
constexpr int kWarpN = 32;
constexpr int kNT = kWarpN / 8;  // n8 tiles per warp: 4
constexpr int kStages = 3;
constexpr int kTileBytes = kBM * kRowBytes;                 // 16 KB (kBM == kBN)
constexpr int kSmemBytes = kStages * 2 * kTileBytes;        // 96 KB
constexpr int kGroupM = 8;  // L2 rasterisation: 8 tile-rows of A share each B tile while it is hot
// 3xtf32 promotion interval in K elements: 32 = every k-tile. The tensor cores' fp32 accumulation truncates,
// so a partial sum loses ~1 ulp per mma; the error grows with the number of mma per promotion window, and
// fp32 (round-to-nearest) adds of the promoted partials grow with K / kPromoteK. Measured on H100 (rel. error
// of z, ~y): every 128 → 9.2e-7 at every K (1024..8192) — above the fp32 floor 8·eps = 9.5e-7 for y at small
// shapes; every 32 → 2.6e-7 (K=1024), 3.8e-7 (K=8192, eager fp32: 1.96e-6) and also the fastest (2.56 vs
// 2.65 ms); every 16 → 4.3e-7, every 8 → 5.8e-7 at K=8192. The promotion costs 64 FADD per thread per k-tile.
#ifndef MISHBENCH_TC_PROMOTE_K
#define MISHBENCH_TC_PROMOTE_K 32
#endif
constexpr int kPromoteK = MISHBENCH_TC_PROMOTE_K;
static_assert(kPromoteK % 8 == 0 && (kPromoteK <= 32 ? 32 % kPromoteK == 0 : kPromoteK % 32 == 0),
              "promotion interval: a multiple of the k-step (8) that divides or is a multiple of BK (32)");

static_assert(kBM == kBN, "loader assumes square tiles");

// ---------------------------------------------------------------------------------------------------------
// PTX wrappers
// ---------------------------------------------------------------------------------------------------------
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define MISHBENCH_TC_ENABLED 1
#else
#define MISHBENCH_TC_ENABLED 0
#endif

#if MISHBENCH_TC_ENABLED
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool pred) {
  const int src_size = pred ? 16 : 0;  // 0 → the 16 bytes are zero-filled, nothing is read
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_size));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ uint32_t tf32_rna(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}

// D = A·B + D, m16n8k8 tf32. a: 4 regs, b: 2 regs, d: 4 fp32.
__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);
template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4],
                                                  const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                                         const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
#endif  // MISHBENCH_TC_ENABLED

// Byte offset of (row, 16-byte chunk) inside one 128 × 128-byte swizzled tile.
__device__ __forceinline__ uint32_t swz(int row, int chunk) {
  return static_cast<uint32_t>(row * kRowBytes + ((chunk ^ (row & 7)) << 4));
}

// ---------------------------------------------------------------------------------------------------------
// Epilogue helpers: store a pair of adjacent columns (n, n+1) of one row.
// ---------------------------------------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

template <typename T>
__device__ __forceinline__ float to_float(T x);
template <>
__device__ __forceinline__ float to_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
struct Pair;
template <>
struct Pair<float> {
  using type = float2;
  static __device__ __forceinline__ float2 make(float a, float b) { return make_float2(a, b); }
};
template <>
struct Pair<__half> {
  using type = __half2;
  static __device__ __forceinline__ __half2 make(float a, float b) { return __floats2half2_rn(a, b); }
};
template <>
struct Pair<__nv_bfloat16> {
  using type = __nv_bfloat162;
  static __device__ __forceinline__ __nv_bfloat162 make(float a, float b) { return __floats2bfloat162_rn(a, b); }
};

// `vec` is true when the row base and (n even) make a 2-element vector store aligned; n is always even here.
template <typename T>
__device__ __forceinline__ void store_pair(T* row_ptr, int64_t n, int64_t N, float v0, float v1, bool vec) {
  if (n + 1 < N) {
    if (vec) {
      *reinterpret_cast<typename Pair<T>::type*>(row_ptr + n) = Pair<T>::make(v0, v1);
    } else {
      row_ptr[n] = from_float<T>(v0);
      row_ptr[n + 1] = from_float<T>(v1);
    }
  } else if (n < N) {
    row_ptr[n] = from_float<T>(v0);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Pieces shared with the wgmma kernels (gemm_wgmma.cuh): tile order, the cp.async tile loader, the epilogue.
// ---------------------------------------------------------------------------------------------------------
// Grouped rasterisation: consecutive blocks walk down kGroupM tile-rows before moving one tile-column right,
// so the blocks resident at once share B (the large operand at the KernelBench shape) tiles in L2.
__device__ __forceinline__ void grouped_tile(int64_t pid, int64_t tiles_m, int64_t tiles_n, int64_t& tm,
                                             int64_t& tn) {
  const int64_t in_group = kGroupM * tiles_n;
  const int64_t first_m = (pid / in_group) * kGroupM;
  const int64_t gsize = min(tiles_m - first_m, static_cast<int64_t>(kGroupM));
  const int64_t r = pid % in_group;
  tm = first_m + r % gsize;
  tn = r / gsize;
}

#if MISHBENCH_TC_ENABLED
// Moves one k-tile (kBM rows of A and kBN rows of B, 128 bytes of K each) into two swizzled 16 KB smem tiles
// with 16-byte cp.async; with kSmallB, also p.B_small's rows into a third tile (same layout as B's).
// Each thread owns chunk (tid & 7) of rows (tid >> 3) + kThreads/8 · i; a quarter-warp writes one whole
// 128-byte row. Rows past M / N and chunks past K are zero-filled (nothing is read), so the tail k-tile and
// edge tiles need no special case in the math.
template <typename T, int kThreads, bool kSmallB = false>
struct TileLoader {
  static constexpr int kVec = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte chunk
  static constexpr int kBK = kRowBytes / static_cast<int>(sizeof(T));
  static constexpr int kLdRows = kThreads / 8;     // rows per pass
  static constexpr int kLdPasses = kBM / kLdRows;  // passes per tile
  static_assert(kBM % kLdRows == 0 && kLdRows % 8 == 0, "loader layout");

  const T* A;
  const T* B;
  const T* Bs;
  const T* a_src;
  const T* b_src;
  const T* bs_src;
  int64_t a_step, b_step, K;
  uint32_t a_rows_ok = 0, b_rows_ok = 0, st_off;
  int ld_chunk;

  __device__ __forceinline__ TileLoader(const GemmParams& p, int64_t m0, int64_t n0, int tid)
      : A(static_cast<const T*>(p.A)), B(static_cast<const T*>(p.B)), Bs(static_cast<const T*>(p.B_small)), K(p.K) {
    ld_chunk = tid & 7;
    const int ld_row = tid >> 3;
    a_src = A + (m0 + ld_row) * p.lda + ld_chunk * kVec;
    b_src = B + (n0 + ld_row) * p.ldb + ld_chunk * kVec;
    bs_src = kSmallB ? Bs + (n0 + ld_row) * p.ldb + ld_chunk * kVec : nullptr;
    a_step = kLdRows * p.lda;
    b_step = kLdRows * p.ldb;
#pragma unroll
    for (int i = 0; i < kLdPasses; ++i) {
      a_rows_ok |= (m0 + ld_row + kLdRows * i < p.M ? 1u : 0u) << i;
      b_rows_ok |= (n0 + ld_row + kLdRows * i < p.N ? 1u : 0u) << i;
    }
    st_off = swz(ld_row, ld_chunk);  // + i * kLdRows rows; (row & 7) is the same for all i
  }

  // k-tile kt into the tiles at shared addresses a_tile / b_tile (and bs_tile with kSmallB).
  __device__ __forceinline__ void load(int64_t kt, uint32_t a_tile, uint32_t b_tile, uint32_t bs_tile = 0) const {
    const int64_t k = kt * kBK + ld_chunk * kVec;  // K % kVec == 0, so a chunk is wholly in or out
    const bool k_ok = k < K;
    const int64_t koff = kt * kBK;
#pragma unroll
    for (int i = 0; i < kLdPasses; ++i) {
      const bool pa = k_ok && ((a_rows_ok >> i) & 1u);
      const bool pb = k_ok && ((b_rows_ok >> i) & 1u);
      const uint32_t row = i * kLdRows * kRowBytes + st_off;
      // Out-of-range chunks are zero-filled; their source address is clamped to the operand's base.
      cp_async16(a_tile + row, pa ? static_cast<const void*>(a_src + i * a_step + koff) : A, pa);
      cp_async16(b_tile + row, pb ? static_cast<const void*>(b_src + i * b_step + koff) : B, pb);
      if constexpr (kSmallB) {
        cp_async16(bs_tile + row, pb ? static_cast<const void*>(bs_src + i * b_step + koff) : Bs, pb);
      }
    }
  }
};
#endif  // MISHBENCH_TC_ENABLED

// Epilogue for one accumulator pair: C fragment columns (n, n+1) of row m, in both kernel families (the
// mma.sync m16n8 and wgmma m64nN accumulators both hold adjacent column pairs). kMish: + bias, store Z
// (when asked), then C = mish(mish(z)). b0/b1: bias[n], bias[n+1] (0 past N).
template <typename T, bool kMish>
__device__ __forceinline__ void epilogue_pair(const GemmParams& p, int64_t m, int64_t n, float v0, float v1,
                                              float b0, float b1, bool vec_c, bool vec_z) {
  if (m >= p.M) return;
  if constexpr (kMish) {
    v0 += b0;
    v1 += b1;
    if (p.Z != nullptr) store_pair<T>(static_cast<T*>(p.Z) + m * p.ldz, n, p.N, v0, v1, vec_z);
    v0 = ::mishbench::mish(::mishbench::mish(v0));
    v1 = ::mishbench::mish(::mishbench::mish(v1));
  }
  store_pair<T>(static_cast<T*>(p.C) + m * p.ldc, n, p.N, v0, v1, vec_c);
}

// The same for a transposed output (GemmParams::trans_c): the pair is (i, j), (i, j + 1) of the product, stored
// at C[j * ldc + i] and C[(j + 1) * ldc + i]; the bias (bi = bias[i]) is per product row.
template <typename T, bool kMish>
__device__ __forceinline__ void epilogue_pair_trans(const GemmParams& p, int64_t i, int64_t j, float v0, float v1,
                                                    float bi) {
  if (i >= p.M) return;
  const float v[2] = {v0, v1};
#pragma unroll
  for (int c = 0; c < 2; ++c) {
    if (j + c >= p.N) break;
    float x = v[c];
    if constexpr (kMish) {
      x += bi;
      if (p.Z != nullptr) static_cast<T*>(p.Z)[(j + c) * p.ldz + i] = from_float<T>(x);
      x = ::mishbench::mish(::mishbench::mish(x));
    }
    static_cast<T*>(p.C)[(j + c) * p.ldc + i] = from_float<T>(x);
  }
}

template <typename T, bool kMish>
__device__ __forceinline__ void bias_pair(const GemmParams& p, int64_t n, float& b0, float& b1) {
  b0 = 0.f;
  b1 = 0.f;
  if constexpr (kMish) {
    const T* const bias = static_cast<const T*>(p.bias);
    if (n < p.N) b0 = to_float<T>(bias[n]);
    if (n + 1 < p.N) b1 = to_float<T>(bias[n + 1]);
  }
}

// ---------------------------------------------------------------------------------------------------------
// The kernel
// ---------------------------------------------------------------------------------------------------------
// T: float (kMode k3xTf32 / kTf32), __half or __nv_bfloat16 (kMode kHalf). kMish: kBiasMishMish epilogue.
// vec_c / vec_z: 2-element vector stores of C / Z are aligned (pointer aligned to 2·sizeof(T), ld even).
// Preconditions (host-checked): sm_80+, K % (16 / sizeof(T)) == 0, A/B 16-byte aligned, lda/ldb multiples of
// 16 / sizeof(T); grid = ceil(M/128) · ceil(N/128) blocks, kSmemBytes of dynamic shared memory.
template <typename T, Mode kMode, bool kMish>
__global__ void __launch_bounds__(threads_for(kMode), kMode == Mode::kHalf ? 2 : 1)
    gemm_tc_kernel(const GemmParams p, const bool vec_c, const bool vec_z) {
#if MISHBENCH_TC_ENABLED
  extern __shared__ __align__(128) unsigned char smem[];
  constexpr int kThreads = threads_for(kMode);
  constexpr int kWarpsM = kThreads / 32 / kWarpsN;
  constexpr int kWarpM = kBM / kWarpsM;
  constexpr int kMT = kWarpM / 16;                 // m16 tiles per warp: 4 (half) or 2 (fp32)
  constexpr int kBK = kRowBytes / static_cast<int>(sizeof(T));  // K elements per stage
  static_assert(kMode == Mode::kHalf ? sizeof(T) == 2 : sizeof(T) == 4, "mode/dtype mismatch");

  const int64_t K = p.K;
  int64_t tm, tn;
  grouped_tile(blockIdx.x, (p.M + kBM - 1) / kBM, (p.N + kBN - 1) / kBN, tm, tn);
  const int64_t m0 = tm * kBM, n0 = tn * kBN;

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int wm = (warp / kWarpsN) * kWarpM;  // half: 0, 64; fp32: 0, 32, 64, 96
  const int wn = (warp % kWarpsN) * kWarpN;  // 0, 32, 64, 96

  const uint32_t smem_base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  // stage s: A tile at s * 2 * kTileBytes, B tile right after it.

  const TileLoader<T, kThreads> loader(p, m0, n0, tid);
  const int64_t ktiles = (K + kBK - 1) / kBK;
  auto load_stage = [&](int64_t kt, int stage) {
    const uint32_t a_tile = smem_base + stage * 2 * kTileBytes;
    loader.load(kt, a_tile, a_tile + kTileBytes);
  };

  float acc[kMT][kNT][4];
#pragma unroll
  for (int i = 0; i < kMT; ++i)
#pragma unroll
    for (int j = 0; j < kNT; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.f;

  // 3xtf32 only: tensor-core partial sums, promoted into acc every kPromoteK.
  constexpr bool kSplit = kMode == Mode::k3xTf32;
  constexpr int kPartMT = kSplit ? kMT : 1;
  constexpr int kPartNT = kSplit ? kNT : 1;
  float part[kPartMT][kPartNT][4];
#pragma unroll
  for (int i = 0; i < kPartMT; ++i)
#pragma unroll
    for (int j = 0; j < kPartNT; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) part[i][j][r] = 0.f;
  constexpr int kPromoteTiles = kPromoteK / kBK > 0 ? kPromoteK / kBK : 1;
  auto promote = [&]() {
#pragma unroll
    for (int i = 0; i < kPartMT; ++i)
#pragma unroll
      for (int j = 0; j < kPartNT; ++j)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          acc[i][j][r] += part[i][j][r];
          part[i][j][r] = 0.f;
        }
  };

  // ---- prologue: fill kStages - 1 stages
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < ktiles) load_stage(s, s);
    cp_async_commit();  // empty groups keep the wait_group arithmetic uniform
  }

  const int g = lane >> 2;  // groupID
  const int t = lane & 3;   // threadID_in_group

  int stage = 0;                   // ring slot of k-tile kt
  int next_stage = kStages - 1;    // ring slot of k-tile kt + kStages - 1
  for (int64_t kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<kStages - 2>();  // k-tile kt has landed (for this thread's copies)...
    __syncthreads();               // ...and everyone's; everyone is also done reading k-tile kt - 1's slot,
                                   // which is next_stage: refill it now, overlapping this tile's math
    if (kt + kStages - 1 < ktiles) load_stage(kt + kStages - 1, next_stage);
    cp_async_commit();
    next_stage = next_stage + 1 == kStages ? 0 : next_stage + 1;
    const unsigned char* As = smem + stage * 2 * kTileBytes;
    const unsigned char* Bs = As + kTileBytes;

    if constexpr (kMode == Mode::kHalf) {
      // Per-lane ldmatrix row addresses (row & 7 == lane & 7 for every fragment row, tile offsets being
      // multiples of 8); logical chunk 2s + hi is stored at (hi ^ (lane & 7)) ^ 2s, so each k-step only XORs
      // a constant into one per-lane value and the m/n tile offsets become immediates.
      const uint32_t a_base = smem_base + stage * 2 * kTileBytes + (wm + (lane & 15)) * kRowBytes;
      const uint32_t b_base = smem_base + stage * 2 * kTileBytes + kTileBytes +
                              (wn + (lane & 7) + ((lane >> 4) << 3)) * kRowBytes;
      const int a_c0 = (lane >> 4) ^ (lane & 7);
      const int b_c0 = ((lane >> 3) & 1) ^ (lane & 7);
#pragma unroll
      for (int s = 0; s < kBK / 16; ++s) {
        uint32_t af[kMT][4];
        uint32_t bf[kNT][2];
        // A, x4: lanes 0-7 rows 0-7 / chunk 2s (a0), 8-15 rows 8-15 / 2s (a1), 16-23 rows 0-7 / 2s+1 (a2),
        // 24-31 rows 8-15 / 2s+1 (a3): PTX m16n8k16 A fragment a0:(g, 2t..), a1:(g+8), a2:(k+8), a3.
        const uint32_t a_addr = a_base + static_cast<uint32_t>((a_c0 ^ (2 * s)) << 4);
#pragma unroll
        for (int i = 0; i < kMT; ++i) ldmatrix_x4(af[i], a_addr + i * 16 * kRowBytes);
        // B rows are n with k contiguous (".col" B): 8×8 matrix rows = n, thread gets (n = g, k = 2t..2t+1) =
        // b0. x4 covers two n8 tiles: matrices (n0-7,k0-7)=b0, (n0-7,k8-15)=b1, (n8-15,k0-7), (n8-15,k8-15),
        // i.e. lane l addresses n = (l & 7) + 8 (l >> 4), chunk 2s + ((l >> 3) & 1).
        const uint32_t b_addr = b_base + static_cast<uint32_t>((b_c0 ^ (2 * s)) << 4);
#pragma unroll
        for (int jp = 0; jp < kNT / 2; ++jp) {
          uint32_t r[4];
          ldmatrix_x4(r, b_addr + jp * 16 * kRowBytes);
          bf[2 * jp][0] = r[0];
          bf[2 * jp][1] = r[1];
          bf[2 * jp + 1][0] = r[2];
          bf[2 * jp + 1][1] = r[3];
        }
#pragma unroll
        for (int i = 0; i < kMT; ++i)
#pragma unroll
          for (int j = 0; j < kNT; ++j) mma_16816<T>(acc[i][j], af[i], bf[j]);
      }
    } else {
#pragma unroll
      for (int s = 0; s < kBK / 8; ++s) {
        // m16n8k8 tf32 fragments (PTX ISA): a0 (row g, k t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4);
        // b0 (k t, n g), b1 (k t+4, n g). Logical k-chunk 2s holds k = 8s..8s+3, 2s+1 holds 8s+4..8s+7.
        // Row & 7 == g for every fragment row (tile offsets are multiples of 8), so the swizzled chunk is
        // (2s ^ g) / (2s+1 ^ g), word t.
        const uint32_t c_lo = static_cast<uint32_t>(((2 * s) ^ g) << 4) + 4 * t;
        const uint32_t c_hi = static_cast<uint32_t>(((2 * s + 1) ^ g) << 4) + 4 * t;
        uint32_t ab[kMT][4], bb[kNT][2];
        uint32_t as[kMT][4], bs[kNT][2];
#pragma unroll
        for (int i = 0; i < kMT; ++i) {
          const unsigned char* r0 = As + (wm + i * 16 + g) * kRowBytes;
          const unsigned char* r1 = r0 + 8 * kRowBytes;
          const float x[4] = {*reinterpret_cast<const float*>(r0 + c_lo), *reinterpret_cast<const float*>(r1 + c_lo),
                              *reinterpret_cast<const float*>(r0 + c_hi), *reinterpret_cast<const float*>(r1 + c_hi)};
#pragma unroll
          for (int r = 0; r < 4; ++r) {
            ab[i][r] = tf32_rna(x[r]);
            if constexpr (kSplit) as[i][r] = tf32_rna(x[r] - __uint_as_float(ab[i][r]));
          }
        }
#pragma unroll
        for (int j = 0; j < kNT; ++j) {
          const unsigned char* r0 = Bs + (wn + j * 8 + g) * kRowBytes;
          const float x[2] = {*reinterpret_cast<const float*>(r0 + c_lo), *reinterpret_cast<const float*>(r0 + c_hi)};
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            bb[j][r] = tf32_rna(x[r]);
            if constexpr (kSplit) bs[j][r] = tf32_rna(x[r] - __uint_as_float(bb[j][r]));
          }
        }
        if constexpr (kSplit) {
          // Small terms first, each pass over 16 independent accumulators so no mma waits on the previous one.
#pragma unroll
          for (int i = 0; i < kMT; ++i)
#pragma unroll
            for (int j = 0; j < kNT; ++j) mma_tf32(part[i][j], as[i], bb[j]);
#pragma unroll
          for (int i = 0; i < kMT; ++i)
#pragma unroll
            for (int j = 0; j < kNT; ++j) mma_tf32(part[i][j], ab[i], bs[j]);
#pragma unroll
          for (int i = 0; i < kMT; ++i)
#pragma unroll
            for (int j = 0; j < kNT; ++j) mma_tf32(part[i][j], ab[i], bb[j]);
        } else {
#pragma unroll
          for (int i = 0; i < kMT; ++i)
#pragma unroll
            for (int j = 0; j < kNT; ++j) mma_tf32(acc[i][j], ab[i], bb[j]);
        }
        if constexpr (kSplit && kPromoteK < kBK) {
          if ((s + 1) % (kPromoteK / 8) == 0) promote();
        }
      }
      if constexpr (kSplit && kPromoteK >= kBK) {
        if ((kt + 1) % kPromoteTiles == 0 || kt + 1 == ktiles) promote();
      }
    }
    stage = stage + 1 == kStages ? 0 : stage + 1;
  }
  cp_async_wait<0>();  // no copies may be in flight when the block exits (only empty groups remain)

  // ---- epilogue. C fragment: c0, c1 at (row g, cols 2t, 2t+1); c2, c3 at (row g + 8, same cols).
#pragma unroll
  for (int j = 0; j < kNT; ++j) {
    const int64_t n = n0 + wn + j * 8 + 2 * t;
    float b0, b1;
    bias_pair<T, kMish>(p, n, b0, b1);
#pragma unroll
    for (int i = 0; i < kMT; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        epilogue_pair<T, kMish>(p, m0 + wm + i * 16 + g + 8 * h, n, acc[i][j][2 * h], acc[i][j][2 * h + 1], b0, b1,
                                vec_c, vec_z);
  }
#endif  // MISHBENCH_TC_ENABLED
}

}  // namespace tc
}  // namespace mishbench
