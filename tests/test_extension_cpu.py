"""The extension's C++ side that is not CUDA, on the CPU: the ops' CPU kernels, the C++ autograd
Function, and the fast Python entry point `linear_mish_mish` of the built module (csrc/mishbench.cpp) with
its argument and error handling. Needs the compiled extension (`build`: nvcc, no GPU); one build per session.
"""
import threading

import pytest
import torch
import torch.nn.functional as F

from mishbench.op import ops

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


@pytest.mark.parametrize("wanted", [(True, False, False), (False, True, False), (False, False, True),
                                    (True, False, True)])
def test_only_the_needed_gradients(extension_module, wanted):
    """Each subset of inputs that requires grad gets the composite path's gradients, the others none."""
    x, w, b = inputs((5,), 4, 3)
    for t, on in zip((x, w, b), wanted):
        t.requires_grad_(on)
    gy = torch.randn(5, 3, generator=torch.Generator().manual_seed(2))
    extension_module.linear_mish_mish(x, w, b, "ieee").backward(gy)
    ref = [t.detach().clone().requires_grad_(on) for t, on in zip((x, w, b), wanted)]
    ops._CompositeLinearMishMish.apply(*ref, "ieee").backward(gy)
    for t, r, on in zip((x, w, b), ref, wanted):
        if on:
            torch.testing.assert_close(t.grad, r.grad, rtol=1e-5, atol=1e-6)
        else:
            assert t.grad is None


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


def test_gil_released_during_the_op(extension_module):
    """While one thread is inside the entry point (a ~2k x 2k x 2k CPU matmul, 100+ ms), another thread
    keeps running Python: the GIL is released around the op. Holding it would stop the counter."""
    x, w, b = inputs((2048,), 2048, 2048)
    started, done = threading.Event(), threading.Event()
    count = [0]

    def spin():
        started.set()
        while not done.is_set():
            count[0] += 1

    t = threading.Thread(target=spin)
    t.start()
    started.wait()
    before = count[0]
    extension_module.linear_mish_mish(x, w, b, "ieee")
    during = count[0] - before
    done.set()
    t.join()
    assert during > 1000, f"the other thread ran only {during} iterations during the call"


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


@pytest.mark.skipif(not ops.HAS_TORCH_LIBRARY_FAKE or ops._is_compiling is None,
                    reason="fake functions need torch >= 2.4")
def test_fast_path_routing_with_fake_cuda_tensors(extension_module, monkeypatch):
    """ops.linear_mish_mish's CUDA routing, without a GPU: FakeTensorMode's "cuda" tensors say is_cuda, take
    the C entry point (a dispatch mode, not __torch_function__), and reach the fake functions, which check
    the inputs like the C++ host code does; a missing bias runs the composite path."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    ops.register_fakes()
    calls = []
    fast = extension_module.linear_mish_mish
    monkeypatch.setitem(ops._ext_state, "fast", lambda *a: calls.append(1) or fast(*a))
    monkeypatch.setitem(ops._ext_state, "op", torch.ops.mishbench.linear_mish_mish.default)
    with FakeTensorMode():
        x, w, b = (torch.empty(s, device="cuda") for s in ((4, 10), (5, 10), (5,)))
        y = ops.linear_mish_mish(x, w, b, "3xtf32")
        assert y.shape == (4, 5) and y.is_cuda and calls == [1]
        with pytest.raises(ValueError, match=r"x has in_features=11"):
            ops.linear_mish_mish(torch.empty(4, 11, device="cuda"), w, b, "3xtf32")
        with pytest.raises(ValueError, match=r"bias must have shape \(5,\), got \(7,\)"):
            ops.linear_mish_mish(x, w, torch.empty(7, device="cuda"), "3xtf32")
        assert ops.linear_mish_mish(x, w, None, "3xtf32").shape == (4, 5)
    assert calls == [1, 1, 1]
