// Tensor-core "TN" GEMM kernels for Hopper (wgmma, sm_90a): C[m, n] = sum_k A[m, k] * B[n, k], both
// K-contiguous. Same contract, tile order, loader, smem layout and epilogue as the mma.sync family
// (gemm_tc.cuh); only the math differs. Host dispatch: gemm_tc.cu (launch_gemm_tc tries these first).
//
// Why: mma.sync on an H100 issues from one warp at a time and tops out near half of the tensor cores' rate;
// the mma.sync 3xtf32 kernel ran the KernelBench shape at 2.57 ms (~160 TFLOP/s of tf32 products, 1.05x
// eager fp32). wgmma issues a 64 x 128 x k8 product per warpgroup and reads B straight from shared memory.
//
// Block: 128 x 128 output tile, 256 threads = 2 consumer warpgroups, each a 64 x 128 half (rows 64·wg..).
// No producer warp: every thread issues cp.async for the tile kStages - 1 ahead, as in the mma.sync kernel,
// while the tensor cores chew on the current tile (wgmma is asynchronous).
//
// Modes:
//   k3xTf32: x = big + small (x - big is exact in fp32). A (the 64 rows of this warpgroup) is split in
//            registers, by truncation (load_a says why): wgmma takes A from registers for tf32.
//            B must come from shared memory, and splitting it there cost more shared-memory bandwidth than
//            the tensor cores left (v1, below), so the caller splits B once in device memory
//            (launch_split_tf32: big = tf32_rna(x), small = tf32_rna(x - big); the caller puts the smaller
//            operand in B's place, GemmParams::trans_c) and each stage loads three tiles: A, B_big, B_small.
//            Per k8 step: small·big + big·small + big·big into `part`, which is promoted into fp32 registers
//            every k-tile (DESIGN.md: tensor-core accumulation over all of K drops low bits; every 32 of K
//            measured best for the mma.sync kernel, 3.8e-7 at K = 8192).
//            v1 split B inside the block after each k-tile landed (in place to B_big plus a B_small tile):
//            1.92 ms at 1024x8192x8192 on the H100 (1.44x eager), ~3300 clocks per k-tile for 1536 of
//            tensor-core work; its shared-memory traffic per k-tile (wgmma's B reads 96 KB, the split 48 KB,
//            cp.async 32 KB, A fragments 16 KB) is ~1500 clocks at 128 B/clk on its own.
//   kTf32:   big·big only (A rounded in registers, B rounded in place), accumulated in the tensor cores.
//   kHalf:   fp16 / bf16, A and B both straight from shared memory (m64n128k16), fp32 accumulation.
//
// Shared-memory traffic per k-tile (3xtf32, per block): wgmma reads B 3 × 2 warpgroups × 16 KB = 96 KB,
// cp.async writes 48 KB, the A fragments read 16 KB: 160 KB per 1.57 M multiply-adds, ~104 B/clk at the
// full tf32 rate (1024 MAC/clk/SM) against 128 B/clk of shared-memory bandwidth.
#pragma once

#include <type_traits>

#include "gemm_tc.cuh"

// sm_90a only (wgmma, setmaxnreg-free): the body compiles for the arch-specific target and is empty
// elsewhere; the host launches these kernels only when the build had a 9.0a target (MISHBENCH_SM90A) and
// the device is sm_90.
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MISHBENCH_WGMMA_ENABLED 1
#else
#define MISHBENCH_WGMMA_ENABLED 0
#endif

