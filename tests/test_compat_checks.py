"""Compiler / runtime compatibility checks of `verify`: compile, autocast, cuda_graph,
serialization, inference_mode — on the CPU here (composite path), on the GPU where marked `cuda`."""
import pytest
import torch

from mishbench.op import ops

from mishbench.truth import guard
from mishbench.verify import compat
from mishbench.verify import core as verify
from mishbench.verify.builtin import BuiltinRunner
from mishbench.op.model import ModelNew
from mishbench.op.reference import Model

HAS_COMPILE_CHECK = ops.HAS_TORCH_LIBRARY_FAKE  # torch >= 2.4


def _check(name, device="cpu", dtype=torch.float32, seed=1234):
    v = verify.Verifier(BuiltinRunner(None), torch.device(device), dtype, seed)
    fns = dict(compat.checks(v))
    return guard(name, fns[name])


def test_registered_in_run_all():
    v = verify.Verifier(BuiltinRunner(None), torch.device("cpu"), torch.float32, 1)
    assert [n for n, _ in compat.checks(v)] == ["compile", "autocast", "cuda_graph", "serialization",
                                                 "inference_mode"]


@pytest.mark.skipif(not HAS_COMPILE_CHECK, reason="the compile check needs torch >= 2.4")
def test_compile_passes_on_cpu():
    c = _check("compile")
    assert c.status == "pass", c.detail
    assert "fullgraph=True" in c.detail and c.metrics["rel_err"] <= c.metrics["bar"]


@pytest.mark.skipif(HAS_COMPILE_CHECK, reason="torch >= 2.4 runs the compile check")
def test_compile_skips_on_old_torch():
    c = _check("compile")
    assert c.status == "skip" and "2.4" in c.detail and torch.__version__ in c.detail


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_autocast_passes_on_cpu(dtype):
    c = _check("autocast", dtype=dtype)
    assert c.status == "pass", c.detail
    assert "bf16->bf16" in c.detail


def test_autocast_output_dtype_matches_model():
    torch.manual_seed(0)
    m, r = ModelNew(9, 5), Model(9, 5)
    r.load_state_dict(m.state_dict())
    x = torch.randn(4, 9, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, yr = m(x), r(x)
    assert y.dtype == yr.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and m.linear.weight.grad.dtype == torch.float32


def test_cuda_graph_skips_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    c = _check("cuda_graph")
    assert c.status == "skip" and "CUDA" in c.detail


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_serialization_passes_on_cpu(dtype):
    c = _check("serialization", dtype=dtype)
    assert c.status == "pass", c.detail
    assert c.metrics["state_equal"] and c.metrics["outputs_equal"]


def test_inference_mode_passes_on_cpu():
    c = _check("inference_mode")
    assert c.status == "pass", c.detail
    assert "grad_fn None" in c.detail


class _NoCompat(BuiltinRunner):
    def compat(self, *args, **kwargs):
        raise NotImplementedError("not in this runner")


def test_runner_without_compat_skips():
    v = verify.Verifier(_NoCompat(None), torch.device("cpu"), torch.float32, 1)
    c = guard("serialization", lambda: compat.check_serialization(v))
    assert c.status == "skip" and "not in this runner" in c.detail


def test_inference_mode_catches_a_kept_graph():
    class Leaky(BuiltinRunner):
        def compat(self, mode, size, state, x, grad_y=None):
            y, grads, facts = super().compat(mode, size, state, x, grad_y)
            facts["grad_fn"] = "LeakyBackward"
            return y, grads, facts
    v = verify.Verifier(Leaky(None), torch.device("cpu"), torch.float32, 1)
    c = guard("inference_mode", lambda: compat.check_inference_mode(v))
    assert c.status == "fail" and "LeakyBackward" in c.detail


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["compile", "autocast", "cuda_graph", "serialization", "inference_mode"])
def test_compat_checks_on_gpu(name):
    c = _check(name, device="cuda")
    if name == "compile" and not HAS_COMPILE_CHECK:
        assert c.status == "skip"
        return
    assert c.status == "pass", c.detail
    if name == "inference_mode":
        assert "keeps" in c.detail  # allocator growth measured on CUDA
