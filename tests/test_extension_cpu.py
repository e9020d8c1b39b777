"""The extension's C++ side that is not CUDA, on the CPU (issue 5): the ops' CPU kernels, the C++ autograd
Function, and the fast Python entry point `linear_mish_mish` of the built module (csrc/mishbench.cpp) with
its argument and error handling. Needs the compiled extension (`build`: nvcc, no GPU); one build per session.
"""
import threading

import pytest
import torch
import torch.nn.functional as F

from mishbench import ops

pytestmark = pytest.mark.build

# (leading dims of x, in_features, out_features): KernelBench's old size, odd sizes, 1-D and 3-D x, an
# empty batch, in_features == 0 (nn.Linear gives the bias there).
SHAPES = [((128,), 10, 20), ((7,), 123, 33), ((), 5, 3), ((2, 3), 17, 9), ((0,), 4, 6), ((4,), 0, 5)]


def reference(x, w, b):
    """What the reference Model computes, in float64."""
    return F.mish(F.mish(F.linear(x.double(), w.double(), b.double())))


def inputs(lead, k, n, dtype=torch.float32, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, k, generator=g, dtype=torch.float64).to(dtype)
    w = (torch.randn(n, k, generator=g, dtype=torch.float64) / max(k, 1) ** 0.5).to(dtype)
    b = torch.randn(n, generator=g, dtype=torch.float64).to(dtype)
    return [t.requires_grad_(requires_grad) for t in (x, w, b)]


def mode_for(dtype):
    return "ieee" if dtype == torch.float32 else "native"


