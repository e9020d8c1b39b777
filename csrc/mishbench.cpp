// Device-independent registration of the mishbench ops: the schemas and the C++ autograd.
//
// The schemas live here (one place); the CUDA kernels register under the CUDA key in mishbench_cuda.cpp.
// Autograd: linear_mish_mish is differentiable through a C++ torch::autograd::Function registered under the
// Autograd key. When a gradient is needed, the forward runs linear_mish_mish_fwd(save_z=True) and saves only
// the pre-activation z plus the inputs x and weight (mish, mish' are recomputed from z in the backward; see
// apex gemm_bias_gelu's gelu_in); otherwise it runs save_z=False and saves nothing. Under
// torch.inference_mode the Autograd key is skipped and the CUDA kernel of linear_mish_mish runs directly.
#include <Python.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>  // not <torch/autograd.h>: that pulls in far more (CI time)
#include <torch/library.h>

#include <array>
#include <string>
#include <tuple>

namespace mishbench {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using FwdSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                  c10::string_view, bool);
using BwdSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                              const at::Tensor&, const at::Tensor&,
                                                              c10::string_view, std::array<bool, 3>);
using OpSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view);

// Operator handles are looked up once: this is the hot path for tiny shapes.
const c10::TypedOperatorHandle<FwdSig>& fwd_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("mishbench::linear_mish_mish_fwd", "").typed<FwdSig>();
  return op;
}
const c10::TypedOperatorHandle<BwdSig>& bwd_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("mishbench::linear_mish_mish_bwd", "").typed<BwdSig>();
  return op;
}
const c10::TypedOperatorHandle<OpSig>& plain_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("mishbench::linear_mish_mish", "").typed<OpSig>();
  return op;
}

class LinearMishMish : public torch::autograd::Function<LinearMishMish> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& bias, const std::string& precision) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto outs = fwd_op().call(x, weight, bias, precision, /*save_z=*/true);
    ctx->save_for_backward({std::get<1>(outs), x, weight});
    ctx->saved_data["precision"] = precision;
    return std::get<0>(outs);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      ctx->needs_input_grad(2)};
    const at::Tensor& grad_y = grad_outputs[0];
    if (!grad_y.defined() || !(mask[0] || mask[1] || mask[2])) {
      return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    }
    const variable_list saved = ctx->get_saved_variables();
    const std::string precision = ctx->saved_data["precision"].toStringRef();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto grads = bwd_op().call(grad_y, saved[0], saved[1], saved[2], precision, mask);
    // Masked-off slots come back as empty tensors from the op; autograd wants undefined ones there.
    return {mask[0] ? std::get<0>(grads) : at::Tensor(), mask[1] ? std::get<1>(grads) : at::Tensor(),
            mask[2] ? std::get<2>(grads) : at::Tensor(), at::Tensor()};
  }
};

at::Tensor linear_mish_mish_autograd(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                     c10::string_view precision) {
  const bool needs_grad =
      at::GradMode::is_enabled() && (x.requires_grad() || weight.requires_grad() || bias.requires_grad());
  if (!needs_grad) {
    // No graph to record: skip the Function machinery and the z buffer.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return plain_op().call(x, weight, bias, precision);
  }
  return LinearMishMish::apply(x, weight, bias, std::string(precision.data(), precision.size()));
}

}  // namespace

TORCH_LIBRARY(mishbench, m) {
  m.def("linear_mish_mish(Tensor x, Tensor weight, Tensor bias, str precision) -> Tensor");
  m.def("linear_mish_mish_fwd(Tensor x, Tensor weight, Tensor bias, str precision, bool save_z) -> (Tensor, Tensor)");
  m.def(
      "linear_mish_mish_bwd(Tensor grad_y, Tensor z, Tensor x, Tensor weight, str precision, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mishbench, Autograd, m) { m.impl("linear_mish_mish", &linear_mish_mish_autograd); }

}  // namespace mishbench

// An empty Python module, so the .so can also be imported (its static initialisers register the ops).
// Same pattern as pytorch/extension-cpp's PyInit__C; the name follows the extension name torch builds with.
#ifndef TORCH_EXTENSION_NAME
#define TORCH_EXTENSION_NAME _C
#endif
#define MISHBENCH_CONCAT_(a, b) a##b
#define MISHBENCH_CONCAT(a, b) MISHBENCH_CONCAT_(a, b)
#define MISHBENCH_STR_(a) #a
#define MISHBENCH_STR(a) MISHBENCH_STR_(a)

PyMODINIT_FUNC MISHBENCH_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, MISHBENCH_STR(TORCH_EXTENSION_NAME), nullptr,
                                          -1, nullptr};
  return PyModule_Create(&module_def);
}
