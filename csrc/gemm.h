// Internal contract between the host dispatch (mishbench_cuda.cpp) and the GEMM kernel families.
//
// Every GEMM in this extension is "TN": C[m, n] = sum_k A[m, k] * B[n, k], both operands K-contiguous.
// That is the forward's x·Wᵀ as stored (x: (M=batch, K), W: (N=out, K)); the backward's dx and dW are
// brought into the same shape by transposing dz / W / x once (cheap next to the GEMM), so one tuned kernel
// family serves all three products.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>
#include <c10/core/ScalarType.h>

#include "precision.h"

namespace mishbench {

enum class Epilogue : int {
  kStore = 0,         // C = A·Bᵀ
  kBiasMishMish = 1,  // Z = A·Bᵀ + bias (stored only when Z != nullptr); C = mish(mish(Z))
};

struct GemmParams {
  const void* A = nullptr;  // (M, K), element (m, k) at A[m * lda + k]
  const void* B = nullptr;  // (N, K), element (n, k) at B[n * ldb + k]
  void* C = nullptr;        // (M, N), element (m, n) at C[m * ldc + n]
  const void* bias = nullptr;  // (N,), kBiasMishMish only
  void* Z = nullptr;           // (M, N) pre-activation, ldz; optional (kBiasMishMish only)
  int64_t lda = 0, ldb = 0, ldc = 0, ldz = 0;
  int64_t M = 0, N = 0, K = 0;  // each >= 1
  Epilogue epilogue = Epilogue::kStore;
  // 3xtf32 on the wgmma path only (see gemm_tc_presplit): B holds the tf32 "big" part of the B operand and
  // B_small the remainder, both (N, K) with ldb and exactly representable in tf32.
  const void* B_small = nullptr;
  // Output transposed: the product's element (i, j) (i over A's rows, j over B's) goes to C[j * ldc + i]
  // (and Z[j * ldz + i]); the bias is indexed by i. Lets the caller swap the operands' roles.
  bool trans_c = false;
};
// All of A, B, C, bias, Z share one dtype. Accumulation is fp32 for fp32/fp16/bf16 and fp64 for fp64; the
// epilogue math runs in the accumulator type; stores round once to the dtype.

// SIMT path: any dtype in {fp32, fp64, fp16, bf16}, any M/N/K/alignment, any sm >= 7.0. Precision must be
// kIeee (fp32) or kNative. Throws (TORCH_CHECK) on an unsupported combination; checks its launch.
void launch_gemm_simt(const GemmParams& p, c10::ScalarType dtype, cudaStream_t stream);

// Tensor-core path (mma.sync, sm_80+): fp32 with k3xTf32 / kTf32, fp16 / bf16 with kNative.
// Returns false, launching nothing, when it cannot take the call (dtype/precision/arch/alignment/size), so
// the caller falls back to SIMT. Checks its launch.
bool launch_gemm_tc(const GemmParams& p, c10::ScalarType dtype, Precision precision, cudaStream_t stream);

// Whether launch_gemm_tc takes p (fp32, k3xTf32) on the wgmma path, which needs B pre-split (p.B_small set,
// launch_split_tf32) and accepts trans_c. Elsewhere B_small must be null and trans_c false.
bool gemm_tc_presplit(const GemmParams& p, c10::ScalarType dtype, Precision precision);

// Which tensor-core family launch_gemm_tc would pick for a call with these sizes on device `dev`, assuming
// contiguous operands (lda = ldb = K) with 16-byte aligned bases, as freshly allocated tensors are; kNone
// where it would decline (then the SIMT path runs). The same checks as launch_gemm_tc, minus the pointers:
// the dispatch table (dispatch.cpp) names routes with it.
enum class TcFamily : int { kNone = 0, kMma = 1, kWgmma = 2 };
TcFamily tc_family(int64_t M, int64_t N, int64_t K, c10::ScalarType dtype, Precision precision, int dev);

// big = tf32_rna(src), small = tf32_rna(src - big) for a (rows, cols) fp32 matrix with leading dimension ld
// (cols % 4 == 0, ld % 4 == 0, src 16-byte aligned); big and small are contiguous (rows, cols). sm_80+.
void launch_split_tf32(const void* src, int64_t rows, int64_t cols, int64_t ld, void* big, void* small,
                       cudaStream_t stream);

}  // namespace mishbench