namespace mishbench {
namespace wg {

using tc::Mode;
using tc::kBM;
using tc::kBN;
using tc::kRowBytes;
using tc::kTileBytes;

constexpr int kThreads = 256;  // 2 warpgroups
constexpr int kStages = 4;     // 3 tiles in flight while one is multiplied; 4 × 48 KB fits the 227 KB opt-in
// Tiles per stage: A, B and (3xtf32) B_small.
__host__ __device__ constexpr int tiles_per_stage(Mode m) { return m == Mode::k3xTf32 ? 3 : 2; }
__host__ __device__ constexpr int smem_bytes(Mode m) {
  return kStages * tiles_per_stage(m) * kTileBytes + 1024;  // + 1024: the base is aligned up to 1024 B
}

#if MISHBENCH_WGMMA_ENABLED
// Shared-memory matrix descriptor (PTX ISA, "Matrix Descriptor Format"), K-major with the 128-byte swizzle:
// rows of 128 bytes, 8-row atoms of 1024 bytes (stride byte offset), swizzle mode 1 in bits 62-63. Our
// tiles are exactly that layout (chunk c of row r at c ^ (r & 7), tile bases 1024-aligned), so a k8 (tf32)
// or k16 (half) step is the tile base + 32 bytes per step. The leading byte offset is unused for swizzled
// K-major layouts (set to 1, as CUTLASS does).
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr) {
  uint64_t d = 0;
  d |= static_cast<uint64_t>((addr & 0x3FFFF) >> 4);
  d |= static_cast<uint64_t>(1) << 16;
  d |= static_cast<uint64_t>(1024 >> 4) << 32;
  d |= static_cast<uint64_t>(1) << 62;
  return d;
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Ordinary (generic-proxy) st.shared writes become visible to wgmma (the async proxy) only through this
// fence, issued by each writing thread before the barrier.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Pins accumulator registers at this point of the instruction stream: the compiler sees wgmma's results as
// produced when the asm statement issues, so without this it may move reads of them above wgmma.wait_group
// (CUTLASS's warpgroup_fence_operand does the same).
template <int N>
__device__ __forceinline__ void pin(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

#define MISHBENCH_WG_D64_OPS \
      "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
      "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
      "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
      "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
      "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
      "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
      "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])

// d (64 x 128 fp32, this warpgroup's half) = A (64 x 8 tf32, registers) · B (128 x 8 tf32, smem) + (scale_d ? d : 0).
// A fragment (CUTLASS ALayout_64x8, the m16n8k8 layout per warp): a0 (row g, k t), a1 (g + 8, t),
// a2 (g, t + 4), a3 (g + 8, t + 4), rows offset by 16 per warp.
__device__ __forceinline__ void wgmma_tf32_rs(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b, int scale_d) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %68, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k8.f32.tf32.tf32 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %69, p, 1, 1;\n}\n"
      : MISHBENCH_WG_D64_OPS
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(scale_d), "l"(desc_b));
}

// d = A (64 x 16, smem) · B (128 x 16, smem) + d, fp16 / bf16 inputs, fp32 accumulation, both K-major.
template <typename T>
__device__ __forceinline__ void wgmma_half_ss(float (&d)[64], uint64_t desc_a, uint64_t desc_b);
template <>
__device__ __forceinline__ void wgmma_half_ss<__half>(float (&d)[64], uint64_t desc_a, uint64_t desc_b) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, 1, 1, 1, 0, 0;\n"
      : MISHBENCH_WG_D64_OPS
      : "l"(desc_a), "l"(desc_b));
}
template <>
__device__ __forceinline__ void wgmma_half_ss<__nv_bfloat16>(float (&d)[64], uint64_t desc_a, uint64_t desc_b) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, 1, 1, 1, 0, 0;\n"
      : MISHBENCH_WG_D64_OPS
      : "l"(desc_a), "l"(desc_b));
}
#undef MISHBENCH_WG_D64_OPS
#endif  // MISHBENCH_WGMMA_ENABLED

