// Device helpers for Mish and its derivative, in float and double.
//
// mish(x) = x * tanh(softplus(x)). With n = e^x, tanh(log1p(n)) = n(n+2) / (n(n+2) + 2): one accurate exp,
// no log1p/tanh, and no overflow because x is clamped at PyTorch's softplus threshold (20) before the exp;
// above it tanh(softplus(x)) rounds to exactly 1 in fp32 and fp64 (1 - 2e^-40 ≈ 1 - 8e-18 < eps64/2), so
// mish(x) = x there, which is also what PyTorch returns.
//
// Special values match torch.nn.functional.mish (checked on CPU, torch 2.14.1):
//   mish(+inf) = +inf, mish(NaN) = NaN, mish(-inf) = NaN (PyTorch computes -inf * 0), mish(-1e4) = -0.
//   mish'(+inf) = NaN, mish'(-inf) = NaN, mish'(NaN) = NaN, mish'(1e4) = 1, mish'(-1e4) = 0.
// These fall out of the formulas below without special cases: the clamp keeps NaN (a NaN compares false),
// and x * 0 with x = ±inf gives NaN as in PyTorch.
//
// Only accurate expf/exp are used (no __expf, no --use_fast_math): the fp32 accuracy bar is 2x eager's error.
#pragma once

#include <cuda_runtime.h>

namespace mishbench {

__device__ __forceinline__ float mish_exp(float x) { return expf(x); }
__device__ __forceinline__ double mish_exp(double x) { return exp(x); }

// tanh(softplus(x)), 1 - tanh²(softplus(x)) and sigmoid(x), from one exp. 1 - t² is formed as
// (1 - t)(1 + t) with 1 - t = 2 / (n(n+2) + 2) taken from the same reciprocal, which avoids
// the cancellation of 1 - t*t for moderate positive x. For x > 20, t = 1 and 1 - t² = 0 exactly, and
// s = n/(1+n) with n = e^20 (s ≈ 1 - 2e-9) only multiplies that 0, so its value does not matter.
template <typename T>
__device__ __forceinline__ void mish_parts(T x, T& t, T& omt2, T& s) {
  const T threshold = T(20);
  const T xc = x > threshold ? threshold : x;  // NaN stays NaN (the comparison is false)
  const T n = mish_exp(xc);
  const T nn = n * (n + T(2));
  // One IEEE division instead of two (1/(nn+2) and n/(1+n)): each division inlines a slow path that made
  // ptxas spill in the backward kernel on sm_80, and the shared reciprocal costs only ~1 ulp. The product
  // stays finite: n <= e^20, so (nn + 2)(1 + n) <= ~1.2e26.
  const T d1 = nn + T(2), d2 = T(1) + n;
  const T r = T(1) / (d1 * d2);
  const T inv = r * d2;  // 1 / (nn + 2)
  const bool big = x > threshold;
  // For x > 0, t is near 1: 1 - 2/(nn + 2) keeps the error relative to 1 - t small (5x lower norm-wise error
  // of mish in fp32 over [-30, 30] than nn/(nn + 2), on par with eager's tanh(log1p(exp(x)))).
  t = big ? T(1) : (x > T(0) ? T(1) - T(2) * inv : nn * inv);
  omt2 = big ? T(0) : T(2) * inv * (T(1) + t);
  s = n * (d1 * r);  // n / (1 + n)
}

template <typename T>
__device__ __forceinline__ T mish(T x) {
  T t, omt2, s;
  mish_parts(x, t, omt2, s);
  return x * t;
}

// d/dx mish(x) = tanh(sp) + x * sigmoid(x) * (1 - tanh²(sp)).
template <typename T>
__device__ __forceinline__ T mish_grad(T x) {
  T t, omt2, s;
  mish_parts(x, t, omt2, s);
  return t + x * s * omt2;
}

// mish(x) and mish'(x) together (the backward needs both for the inner Mish).
template <typename T>
__device__ __forceinline__ void mish_and_grad(T x, T& y, T& dy) {
  T t, omt2, s;
  mish_parts(x, t, omt2, s);
  y = x * t;
  dy = t + x * s * omt2;
}

}  // namespace mishbench
