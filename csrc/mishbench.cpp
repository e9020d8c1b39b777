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
#include <pybind11/pybind11.h>  // gil_scoped_release
#include <torch/csrc/Exceptions.h>  // HANDLE_TH_ERRORS: c10 errors become the Python exceptions torch raises
#include <torch/csrc/autograd/custom_function.h>  // not <torch/autograd.h>: that pulls in far more (CI time)
#include <torch/csrc/autograd/python_variable.h>  // THPVariable_Check / _Unpack / _Wrap
#include <torch/library.h>

#include <array>
#include <string>
#include <tuple>

#include "dispatch.h"

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

// ---------------------------------------------------------------------------------------------------------
// The fast Python entry point (launch-bound shapes pay host time in full).
//
// linear_mish_mish(x, weight, bias, precision) -> y calls the same op through the same dispatcher as
// torch.ops.mishbench.linear_mish_mish.default -- Autograd key, profiler, dispatch modes (FakeTensor, ...),
// then the device's kernel -- but without the boxed path torch.ops takes from Python (the Python frame of
// OpOverload.__call__, schema-driven argument parsing into IValues, boxing and unboxing). Measured on this
// project's 2-core CPU machine with the CPU kernel at 128x10x20: see docs/perf-notes.md.
//
// What it does not do is __torch_function__: the Python caller (mishbench/ops.py) takes this path only when
// torch.overrides.has_torch_function says no argument and no mode wants it, and never under torch.compile
// (dynamo cannot trace a C function; it traces the OpOverload).
namespace mishbench {
namespace {

PyObject* py_linear_mish_mish(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  static const char* const kNames[] = {"x", "weight", "bias"};
  if (nargs != 4) {
    PyErr_Format(PyExc_TypeError, "linear_mish_mish(x, weight, bias, precision) takes 4 arguments, got %zd",
                 nargs);
    return nullptr;
  }
  for (int i = 0; i < 3; ++i) {
    if (!THPVariable_Check(args[i])) {
      PyErr_Format(PyExc_TypeError, "linear_mish_mish: %s must be a Tensor, got %s", kNames[i],
                   Py_TYPE(args[i])->tp_name);
      return nullptr;
    }
  }
  if (!PyUnicode_Check(args[3])) {
    PyErr_Format(PyExc_TypeError, "linear_mish_mish: precision must be a str, got %s", Py_TYPE(args[3])->tp_name);
    return nullptr;
  }
  Py_ssize_t len = 0;
  const char* mode = PyUnicode_AsUTF8AndSize(args[3], &len);  // owned by the str, which the caller holds
  if (mode == nullptr) return nullptr;
  const at::Tensor& x = THPVariable_Unpack(args[0]);
  const at::Tensor& weight = THPVariable_Unpack(args[1]);
  const at::Tensor& bias = THPVariable_Unpack(args[2]);
  at::Tensor y;
  {
    // As torch's own bindings do: other Python threads run while the host code and the launch do.
    pybind11::gil_scoped_release no_gil;
    y = plain_op().call(x, weight, bias, c10::string_view(mode, static_cast<size_t>(len)));
  }
  return THPVariable_Wrap(std::move(y));
  END_HANDLE_TH_ERRORS
}

// route(M, K, N, dtype_name, precision, device_index, backward) -> str: the kernel family the op would run
// for that call (dispatch.h, route_name), without running it. For the CSV's `route` column and for tests.
bool int_arg(PyObject* o, const char* name, long long* out) {
  if (!PyLong_Check(o) || PyBool_Check(o)) {
    PyErr_Format(PyExc_TypeError, "route: %s must be an int, got %s", name, Py_TYPE(o)->tp_name);
    return false;
  }
  *out = PyLong_AsLongLong(o);
  return !(*out == -1 && PyErr_Occurred());
}

bool str_arg(PyObject* o, const char* name, std::string* out) {
  if (!PyUnicode_Check(o)) {
    PyErr_Format(PyExc_TypeError, "route: %s must be a str, got %s", name, Py_TYPE(o)->tp_name);
    return false;
  }
  Py_ssize_t len = 0;
  const char* s = PyUnicode_AsUTF8AndSize(o, &len);
  if (s == nullptr) return false;
  out->assign(s, static_cast<size_t>(len));
  return true;
}

PyObject* py_route(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 7) {
    PyErr_Format(PyExc_TypeError,
                 "route(M, K, N, dtype_name, precision, device_index, backward) takes 7 arguments, got %zd", nargs);
    return nullptr;
  }
  long long m = 0, k = 0, n = 0, dev = 0;
  std::string dtype, precision;
  if (!int_arg(args[0], "M", &m) || !int_arg(args[1], "K", &k) || !int_arg(args[2], "N", &n) ||
      !str_arg(args[3], "dtype_name", &dtype) || !str_arg(args[4], "precision", &precision) ||
      !int_arg(args[5], "device_index", &dev)) {
    return nullptr;
  }
  const int backward = PyObject_IsTrue(args[6]);
  if (backward < 0) return nullptr;
  const std::string name = route_name(m, k, n, dtype, precision, dev, backward != 0);
  return PyUnicode_FromStringAndSize(name.data(), static_cast<Py_ssize_t>(name.size()));
  END_HANDLE_TH_ERRORS
}

PyMethodDef kMethods[] = {
    {"linear_mish_mish", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&py_linear_mish_mish)),
     METH_FASTCALL,
     "linear_mish_mish(x, weight, bias, precision) -> mish(mish(x @ weight.T + bias)), differentiable; the "
     "op torch.ops.mishbench.linear_mish_mish without the torch.ops call path (no __torch_function__)."},
    {"route", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&py_route)), METH_FASTCALL,
     "route(M, K, N, dtype_name, precision, device_index, backward) -> str: the kernel family the op runs for an "
     "(M, K) x and (N, K) weight in that dtype and mode on that CUDA device (backward: the backward's family), "
     "e.g. 'wgmma', 'cublas+dz', 'gemv'; 'cpu' for a negative device_index. MISHBENCH_ROUTES=next (read once) "
     "enables the gemv / splitk / gemv+dz routes."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace
}  // namespace mishbench

// The Python module: the .so is loaded by torch.ops.load_library (its static initialisers register the ops)
// and then imported for the fast entry point. Same pattern as pytorch/extension-cpp's PyInit__C; the name
// follows the extension name torch builds with.
#ifndef TORCH_EXTENSION_NAME
#define TORCH_EXTENSION_NAME _C
#endif
#define MISHBENCH_CONCAT_(a, b) a##b
#define MISHBENCH_CONCAT(a, b) MISHBENCH_CONCAT_(a, b)
#define MISHBENCH_STR_(a) #a
#define MISHBENCH_STR(a) MISHBENCH_STR_(a)

PyMODINIT_FUNC MISHBENCH_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  // Every field spelled out (m_slots, m_traverse, m_clear, m_free unused): -Wmissing-field-initializers.
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, MISHBENCH_STR(TORCH_EXTENSION_NAME), nullptr, -1,
                                          mishbench::kMethods, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module_def);
}