// Preconditions (host-checked, as for tc::gemm_tc_kernel): sm_90a, K % (16 / sizeof(T)) == 0, A/B 16-byte
// aligned, lda/ldb multiples of 16 / sizeof(T); grid = ceil(M/128) · ceil(N/128) blocks, 256 threads,
// smem_bytes(kMode) of dynamic shared memory.
// 3xtf32: p.B / p.B_small are the pre-split parts of B. kTransC: GemmParams::trans_c (3xtf32 only).
template <typename T, Mode kMode, bool kMish, bool kTransC>
__global__ void __launch_bounds__(kThreads, 1) gemm_wgmma_kernel(const GemmParams p, const bool vec_c, const bool vec_z) {
#if MISHBENCH_WGMMA_ENABLED
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  static_assert(kMode == Mode::kHalf ? sizeof(T) == 2 : sizeof(T) == 4, "mode/dtype mismatch");
  constexpr int kBK = kRowBytes / static_cast<int>(sizeof(T));  // K elements per k-tile: 32 fp32 / 64 half
  constexpr int kSteps = kMode == Mode::kHalf ? kBK / 16 : kBK / 8;  // wgmma k-steps per k-tile: 4
  constexpr bool kSplit = kMode == Mode::k3xTf32;
  constexpr bool kRegA = kMode != Mode::kHalf;  // tf32 modes: A split / rounded in registers
  constexpr int kStageBytes = tiles_per_stage(kMode) * kTileBytes;

  // The 128-byte swizzle is a function of address bits 7-9: tile bases must be 1024-aligned.
  const uint32_t raw_base = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  const uint32_t pad = (1024u - (raw_base & 1023u)) & 1023u;
  const uint32_t smem_base = raw_base + pad;
  unsigned char* const smem = smem_raw + pad;

  int64_t tm, tn;
  tc::grouped_tile(blockIdx.x, (p.M + kBM - 1) / kBM, (p.N + kBN - 1) / kBN, tm, tn);
  const int64_t m0 = tm * kBM, n0 = tn * kBN;
  const int64_t ktiles = (p.K + kBK - 1) / kBK;

  const int tid = threadIdx.x;
  const int wgi = tid >> 7;          // warpgroup: rows 64·wgi .. 64·wgi + 63 of the tile
  const int warp = (tid >> 5) & 3;   // warp within the warpgroup: rows + 16·warp
  const int lane = tid & 31;
  const int g = lane >> 2, t = lane & 3;

  const tc::TileLoader<T, kThreads, kSplit> loader(p, m0, n0, tid);
  auto a_tile = [&](int64_t kt) { return smem_base + static_cast<uint32_t>(kt % kStages) * kStageBytes; };
  auto load_tile = [&](int64_t kt) {
    if (kt < ktiles) loader.load(kt, a_tile(kt), a_tile(kt) + kTileBytes, a_tile(kt) + 2 * kTileBytes);
    tc::cp_async_commit();  // empty groups keep the wait_group arithmetic uniform
  };

  // tf32: round the landed B tile in place to tf32 (4096 floats, 16 per thread as four 16-byte vectors;
  // consecutive threads, consecutive vectors: conflict-free). 3xtf32's B arrives split.
  constexpr bool kRoundB = kMode == Mode::kTf32;
  auto round_b = [&](int64_t kt) {
    if constexpr (kRoundB) {
      unsigned char* b = smem + (kt % kStages) * kStageBytes + kTileBytes;
#pragma unroll
      for (int i = 0; i < kTileBytes / 16 / kThreads; ++i) {
        const int off = (i * kThreads + tid) * 16;
        float4 v = *reinterpret_cast<const float4*>(b + off);
        v.x = __uint_as_float(tc::tf32_rna(v.x));
        v.y = __uint_as_float(tc::tf32_rna(v.y));
        v.z = __uint_as_float(tc::tf32_rna(v.z));
        v.w = __uint_as_float(tc::tf32_rna(v.w));
        *reinterpret_cast<float4*>(b + off) = v;
      }
    }
  };

  // A fragments of this thread for one k-tile (tf32 modes), double-buffered so the next tile's can be read
  // while the tensor cores still read this one's registers. Rows r0 = 64·wgi + 16·warp + g and r0 + 8;
  // k = 8s + t (logical chunk 2s, word t) and 8s + t + 4 (chunk 2s + 1): the mma.sync kernel's conflict-free
  // pattern (g = row & 7 spreads one logical chunk over 8 physical chunks).
  constexpr int kFragBufs = kRegA ? 2 : 1;
  uint32_t a_big[kFragBufs][kSteps][4];
  uint32_t a_small[kSplit ? kFragBufs : 1][kSplit ? kSteps : 1][4];
  auto load_a = [&](int64_t kt, auto buf_c) {
    constexpr int buf = decltype(buf_c)::value;
    (void)buf;  // half modes read A from shared memory
    if constexpr (kRegA) {
      const unsigned char* r0 = smem + (kt % kStages) * kStageBytes + (64 * wgi + 16 * warp + g) * kRowBytes;
      const unsigned char* r1 = r0 + 8 * kRowBytes;
#pragma unroll
      for (int s = 0; s < kSteps; ++s) {
        const int c_lo = (((2 * s) ^ g) << 4) + 4 * t;
        const int c_hi = (((2 * s + 1) ^ g) << 4) + 4 * t;
        const float x[4] = {*reinterpret_cast<const float*>(r0 + c_lo), *reinterpret_cast<const float*>(r1 + c_lo),
                            *reinterpret_cast<const float*>(r0 + c_hi), *reinterpret_cast<const float*>(r1 + c_hi)};
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          if constexpr (kSplit) {
            // big = x with the 13 mantissa bits tf32 drops cleared (one LOP3; cvt.rna.tf32 is ~5 SASS
            // instructions on sm_90, and 32 of them per k-tile sat on the issue-bound path); small = x - big
            // is exact, and the tensor cores read its top 19 bits: |small| < 2^-10 |x|, so that costs
            // < 2^-20 |x| per product, under fp32's own rounding of the sum.
            const uint32_t bits = __float_as_uint(x[r]) & 0xFFFFE000u;
            a_big[buf][s][r] = bits;
            a_small[buf][s][r] = __float_as_uint(x[r] - __uint_as_float(bits));
          } else {
            a_big[buf][s][r] = tc::tf32_rna(x[r]);
          }
        }
      }
    }
  };

  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.f;
  float part[kSplit ? 64 : 1];
