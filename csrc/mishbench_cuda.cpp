// CUDA host side of the mishbench ops: argument checks, allocation, dispatch to the kernel families.
//
//   linear_mish_mish_fwd(x, weight, bias, precision, save_z) -> (y, z)
//     x: (..., K) or (K,), weight: (N, K), bias: (N,); y: (..., N) = mish(mish(x·Wᵀ + b));
//     z: the pre-activation x·Wᵀ + b (same shape as y) when save_z, else an empty tensor.
//   linear_mish_mish_bwd(grad_y, z, x, weight, precision, output_mask) -> (dx, dW, db)
//     empty tensors where output_mask is false.
//   linear_mish_mish(x, weight, bias, precision) -> y   (the inference path; autograd lives in mishbench.cpp)
//
// Non-contiguous inputs are copied to contiguous ones, not rejected. Zero-size batches give empty outputs
// and zero weight/bias gradients, like nn.Linear.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <string>
#include <tuple>
#include <utility>

#include "checks.h"
#include "device.h"
#include "dispatch.h"
#include "elementwise.h"
#include "gemm.h"
#include "msg.h"
#include "skinny.h"

namespace mishbench {

namespace {

// The device-independent checks are in checks.h; this one is CUDA's own.
#define CHECK_DEVICE(x) TORCH_CHECK((x).is_cuda(), "mishbench: " #x " must be a CUDA tensor, got ", (x).device())

// fp16/bf16 and the tf32 modes go to the tensor-core kernels first. Where those cannot take the call
// (arch, alignment, size), SIMT runs instead: for 3xtf32/tf32 that is plain fp32 FMA, at least as accurate
// as the mode asked for (but slower).
//
// 3xtf32 on Hopper (wgmma) wants one operand split into its tf32 big and small parts in device memory
// first (gemm_wgmma.cuh says why). The smaller operand is split -- at the KernelBench shape x (32 MB, ~35 µs
// of copying) rather than W (256 MB) -- and takes B's place; when that is A, the roles swap and the
// kernel writes its output transposed, which is C again. `opts` allocates the two parts (freed after the
// launch: the caching allocator keeps them for this stream's later work only).
void run_gemm(GemmParams p, c10::ScalarType dtype, Precision prec, cudaStream_t stream,
              const at::TensorOptions& opts) {
  const bool tc_candidate = prec == Precision::k3xTf32 || prec == Precision::kTf32 || dtype == at::kHalf ||
                            dtype == at::kBFloat16;
  if (!tc_candidate) return launch_gemm_simt(p, dtype, stream);
  at::Tensor parts;
  if (gemm_tc_presplit(p, dtype, prec)) {
    if (p.M < p.N) {
      std::swap(p.A, p.B);
      std::swap(p.lda, p.ldb);
      std::swap(p.M, p.N);
      p.trans_c = true;
    }
    parts = at::empty({2, p.N, p.K}, opts.dtype(at::kFloat));
    launch_split_tf32(p.B, p.N, p.K, p.ldb, parts[0].data_ptr(), parts[1].data_ptr(), stream);
    p.B = parts[0].data_ptr();
    p.B_small = parts[1].data_ptr();
    p.ldb = p.K;
  }
  if (!launch_gemm_tc(p, dtype, prec, stream)) launch_gemm_simt(p, dtype, stream);
}

// TF32 off for the cuBLAS calls of the ieee route, whatever the user's global setting; restored after.
// Touches the global only when TF32 was on (the ieee mode asked for explicitly under a TF32-allowing
// setting), so the default strict configuration never changes.
class StrictFp32Matmul {
 public:
  StrictFp32Matmul() : restore_(at::globalContext().allowTF32CuBLAS()) {
    if (restore_) at::globalContext().setAllowTF32CuBLAS(false);
  }
  ~StrictFp32Matmul() {
    if (restore_) at::globalContext().setAllowTF32CuBLAS(true);
  }
  StrictFp32Matmul(const StrictFp32Matmul&) = delete;
  StrictFp32Matmul& operator=(const StrictFp32Matmul&) = delete;

