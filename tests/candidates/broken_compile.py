# expect: fail=build
"""Broken: the fused kernel of cuda_fused_ok.py with an undeclared identifier on line 65 (a compile error at a known line).

Backward recomputes from the saved pre-activation z in a second kernel (dz = dy * mish'(mish(z)) * mish'(z)).
"""
import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

cpp_source = """
#include <torch/extension.h>
std::vector<torch::Tensor> bias_mish_mish_forward(torch::Tensor xw, torch::Tensor bias);
torch::Tensor bias_mish_mish_backward(torch::Tensor grad_y, torch::Tensor z);
"""

cuda_source = r"""
#include <torch/extension.h>
#include <ATen/AccumulateType.h>
#include <c10/cuda/CUDAStream.h>  // not ATen/cuda/CUDAContext.h: that needs cuSPARSE headers
#include <c10/cuda/CUDAGuard.h>

template <typename T>
__device__ __forceinline__ T mish_f(T x) {
  if (x > T(20)) return x;
  T n = exp(x);
  T t = n * (n + T(2));
  return x * t / (t + T(2));
}

template <typename T>
__device__ __forceinline__ T mish_grad(T x) {
  if (x > T(20)) return T(1);
  T n = exp(x);
  T t = n * (n + T(2));
  T th = t / (t + T(2));
  T sig = T(1) / (T(1) + exp(-x));
  return th + x * sig * (T(1) - th * th);
}

template <typename scalar_t>
__global__ void fwd_kernel(const scalar_t* __restrict__ xw, const scalar_t* __restrict__ bias,
                           scalar_t* __restrict__ z, scalar_t* __restrict__ y, int64_t n, int64_t cols) {
  using acc_t = at::acc_type<scalar_t, true>;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    acc_t v = static_cast<acc_t>(xw[i]) + static_cast<acc_t>(bias[i % cols]);
    z[i] = static_cast<scalar_t>(v);
    y[i] = static_cast<scalar_t>(mish_f(mish_f(v)));
  }
}

template <typename scalar_t>
__global__ void bwd_kernel(const scalar_t* __restrict__ gy, const scalar_t* __restrict__ z,
                           scalar_t* __restrict__ dz, int64_t n) {
  using acc_t = at::acc_type<scalar_t, true>;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    acc_t v = static_cast<acc_t>(z[i]);
    dz[i] = static_cast<scalar_t>(static_cast<acc_t>(gy[i]) * mish_grad(mish_f(v)) * mish_grad(v));
  }
}

static int blocks_for(int64_t n) { return (int)std::min<int64_t>((n + 255) / 256, 65535); }

std::vector<torch::Tensor> bias_mish_mish_forward(torch::Tensor xw, torch::Tensor bias) {
  TORCH_CHECK(xw.is_cuda() && bias.is_cuda(), "bias_mish_mish: xw and bias must be CUDA tensors");
  TORCH_CHECK(xw.scalar_type() == bias.scalar_type(), "bias_mish_mish: dtype mismatch"); int64_t oops = undeclared_count;
  const c10::cuda::CUDAGuard guard(xw.device());
  auto xc = xw.contiguous();
  auto z = torch::empty_like(xc);
  auto y = torch::empty_like(xc);
  const int64_t n = xc.numel(), cols = bias.numel();
  if (n == 0) return {y, z};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, xc.scalar_type(), "fwd", [&] {
    fwd_kernel<scalar_t><<<blocks_for(n), 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
        xc.data_ptr<scalar_t>(), bias.contiguous().data_ptr<scalar_t>(), z.data_ptr<scalar_t>(),
        y.data_ptr<scalar_t>(), n, cols);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {y, z};
}

torch::Tensor bias_mish_mish_backward(torch::Tensor grad_y, torch::Tensor z) {
  const c10::cuda::CUDAGuard guard(z.device());
  auto g = grad_y.contiguous();
  auto dz = torch::empty_like(z);
  const int64_t n = z.numel();
  if (n == 0) return dz;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, z.scalar_type(), "bwd", [&] {
    bwd_kernel<scalar_t><<<blocks_for(n), 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
        g.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), dz.data_ptr<scalar_t>(), n);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dz;
}
"""

fused = load_inline(name="cand_broken_compile", cpp_sources=cpp_source, cuda_sources=cuda_source,
                    functions=["bias_mish_mish_forward", "bias_mish_mish_backward"], verbose=False)


class _BiasMishMish(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        xw = x.reshape(-1, x.shape[-1]).matmul(weight.t())
        y, z = fused.bias_mish_mish_forward(xw, bias)
        ctx.save_for_backward(x, weight, z)
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, z = ctx.saved_tensors
        dz = fused.bias_mish_mish_backward(grad_y.reshape(z.shape), z)
        x2 = x.reshape(-1, x.shape[-1])
        dx = dz.matmul(weight).view(x.shape)
        return dx, dz.t().matmul(x2), dz.sum(0)


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x):
        if x.dim() == 0 or x.shape[-1] != self.linear.in_features:
            raise ValueError(f"expected input with in_features={self.linear.in_features} as its last dim, "
                             f"got shape {tuple(x.shape)}")
        if x.dtype != self.linear.weight.dtype:
            raise TypeError(f"dtype mismatch: input {x.dtype} vs weight {self.linear.weight.dtype}")
        if x.device != self.linear.weight.device:
            raise RuntimeError(f"device mismatch: input on {x.device}, weight on {self.linear.weight.device}")
        return _BiasMishMish.apply(x, self.linear.weight, self.linear.bias)