@pytest.mark.parametrize("lead,k,n", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_matches_reference(extension_module, lead, k, n, dtype):
    x, w, b = inputs(lead, k, n, dtype)
    want = reference(x, w, b)
    mode = mode_for(dtype)
    for y in (extension_module.linear_mish_mish(x, w, b, mode),
              torch.ops.mishbench.linear_mish_mish.default(x, w, b, mode)):
        assert y.shape == want.shape and y.dtype == dtype
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(y.double(), want, rtol=tol, atol=tol)


def test_fwd_op_saves_z_only_when_asked(extension_module):
    x, w, b = inputs((6,), 8, 4)
    y, z = torch.ops.mishbench.linear_mish_mish_fwd(x, w, b, "ieee", True)
    torch.testing.assert_close(z, F.linear(x, w, b))
    torch.testing.assert_close(y, F.mish(F.mish(z)))
    y2, z2 = torch.ops.mishbench.linear_mish_mish_fwd(x, w, b, "ieee", False)
    assert z2.numel() == 0 and torch.equal(y2, y)


@pytest.mark.parametrize("lead,k,n", [((7,), 5, 3), ((), 4, 6), ((2, 3), 3, 2)])
def test_gradcheck_through_the_cpp_autograd(extension_module, lead, k, n):
    """float64 gradcheck of the fast entry point: the C++ autograd Function and the CPU backward kernel."""
    x, w, b = inputs(lead, k, n, torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: extension_module.linear_mish_mish(*a, "native"), (x, w, b))


@pytest.mark.parametrize("lead,k,n", SHAPES)
def test_backward_matches_composite(extension_module, lead, k, n):
    x, w, b = inputs(lead, k, n, requires_grad=True)
    gy = torch.randn(*lead, n, generator=torch.Generator().manual_seed(1))
    y = extension_module.linear_mish_mish(x, w, b, "3xtf32")
    assert y.grad_fn is not None and "LinearMishMish" in type(y.grad_fn).__name__ + y.grad_fn.name()
    got = torch.autograd.grad(y, (x, w, b), gy)
    xr, wr, br = (t.detach().clone().requires_grad_() for t in (x, w, b))
    want = torch.autograd.grad(ops._CompositeLinearMishMish.apply(xr, wr, br, "ieee"), (xr, wr, br), gy)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_only_the_needed_gradients(extension_module):
    x, w, b = inputs((5,), 4, 3)
    w.requires_grad_()
    y = extension_module.linear_mish_mish(x, w, b, "ieee")
    y.sum().backward()
    assert x.grad is None and b.grad is None and w.grad is not None and w.grad.shape == w.shape


def test_no_graph_without_grad(extension_module):
    x, w, b = inputs((5,), 4, 3, requires_grad=True)
    with torch.no_grad():
        assert extension_module.linear_mish_mish(x, w, b, "ieee").grad_fn is None
    with torch.inference_mode():
        y = extension_module.linear_mish_mish(x, w, b, "ieee")
    assert y.grad_fn is None and y.is_inference()


def test_output_is_fresh(extension_module):
    x, w, b = inputs((4,), 3, 3)
    y = extension_module.linear_mish_mish(x, w, b, "ieee")
    assert all(y.data_ptr() != t.data_ptr() for t in (x, w, b))


# ------------------------------------------------------------------------------ arguments and errors
def test_bad_shapes_raise_runtime_error_naming_the_value(extension_module):
    x, w, b = inputs((4,), 3, 5)
    with pytest.raises(RuntimeError, match=r"x has in_features=7"):
        extension_module.linear_mish_mish(torch.randn(4, 7), w, b, "ieee")
    with pytest.raises(RuntimeError, match=r"bias must have shape \(N\) = \(5,\), got \(4,\)"):
        extension_module.linear_mish_mish(x, w, torch.randn(4), "ieee")
    with pytest.raises(RuntimeError, match=r"unknown precision 'fp8'"):
        extension_module.linear_mish_mish(x, w, b, "fp8")
    with pytest.raises(RuntimeError, match=r"applies to float32 inputs only"):
        extension_module.linear_mish_mish(x.double(), w.double(), b.double(), "tf32")
    with pytest.raises(RuntimeError, match=r"weight has dtype"):
        extension_module.linear_mish_mish(x, w.double(), b, "ieee")


def test_bad_arguments_raise_type_error_naming_them(extension_module):
    x, w, b = inputs((4,), 3, 5)
    with pytest.raises(TypeError, match=r"bias must be a Tensor, got NoneType"):
        extension_module.linear_mish_mish(x, w, None, "ieee")
    with pytest.raises(TypeError, match=r"x must be a Tensor, got list"):
        extension_module.linear_mish_mish([1.0], w, b, "ieee")
    with pytest.raises(TypeError, match=r"precision must be a str, got int"):
        extension_module.linear_mish_mish(x, w, b, 3)
    with pytest.raises(TypeError, match=r"takes 4 arguments, got 3"):
        extension_module.linear_mish_mish(x, w, b)


def test_usable_from_threads(extension_module):
    """The entry point releases the GIL around the op: calls from several threads all come back right."""
    x, w, b = inputs((64,), 32, 16)
    want = extension_module.linear_mish_mish(x, w, b, "ieee")
    results, errors = [], []

    def work():
        try:
            for _ in range(50):
                results.append(torch.equal(extension_module.linear_mish_mish(x, w, b, "ieee"), want))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 200 and all(results)


@pytest.mark.skipif(not hasattr(torch.library, "opcheck"), reason="torch.library.opcheck needs torch >= 2.4")
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_on_cpu(extension_module, requires_grad):
    """Schema, C++ autograd registration, the Python fake (shape) functions and AOT dispatch of all three ops,
    through their CPU kernels."""
    ops.register_fakes()
    x, w, b = inputs((9,), 12, 10, requires_grad=requires_grad)
    torch.library.opcheck(torch.ops.mishbench.linear_mish_mish.default, (x, w, b, "ieee"))
    # The _fwd/_bwd ops are the autograd Function's halves, not differentiable themselves (no Autograd
    # kernel, on purpose): checked with plain inputs.
    x, w, b = (t.detach() for t in (x, w, b))
    torch.library.opcheck(torch.ops.mishbench.linear_mish_mish_fwd.default, (x, w, b, "ieee", True))
    y, z = torch.ops.mishbench.linear_mish_mish_fwd(x, w, b, "ieee", True)
    torch.library.opcheck(torch.ops.mishbench.linear_mish_mish_bwd.default,
                          (torch.randn_like(y), z, x, w, "ieee", [True, False, True]))