 private:
  bool restore_;
};

// C (M, N) = A (M, K) · B (N, K)ᵀ with all three contiguous; the epilogue is kStore until the caller says.
GemmParams contiguous_tn(const void* A, const void* B, void* C, int64_t M, int64_t N, int64_t K) {
  GemmParams p;
  p.A = A;
  p.B = B;
  p.C = C;
  p.lda = K;
  p.ldb = K;
  p.ldc = N;
  p.M = M;
  p.N = N;
  p.K = K;
  return p;
}

// The backward's two products.
void run_tn_store(const void* A, const void* B, void* C, int64_t M, int64_t N, int64_t K, c10::ScalarType dtype,
                  Precision prec, cudaStream_t stream, const at::TensorOptions& opts) {
  run_gemm(contiguous_tn(A, B, C, M, N, K), dtype, prec, stream, opts);
}

}  // namespace

namespace {

at::ScalarType acc_dtype(c10::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// The skinny routes (dispatch.h: MISHBENCH_ROUTES=next). The workspace of a K-split holds the slices'
// partial sums in the accumulator type; the B = 1 hot path at large N has no split, so no allocation.
void run_gemv(const at::Tensor& x2, const at::Tensor& w, const at::Tensor& b, const at::Tensor& y, void* z,
              int64_t M, int64_t N, int64_t K, int sm_count, cudaStream_t stream) {
  const skinny::GemvPlan plan = skinny::gemv_plan(M, N, K, sm_count);
  at::Tensor ws;
  if (plan.k.splits > 1) ws = at::empty({plan.k.splits, M, N}, x2.options().dtype(acc_dtype(x2.scalar_type())));
  skinny::launch_gemv(x2.data_ptr(), w.data_ptr(), b.data_ptr(), y.data_ptr(), z, ws.defined() ? ws.data_ptr() : nullptr,
                      M, N, K, plan, x2.scalar_type(), stream);
}

void run_splitk(const at::Tensor& x2, const at::Tensor& w, const at::Tensor& b, const at::Tensor& y, void* z,
                int64_t M, int64_t N, int64_t K, int sm_count, cudaStream_t stream) {
  const skinny::SplitKPlan plan = skinny::splitk_plan(M, N, K, sm_count);
  const at::Tensor ws = at::empty({plan.k.splits, M, N}, x2.options().dtype(acc_dtype(x2.scalar_type())));
  skinny::launch_splitk(x2.data_ptr(), w.data_ptr(), b.data_ptr(), y.data_ptr(), z, ws.data_ptr(), M, N, K, plan,
                        x2.scalar_type(), stream);
}

// The dispatch table's view of a call (dispatch.h): x's rows, the sizes, dtype, mode and device.
Problem problem_of(const at::Tensor& x, int64_t K, int64_t N, Precision prec) {
  Problem p;
  p.M = batch_rows(x);
  p.K = K;
  p.N = N;
  p.dtype = x.scalar_type();
  p.prec = prec;
  p.device = x.get_device();
  return p;
}

// The forward of both ops. z is written only when it is defined (save_z); the plain op passes an undefined
// z and so skips the allocation of linear_mish_mish_fwd's empty placeholder (launch-bound shapes pay every
// allocation in host time). The route is dispatch.cpp's forward_route.
at::Tensor forward_into(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                        c10::string_view precision, at::Tensor* z_out) {
  CHECK_DEVICE(x);
  const Precision prec = check_fwd_args(x, weight, bias, precision);
  const int64_t N = weight.size(0), K = weight.size(1);

  const c10::cuda::CUDAGuard guard(x.device());
  const auto out_shape = output_shape(x, N);
  at::Tensor y = at::empty(out_shape, x.options());
  const bool save_z = z_out != nullptr;
  at::Tensor z = save_z ? at::empty(out_shape, x.options()) : at::Tensor();
  if (save_z) *z_out = z;
  const Problem prob = problem_of(x, K, N, prec);
  const int64_t M = prob.M;
  const FwdRoute route = forward_route(prob);
  if (route == FwdRoute::kEmpty) return y;
  if (route == FwdRoute::kBias) {
    // nn.Linear with in_features == 0 gives the bias; not worth a kernel.
    const at::Tensor z0 = bias.expand(out_shape);
    y.copy_(at::mish(at::mish(z0)));
    if (save_z) z.copy_(z0);
    return y;
  }

  // A 2-D contiguous x (the hot path) is used as is; anything else is viewed/copied to (M, K).
  const at::Tensor x2 = (x.dim() == 2 && x.is_contiguous()) ? x : x.reshape({M, K}).contiguous();
  const at::Tensor w = weight.contiguous();
  const at::Tensor b = bias.contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  void* const z_ptr = save_z ? z.data_ptr() : nullptr;
  switch (route) {
    case FwdRoute::kCublas: {
      // z = x·Wᵀ + b by cuBLAS, then y = mish(mish(z)) in one pass; without save_z, y is its own z buffer.
      at::Tensor z2 = save_z ? z.view({M, N}) : y.view({M, N});
      {
        const StrictFp32Matmul strict;
        at::addmm_out(z2, b, x2, w.t());
      }
      launch_mish_mish_fwd(z2.data_ptr(), y.data_ptr(), M * N, x.scalar_type(), stream);
      return y;
    }
    case FwdRoute::kGemv:
      run_gemv(x2, w, b, y, z_ptr, M, N, K, device_caps(prob.device).sm_count, stream);
      return y;
    case FwdRoute::kSplitK:
      run_splitk(x2, w, b, y, z_ptr, M, N, K, device_caps(prob.device).sm_count, stream);
      return y;
    default:
      break;  // kTiles: run_gemm picks simt / mma / wgmma
  }

  GemmParams p = contiguous_tn(x2.data_ptr(), w.data_ptr(), y.data_ptr(), M, N, K);
  p.bias = b.data_ptr();
  p.Z = z_ptr;
  p.ldz = N;
  p.epilogue = Epilogue::kBiasMishMish;
  run_gemm(p, x.scalar_type(), prec, stream, x.options());
  return y;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> linear_mish_mish_fwd_cuda(const at::Tensor& x, const at::Tensor& weight,
                                                              const at::Tensor& bias, c10::string_view precision,
                                                              bool save_z) {
  return fwd_outputs(&forward_into, x, weight, bias, precision, save_z);
}

at::Tensor linear_mish_mish_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                 c10::string_view precision) {
  return forward_into(x, weight, bias, precision, nullptr);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_mish_mish_bwd_cuda(const at::Tensor& grad_y,
                                                                         const at::Tensor& z, const at::Tensor& x,
                                                                         const at::Tensor& weight,
                                                                         c10::string_view precision,
                                                                         std::array<bool, 3> output_mask) {
  CHECK_DEVICE(x);
  const Precision prec = check_bwd_args(grad_y, z, x, weight, precision);
  const int64_t N = weight.size(0), K = weight.size(1);

  const c10::cuda::CUDAGuard guard(x.device());
  const auto opts = x.options();
  // Masked-off gradients are distinct empty tensors (outputs of an op must not alias each other).
  at::Tensor dx = output_mask[0] ? at::empty(x.sizes(), opts) : at::empty({0}, opts);
  at::Tensor dw = output_mask[1] ? at::empty({N, K}, opts) : at::empty({0}, opts);
  at::Tensor db = output_mask[2] ? at::empty({N}, opts) : at::empty({0}, opts);
  const Problem prob = problem_of(x, K, N, prec);
  const int64_t M = prob.M;
  const BwdRoute route = backward_route(prob);  // dispatch.cpp
  if (route == BwdRoute::kEmpty) {
    // Empty sums are zero: dW and db vanish for an empty batch; dx vanishes when there are no outputs.
    if (output_mask[0]) dx.zero_();
    if (output_mask[1]) dw.zero_();
    if (output_mask[2]) db.zero_();
    return {dx, dw, db};
  }
  // dx and dW have no elements when K == 0, but db still needs dz.
  const bool want_dx = output_mask[0] && K > 0;
  const bool want_dw = output_mask[1] && K > 0;
  if (!want_dx && !want_dw && !output_mask[2]) return {dx, dw, db};

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const c10::ScalarType dtype = x.scalar_type();
  const at::Tensor dy2 = grad_y.reshape({M, N}).contiguous();
  const at::Tensor z2 = z.reshape({M, N}).contiguous();
  if (route == BwdRoute::kSmall) {
    // Launch-bound: one kernel for dz, dx, dW and db (elementwise.cu, small_bwd_kernel).
    const at::Tensor x2 = x.reshape({M, K}).contiguous();
    const at::Tensor w2 = weight.contiguous();
    launch_small_bwd(dy2.data_ptr(), z2.data_ptr(), x2.data_ptr(), w2.data_ptr(), want_dx ? dx.data_ptr() : nullptr,
                     want_dw ? dw.data_ptr() : nullptr, output_mask[2] ? db.data_ptr() : nullptr, M, N, K, dtype,
                     stream);
    return {dx, dw, db};
  }
  // The cuBLAS and gemv routes read dz in either orientation, so they need no dzᵀ.
  const bool cublas = route == BwdRoute::kCublas;
  const bool gemv = route == BwdRoute::kGemv;
  const bool dz_only = cublas || gemv;
  at::Tensor dz = (want_dx || (dz_only && want_dw)) ? at::empty({M, N}, opts) : at::Tensor();
  at::Tensor dzt = (want_dw && !dz_only) ? at::empty({N, M}, opts) : at::Tensor();
  at::Tensor partial;
  if (output_mask[2]) partial = at::empty({mish_mish_bwd_chunks(M), N}, opts.dtype(acc_dtype(dtype)));
  launch_mish_mish_bwd(dy2.data_ptr(), z2.data_ptr(), dz.defined() ? dz.data_ptr() : nullptr,
                       dzt.defined() ? dzt.data_ptr() : nullptr, output_mask[2] ? db.data_ptr() : nullptr,
                       output_mask[2] ? partial.data_ptr() : nullptr, M, N, dtype, stream);
  if (cublas) {
    const StrictFp32Matmul strict;
    if (want_dx) {
      at::Tensor dx2 = dx.view({M, K});
      at::mm_out(dx2, dz, weight.contiguous());
    }
    if (want_dw) at::mm_out(dw, dz.t(), x.reshape({M, K}));
    return {dx, dw, db};
  }
  if (gemv) {
    // dx = dz·W reading W once; dW = dzᵀ·x tiled over N x K (skinny_bwd.cu). No transposed copies.
    const int sm_count = device_caps(prob.device).sm_count;
    if (want_dx) {
      const at::Tensor w2 = weight.contiguous();
      int64_t col_blocks = 0;
      const skinny::Split split = skinny::dx_plan(N, K, sm_count, &col_blocks);
      at::Tensor ws;
      if (split.splits > 1) ws = at::empty({split.splits, M, K}, opts.dtype(acc_dtype(dtype)));
      skinny::launch_skinny_dx(dz.data_ptr(), w2.data_ptr(), dx.data_ptr(), ws.defined() ? ws.data_ptr() : nullptr, M,
                               N, K, split, col_blocks, dtype, stream);
    }
    if (want_dw) {
      const at::Tensor x2 = x.reshape({M, K}).contiguous();
      skinny::launch_skinny_dw(dz.data_ptr(), x2.data_ptr(), dw.data_ptr(), M, N, K,
                               skinny::dw_rows_per_block(N, K, sm_count), dtype, stream);
    }
    return {dx, dw, db};
  }

  // kTiles (and kDzOnly, which has no GEMM to run).
  if (want_dx) {
    // dx[m, k] = sum_n dz[m, n] W[n, k]: TN form with B = Wᵀ (K, N) contiguous.
    const at::Tensor wt = weight.t().contiguous();
    run_tn_store(dz.data_ptr(), wt.data_ptr(), dx.data_ptr(), /*M=*/M, /*N=*/K, /*K=*/N, dtype, prec, stream, opts);
  }
  if (want_dw) {
    // dW[n, k] = sum_m dz[m, n] x[m, k]: TN form with A = dzᵀ (N, M) and B = xᵀ (K, M) contiguous.
    const at::Tensor xt = x.reshape({M, K}).t().contiguous();
    run_tn_store(dzt.data_ptr(), xt.data_ptr(), dw.data_ptr(), /*M=*/N, /*N=*/K, /*K=*/M, dtype, prec, stream, opts);
  }
  return {dx, dw, db};
}

TORCH_LIBRARY_IMPL(mishbench, CUDA, m) {
  m.impl("linear_mish_mish", &linear_mish_mish_cuda);
  m.impl("linear_mish_mish_fwd", &linear_mish_mish_fwd_cuda);
  m.impl("linear_mish_mish_bwd", &linear_mish_mish_bwd_cuda);
}

}  // namespace mishbench