#pragma unroll
  for (int i = 0; i < (kSplit ? 64 : 1); ++i) part[i] = 0.f;

  // Issue the wgmma group of k-tile kt (asynchronous; committed, not waited for).
  auto issue = [&](int64_t kt, auto buf_c) {
    constexpr int buf = decltype(buf_c)::value;
    (void)buf;
    const uint32_t a_base = a_tile(kt);
    const uint32_t b_base = a_base + kTileBytes;
    wgmma_fence();
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      const uint64_t db = smem_desc(b_base + 32 * s);
      if constexpr (kSplit) {
        const uint64_t ds = smem_desc(b_base + kTileBytes + 32 * s);
        // Small terms first, while the partial sum is small; the first product of the group overwrites the
        // partial sum, which the previous group's promotion has consumed.
        wgmma_tf32_rs(part, a_small[buf][s], db, s == 0 ? 0 : 1);
        wgmma_tf32_rs(part, a_big[buf][s], ds, 1);
        wgmma_tf32_rs(part, a_big[buf][s], db, 1);
      } else if constexpr (kRegA) {
        wgmma_tf32_rs(acc, a_big[buf][s], db, 1);
      } else {
        wgmma_half_ss<T>(acc, smem_desc(a_base + 64 * wgi * kRowBytes + 32 * s), db);
      }
    }
    wgmma_commit();
  };
  auto pin_acc = [&]() {  // the registers the tensor cores accumulate into
    if constexpr (kSplit) {
      pin(part);
    } else {
      pin(acc);
    }
  };
  auto promote = [&]() {
    if constexpr (kSplit) {
#pragma unroll
      for (int i = 0; i < 64; ++i) acc[i] += part[i];
    }
  };

  // k-tile kt has landed (this thread's copies, by wait_group): make everyone's visible to the async proxy,
  // refill the slot of k-tile kt - 2 (= kt + kStages - 2 mod kStages) whose wgmma group every thread has
  // waited for before this barrier, then (tf32) round B and publish it.
  auto prepare = [&](int64_t kt, bool refill) {
    // No proxy fence for cp.async data (as CUTLASS's cp.async + GMMA mainloops): fence.proxy.async compiles
    // to MEMBAR.ALL.CTA + FENCE.VIEW.ASYNC.S, and one per k-tile here ran the tensor pipe at 50 % (ncu,
    // v2: 1.65 ms per 1024x8192x8192 3xtf32 kernel).
    __syncthreads();
    if (refill) load_tile(kt + kStages - 2);
    round_b(kt);
    if constexpr (kRoundB) {
      fence_proxy_async();  // ordinary st.shared of the rounded B, read next by wgmma
      __syncthreads();
    }
  };

  // ---- prologue: k-tiles 0 .. kStages - 2 in flight, k-tile 0 ready.
  for (int s = 0; s < kStages - 1; ++s) load_tile(s);
  tc::cp_async_wait<kStages - 2>();
  prepare(0, false);
  load_a(0, std::integral_constant<int, 0>{});

  // ---- main loop, unrolled by two so the A fragment buffer index is a compile-time constant. While the
  // tensor cores multiply k-tile kt, the block waits for k-tile kt + 1, refills a slot with kt + kStages - 1,
  // splits kt + 1 and reads its A fragments.
  auto step = [&](int64_t kt, auto buf_c, auto next_c) {
    if (kt > 0) {
      wgmma_wait<0>();  // k-tile kt - 1's group: its `part`, A registers and smem slot are free
      pin_acc();
      promote();
    }
    pin_acc();
    issue(kt, buf_c);
    if (kt + 1 < ktiles) {
      // Groups committed: kStages - 1 (prologue) + kt (one per earlier refill), the last being k-tile
      // kt + kStages - 2; k-tile kt + 1 is complete when at most kStages - 3 remain pending.
      tc::cp_async_wait<kStages - 3>();
      prepare(kt + 1, true);
      load_a(kt + 1, next_c);
    }
  };
  for (int64_t kt = 0; kt < ktiles; kt += 2) {
    step(kt, std::integral_constant<int, 0>{}, std::integral_constant<int, kFragBufs - 1>{});
    if (kt + 1 < ktiles) step(kt + 1, std::integral_constant<int, kFragBufs - 1>{}, std::integral_constant<int, 0>{});
  }
  wgmma_wait<0>();
  pin_acc();
  promote();
  tc::cp_async_wait<0>();  // no copies may be in flight when the block exits (only empty groups remain)

  // ---- epilogue. Accumulator (CUTLASS CLayout_64xN): acc[4j + 2h + c] is row 16·warp + g + 8h of this
  // warpgroup's half, column 8j + 2t + c.
  const int64_t row0 = m0 + 64 * wgi + 16 * warp + g;
  if constexpr (kTransC) {
    float bi[2] = {0.f, 0.f};
    if constexpr (kMish) {
#pragma unroll
      for (int h = 0; h < 2; ++h)
        if (row0 + 8 * h < p.M) bi[h] = tc::to_float<T>(static_cast<const T*>(p.bias)[row0 + 8 * h]);
    }
#pragma unroll
    for (int j = 0; j < 16; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        tc::epilogue_pair_trans<T, kMish>(p, row0 + 8 * h, n0 + 8 * j + 2 * t, acc[4 * j + 2 * h],
                                          acc[4 * j + 2 * h + 1], bi[h]);
  } else {
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const int64_t n = n0 + 8 * j + 2 * t;
      float b0, b1;
      tc::bias_pair<T, kMish>(p, n, b0, b1);
#pragma unroll
      for (int h = 0; h < 2; ++h)
        tc::epilogue_pair<T, kMish>(p, row0 + 8 * h, n, acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1], b0, b1, vec_c,
                                    vec_z);
    }
  }
#endif  // MISHBENCH_WGMMA_ENABLED
}

}  // namespace wg
}  // namespace mishbench
