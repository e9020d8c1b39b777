// Host code shared by the CUDA and CPU kernels of the mishbench ops: argument checks in the style of
// flash-attention's flash_api.cpp (every message names the argument and the value it got), the output
// shape, and linear_mish_mish_fwd's pair of outputs. Checks that depend on the device (is it a CUDA
// tensor?) stay with that device's kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <array>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "msg.h"
#include "precision.h"

#define MISHBENCH_CHECK_SAME_DEVICE(x, ref)                                                                 \
  TORCH_CHECK((x).device() == (ref).device(), "mishbench: " #x " is on ", (x).device(), " but " #ref " is on ", \
              (ref).device())
#define MISHBENCH_CHECK_DTYPE(x, ref)                                                                       \
  TORCH_CHECK((x).scalar_type() == (ref).scalar_type(), "mishbench: " #x " has dtype ", (x).scalar_type(), \
              " but " #ref " has dtype ", (ref).scalar_type(), "; they must match")
#define MISHBENCH_CHECK_DIM(x, d) \
  TORCH_CHECK((x).dim() == (d), "mishbench: " #x " must be ", num(d), "-D, got shape ", shape((x).sizes()))
#define MISHBENCH_CHECK_SHAPE(x, ...)                                                              \
  TORCH_CHECK((x).sizes() == at::IntArrayRef({__VA_ARGS__}), "mishbench: " #x " must have shape (", \
              #__VA_ARGS__, ") = ", shape(at::IntArrayRef({__VA_ARGS__})), ", got ", shape((x).sizes()))

namespace mishbench {

inline bool supported_dtype(c10::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline Precision parse_precision(c10::string_view s) {
  if (s == "ieee") return Precision::kIeee;
  if (s == "3xtf32") return Precision::k3xTf32;
  if (s == "tf32") return Precision::kTf32;
  if (s == "native") return Precision::kNative;
  TORCH_CHECK(false, "mishbench: unknown precision '", std::string(s.data(), s.size()),
              "'; expected one of 'ieee', '3xtf32', 'tf32' (float32 inputs) or 'native' (float16, bfloat16, "
              "float64 inputs)");
}

// Parses the mode and checks it against the dtype (DESIGN.md, "Precision modes").
inline Precision checked_precision(c10::string_view s, c10::ScalarType dtype) {
  const Precision p = parse_precision(s);
  if (dtype == at::kFloat) {
    TORCH_CHECK(p != Precision::kNative,
                "mishbench: precision 'native' is for float16/bfloat16/float64 inputs; float32 inputs take "
                "'ieee', '3xtf32' or 'tf32'");
  } else {
    TORCH_CHECK(p == Precision::kNative, "mishbench: precision '", std::string(s.data(), s.size()),
                "' applies to float32 inputs only; ", dtype, " inputs take 'native'");
  }
  return p;
}

// Forward-shape checks shared by fwd and bwd: x (..., K), weight (N, K), same device and dtype.
inline void check_x_weight(const at::Tensor& x, const at::Tensor& weight) {
  MISHBENCH_CHECK_SAME_DEVICE(weight, x);
  MISHBENCH_CHECK_DTYPE(weight, x);
  TORCH_CHECK(supported_dtype(x.scalar_type()),
              "mishbench: x must be float32, float16, bfloat16 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.dim() >= 1, "mishbench: x must have at least 1 dimension (..., in_features), got a scalar");
  MISHBENCH_CHECK_DIM(weight, 2);
  TORCH_CHECK(x.size(-1) == weight.size(1), "mishbench: x has in_features=", num(x.size(-1)),
              " in its last dimension but weight (out_features, in_features) has shape ", shape(weight.sizes()));
}

// The forward's remaining checks (bias) and the mode, after check_x_weight.
inline Precision check_fwd_args(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                c10::string_view precision) {
  check_x_weight(x, weight);
  MISHBENCH_CHECK_SAME_DEVICE(bias, x);
  MISHBENCH_CHECK_DTYPE(bias, x);
  const int64_t N = weight.size(0);
  MISHBENCH_CHECK_SHAPE(bias, N);
  return checked_precision(precision, x.scalar_type());
}

// y's and z's shape: x's leading dims, then out_features.
inline std::vector<int64_t> output_shape(const at::Tensor& x, int64_t N) {
  std::vector<int64_t> s(x.sizes().begin(), x.sizes().end());
  s.back() = N;
  return s;
}

// The backward's checks: grad_y and z have the output's shape; all on x's device, in x's dtype.
inline Precision check_bwd_args(const at::Tensor& grad_y, const at::Tensor& z, const at::Tensor& x,
                                const at::Tensor& weight, c10::string_view precision) {
  check_x_weight(x, weight);
  MISHBENCH_CHECK_SAME_DEVICE(grad_y, x);
  MISHBENCH_CHECK_SAME_DEVICE(z, x);
  MISHBENCH_CHECK_DTYPE(grad_y, x);
  MISHBENCH_CHECK_DTYPE(z, x);
  const auto out_shape = output_shape(x, weight.size(0));
  TORCH_CHECK(z.sizes() == at::IntArrayRef(out_shape), "mishbench: z must have the output shape ",
              shape(out_shape), " (x's leading dims, out_features), got ", shape(z.sizes()),
              " (was it saved with save_z=True?)");
  TORCH_CHECK(grad_y.sizes() == z.sizes(), "mishbench: grad_y must have the shape of z ", shape(z.sizes()),
              ", got ", shape(grad_y.sizes()));
  return checked_precision(precision, x.scalar_type());
}

// A device's forward: y = mish(mish(x·Wᵀ + b)), and the pre-activation z into *z_out unless z_out is null
// (then z is never allocated: the plain op's path).
using ForwardInto = at::Tensor (*)(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                   c10::string_view precision, at::Tensor* z_out);

// linear_mish_mish_fwd's outputs from a device's forward: (y, z) with save_z, else (y, an empty tensor) as
// the schema's second output.
inline std::tuple<at::Tensor, at::Tensor> fwd_outputs(ForwardInto forward_into, const at::Tensor& x,
                                                      const at::Tensor& weight, const at::Tensor& bias,
                                                      c10::string_view precision, bool save_z) {
  if (!save_z) return {forward_into(x, weight, bias, precision, nullptr), at::empty({0}, x.options())};
  at::Tensor z;
  at::Tensor y = forward_into(x, weight, bias, precision, &z);
  return {y, z};
}

// Rows of the flattened batch: the product of x's leading dims (1 for a 1-D x).
inline int64_t batch_rows(const at::Tensor& x) {
  int64_t m = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) m *= x.size(d);
  return m;
}

}  // namespace mishbench
