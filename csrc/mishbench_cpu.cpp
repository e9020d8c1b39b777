// CPU kernels of the mishbench ops, written with ATen ops (the GEMMs are PyTorch's own CPU matmuls).
//
// Why the op has a CPU kernel at all, when ModelNew on the CPU runs the composite Python path: with it the
// whole C++ side that is not CUDA -- the schemas, the autograd Function in mishbench.cpp, the fast Python
// entry point and its error translation -- runs and is tested on machines without a GPU (CI), and direct
// `torch.ops.mishbench.*` callers get an answer for CPU tensors instead of "no kernel for CPU".
//
// The math is the composite path's (mishbench/ops.py): the epilogue and dz run in fp32 for half dtypes and
// round once; every precision mode computes plain fp32 here, as DESIGN.md says of the CPU.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>
#include <tuple>

#include "checks.h"

namespace mishbench {
namespace {

c10::ScalarType compute_dtype(c10::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

#define CHECK_CPU(x) TORCH_CHECK((x).is_cpu(), "mishbench: " #x " must be a CPU tensor here, got ", (x).device())

at::Tensor forward_into(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                        c10::string_view precision, at::Tensor* z_out) {
  CHECK_CPU(x);
  check_fwd_args(x, weight, bias, precision);
  // at::linear gives bias for in_features == 0 and an empty result for an empty batch, like nn.Linear.
  at::Tensor z = at::linear(x, weight, bias);
  const at::Tensor zc = z.to(compute_dtype(z.scalar_type()));
  at::Tensor y = at::mish(at::mish(zc)).to(x.scalar_type());
  if (z_out != nullptr) *z_out = z;
  return y;
}

std::tuple<at::Tensor, at::Tensor> linear_mish_mish_fwd_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                             const at::Tensor& bias, c10::string_view precision,
                                                             bool save_z) {
  return fwd_outputs(&forward_into, x, weight, bias, precision, save_z);
}

at::Tensor linear_mish_mish_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                c10::string_view precision) {
  return forward_into(x, weight, bias, precision, nullptr);
}

// dz = dy·mish'(mish(z))·mish'(z) (at::mish_backward(g, v) is g·mish'(v)); dx = dz·W; dW = dzᵀ·x;
// db = Σ_rows dz. Masked-off gradients are distinct empty tensors, as from the CUDA kernel.
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_mish_mish_bwd_cpu(const at::Tensor& grad_y,
                                                                        const at::Tensor& z, const at::Tensor& x,
                                                                        const at::Tensor& weight,
                                                                        c10::string_view precision,
                                                                        std::array<bool, 3> output_mask) {
  CHECK_CPU(x);
  check_bwd_args(grad_y, z, x, weight, precision);
  const auto dtype = x.scalar_type();
  const auto opts = x.options();
  const int64_t N = weight.size(0), K = weight.size(1), M = batch_rows(x);
  const at::Tensor zc = z.to(compute_dtype(dtype));
  const at::Tensor dz = at::mish_backward(at::mish_backward(grad_y.to(zc.scalar_type()), at::mish(zc)), zc);
  const at::Tensor dz2 = dz.reshape({M, N});
  at::Tensor dx = output_mask[0] ? at::matmul(dz.to(dtype), weight).reshape(x.sizes()) : at::empty({0}, opts);
  at::Tensor dw = output_mask[1] ? at::mm(dz2.t().to(dtype), x.reshape({M, K})) : at::empty({0}, opts);
  at::Tensor db = output_mask[2] ? dz2.sum(0).to(dtype) : at::empty({0}, opts);
  return {dx, dw, db};
}

}  // namespace

TORCH_LIBRARY_IMPL(mishbench, CPU, m) {
  m.impl("linear_mish_mish", &linear_mish_mish_cpu);
  m.impl("linear_mish_mish_fwd", &linear_mish_mish_fwd_cpu);
  m.impl("linear_mish_mish_bwd", &linear_mish_mish_bwd_cpu);
}

}  // namespace mishbench
