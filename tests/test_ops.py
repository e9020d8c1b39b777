"""The op on its composite path: math, stability, autograd, shapes and errors (CPU, runs everywhere)."""
import pytest
import torch
import torch.nn.functional as F

from mishbench.op import ops
from mishbench.op.model import ModelNew
from mishbench.op.reference import Model

HALF_ON_CPU = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 1)


def test_mish_matches_torch_in_float64():
    x = torch.cat([torch.linspace(-60, 60, 100001, dtype=torch.float64),
                   torch.tensor([-1e4, 1e4, 19.999, 20.0, 20.001], dtype=torch.float64)])
    torch.testing.assert_close(ops.mish(x), F.mish(x), rtol=1e-14, atol=1e-300)


def test_mish_fp32_as_accurate_as_f_mish():
    # Truth from the fp32-rounded inputs, so input rounding (amplified ~|x| times for negative x) is not counted.
    xf = (torch.randn(100000, dtype=torch.float64) * 15).float()
    want = F.mish(xf.double())

    def worst_rel(y):
        return ((y.double() - want).abs() / want.abs().clamp_min(1e-30)).max().item()

    assert worst_rel(ops.mish(xf)) <= max(2 * worst_rel(F.mish(xf)), 8 * torch.finfo(torch.float32).eps)


@pytest.mark.parametrize("value", [1e4, -1e4, 80.0, -80.0, 1e30, -1e30])
def test_mish_and_grad_stable_at_extremes(value):
    x = torch.tensor([value], dtype=torch.float32)
    assert torch.isfinite(ops.mish(x)).all()
    assert torch.isfinite(ops.mish_grad(x)).all()
    assert torch.isfinite(ops.mish_grad(ops.mish(x))).all()


def test_special_values_propagate_like_f_mish():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0])
    torch.testing.assert_close(ops.mish(x), F.mish(x), equal_nan=True)


def test_mish_grad_matches_autograd():
    x = torch.linspace(-30, 30, 2001, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(F.mish(x).sum(), x)
    torch.testing.assert_close(ops.mish_grad(x.detach()), g, rtol=1e-12, atol=1e-14)


# (4, 0, 5): in_features == 0 (the output is mish(mish(bias))); (0, 3, 2): an empty batch.
@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 13, 5), (129, 10, 20), (1000, 123, 77), (4, 0, 5), (0, 3, 2)])
def test_forward_backward_match_reference_fp64(shape):
    b, k, n = shape
    torch.manual_seed(0)
    ref = Model(k, n).double()
    new = ModelNew(k, n).double()
    new.load_state_dict(ref.state_dict())
    x = (torch.randn(b, k, dtype=torch.float64) * 10).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    gy = torch.randn(b, n, dtype=torch.float64)
    ref(x).backward(gy)
    new(x2).backward(gy)
    torch.testing.assert_close(new(x2), ref(x))
    torch.testing.assert_close(x2.grad, x.grad)
    torch.testing.assert_close(new.linear.weight.grad, ref.linear.weight.grad)
    torch.testing.assert_close(new.linear.bias.grad, ref.linear.bias.grad)


def test_leading_dims_and_1d_input():
    torch.manual_seed(0)
    ref, new = Model(13, 7).double(), ModelNew(13, 7).double()
    new.load_state_dict(ref.state_dict())
    for x in (torch.randn(2, 3, 5, 13, dtype=torch.float64), torch.randn(13, dtype=torch.float64)):
        torch.testing.assert_close(new(x), ref(x))


def test_same_parameters_names_count_and_init_as_model():
    torch.manual_seed(123)
    ref = Model(37, 11)
    torch.manual_seed(123)
    new = ModelNew(37, 11)
    assert [n for n, _ in new.named_parameters()] == [n for n, _ in ref.named_parameters()]
    for (_, a), (_, b) in zip(new.named_parameters(), ref.named_parameters()):
        assert torch.equal(a, b)
    new.load_state_dict(ref.state_dict(), strict=True)
    ref.load_state_dict(new.state_dict(), strict=True)


def test_saves_only_preactivation_and_no_graph_under_no_grad():
    new = ModelNew(6, 4)
    x = torch.randn(3, 6)
    with torch.no_grad():
        assert new(x).grad_fn is None
    y = new(x)
    assert y.grad_fn is not None


@pytest.mark.skipif(not HALF_ON_CPU, reason="torch 2.0 has no fp16/bf16 CPU matmul")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_types_on_cpu(dtype):
    torch.manual_seed(0)
    ref, new = Model(32, 16).to(dtype), ModelNew(32, 16).to(dtype)
    new.load_state_dict(ref.state_dict())
    x = torch.randn(8, 32, dtype=dtype)
    y = new(x)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), ref(x).float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("bad, match", [
    (lambda: torch.randn(4, 7), "in_features"),
    (lambda: torch.tensor(1.0), "0-dim"),
    (lambda: torch.ones(4, 6, dtype=torch.int64), "dtype"),
    (lambda: torch.randn(4, 6, dtype=torch.float64), "dtype"),
])
def test_bad_inputs_raise_clear_errors(bad, match):
    new = ModelNew(6, 3)
    with pytest.raises((ValueError, TypeError), match=match):
        new(bad())


def test_bad_precision_names_the_value():
    with pytest.raises(ValueError, match="'fp8'"):
        ModelNew(4, 4, precision="fp8")


def test_cpu_runs_composite_and_says_so():
    assert ModelNew(4, 4).implementation("cpu") == "composite"
    assert ModelNew(4, 4, precision="3xtf32").resolved_precision(torch.randn(2, 4)) == "ieee"


def test_precision_resolution_cached_and_checked():
    from mishbench.op.precision import resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("3xtf32", torch.float32, cpu) == "ieee"  # the CPU computes plain fp32
    assert resolve_precision("3xtf32", torch.float32, cpu) == "ieee"  # and again, from the cache
    assert resolve_precision("tf32", torch.bfloat16, cpu) == "native"
    for bad in ("fp8", ["ieee"]):  # a wrong name, and an unhashable value
        with pytest.raises(ValueError, match="unknown precision"):
            resolve_precision(bad, torch.float32, cpu)
