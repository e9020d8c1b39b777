"""Inputs that reach the function's edges, and the training / autograd calls: the helpers on their own, and
our ModelNew judged with them (a wrong tail fails, a correct path passes)."""
from collections import OrderedDict

import pytest
import torch

from mishbench.candidate.protocol import GRAD_MODES, grad_mode_calls, train_calls
from mishbench.op import ops
from mishbench.op.reference import Model
from mishbench.shapes import ODD_SIZES, Size
from mishbench.inputs import EXTREME_Z, extreme_rows, linear_params, make_inputs
from mishbench.rounding import MISH_GRAD_ZERO
from mishbench.verify.builtin import BuiltinRunner
from mishbench.verify.core import Verifier

CPU = torch.device("cpu")


def _state(size, seed=0):
    torch.manual_seed(seed)
    return Model(size.in_features, size.out_features).state_dict()


def _z(x, state, size):
    w, b = linear_params(state, size)
    return x.reshape(-1, size.in_features).double() @ w.t() + b


@pytest.mark.parametrize("size", [Size(33, 17, 9), Size(129, 123, 77), Size(1024, 13, 5), Size(16, 2048, 96)],
                         ids=str)
def test_extreme_rows_reach_both_softplus_tails_and_the_zero_of_mish_grad(size):
    state = _state(size)
    z = _z(extreme_rows(state, size, 3, torch.Generator().manual_seed(1)), state, size)
    assert z[0].min().item() == pytest.approx(-EXTREME_Z, abs=1e-9)
    assert z[2].max().item() == pytest.approx(EXTREME_Z, abs=1e-9)
    assert z[:, :].abs().max().item() <= EXTREME_Z * 1.5
    hit = (z[1] - MISH_GRAD_ZERO).abs() < 1e-9
    assert hit.sum() >= min(size.out_features, size.in_features // 2, 64)
    # Mish′ really vanishes there: the gradient row is ~0 where it was hit.
    assert ops.mish_grad(z[1][hit]).abs().max() < 1e-9


def test_extreme_rows_find_the_weight_by_shape_and_stay_bounded():
    size = Size(40, 6, 4)
    state = OrderedDict(weight=torch.full((4, 6), 1e-6), bias=torch.zeros(4))  # names unlike Model's
    x = extreme_rows(state, size, 3, torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all() and x.abs().max() <= 1e3  # a tiny W does not blow x up
    assert torch.isfinite(x.half()).all()
    with pytest.raises(ValueError, match="weight"):
        extreme_rows(OrderedDict(bias=torch.zeros(4)), size, 1, torch.Generator())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_mixed_batches_are_mostly_ordinary_rows_at_every_dtype(dtype):
    size = Size(129, 123, 77)
    state = _state(size)
    x = make_inputs(size, "mixed", torch.Generator().manual_seed(3), CPU, dtype, state=state)
    assert x.shape == (129, 123) and x.dtype == dtype and torch.isfinite(x).all()
    z = _z(x, state, size)
    extreme = z.abs().amax(1) > 60
    assert 2 <= int(extreme.sum()) <= 6  # a few rows, never a batch of extremes alone
    assert z.min() < -88 and z.max() > 88  # past fp32 exp overflow on both sides, in every dtype
    again = make_inputs(size, "mixed", torch.Generator().manual_seed(3), CPU, dtype, state=state)
    assert torch.equal(x, again)
    lead = make_inputs(Size(5, 13, 7), "mixed", torch.Generator().manual_seed(3), CPU, dtype, lead=(2, 3),
                       state=_state(Size(5, 13, 7)))
    assert lead.shape == (2, 3, 5, 13)
    with pytest.raises(ValueError, match="state"):
        make_inputs(size, "mixed", torch.Generator(), CPU, dtype)
    with pytest.raises(ValueError, match="kind"):
        make_inputs(size, "randn", torch.Generator(), CPU, dtype)


def test_the_cpu_shape_list_has_a_kernelbench_sized_batch():
    assert any(s.batch >= 1024 for s in ODD_SIZES)


def test_grad_mode_calls_on_the_reference():
    size = Size(6, 5, 3)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    g = torch.randn(2, 6, 3, generator=gen, dtype=torch.float64)

    def model():
        m = Model(5, 3).double()
        m.load_state_dict(_state(size))
        return m

    def one(gy):
        m = model()
        xx = x.clone().requires_grad_()
        m(xx).backward(gy)
        return xx.grad, m.linear.weight.grad, m.linear.bias.grad

    y, grads, _ = grad_mode_calls(model(), "accumulate", x, g)
    for got, a, b in zip((grads["x"], grads["linear.weight"], grads["linear.bias"]), one(g[0]), one(g[1])):
        assert torch.allclose(got, a + b)
    m = model()
    _, grads, facts = grad_mode_calls(m, "autograd_grad", x, g[0])
    assert facts["grad_written"] == [] and m.linear.weight.grad is None
    assert torch.allclose(grads["linear.weight"], one(g[0])[1])
    _, grads, _ = grad_mode_calls(model(), "sum", x, None)
    assert torch.allclose(grads["linear.bias"], one(torch.ones(6, 3, dtype=torch.float64))[2])
    row = g[0, :1]
    _, grads, _ = grad_mode_calls(model(), "expanded", x, row)
    assert torch.allclose(grads["x"], one(row.expand(6, 3))[0])
    _, grads, _ = grad_mode_calls(model(), "transposed", x, g[0].t().contiguous())
    assert torch.allclose(grads["linear.weight"], one(g[0])[1])
    with pytest.raises(ValueError, match="grad mode"):
        grad_mode_calls(model(), "twice", x, g)
    assert set(GRAD_MODES) == {"accumulate", "autograd_grad", "sum", "expanded", "transposed"}


def test_train_calls_update_one_module_in_place_and_restore_the_thread_count():
    torch.manual_seed(0)
    m = Model(4, 3)
    w = m.linear.weight
    ptr, before = w.data_ptr(), w.detach().clone()
    threads = torch.get_num_threads()
    xs, ts = [torch.randn(8, 4) for _ in range(2)], [torch.randn(8, 3) for _ in range(2)]
    losses = train_calls(m, xs, ts, 30, 0.1, 0.9)
    assert len(losses) == 30 and losses[-2] < losses[0]  # step 28 and step 0: the same batch
    assert m.linear.weight is w and w.data_ptr() == ptr and not torch.equal(w.detach(), before)
    assert torch.get_num_threads() == threads


def _verifier(seed=3):
    return Verifier(BuiltinRunner(), CPU, torch.float32, seed)


def test_our_modelnew_passes_the_new_checks():
    v = _verifier()
    for name in ("training", "autograd"):
        check = getattr(v, "check_" + name)()
        assert check.status == "pass", check.detail
    assert "200 in-place SGD steps" in v.check_training().detail


def test_a_softplus_wrong_below_minus_88_fails_forward_backward_and_shapes(monkeypatch):
    def overflowing(x):  # tanh(softplus) through e^-x: NaN once e^-x overflows, below -88 in fp32
        n = torch.exp(-x)
        return (1 + 2 * n) / (1 + 2 * n + 2 * n * n)

    monkeypatch.setattr(ops, "_tanh_softplus", overflowing)
    v = _verifier()
    for name in ("forward", "backward", "shapes", "autograd"):
        assert getattr(v, "check_" + name)().status == "fail", name
    assert v.check_training().status == "pass"  # ordinary inputs only: the tail is what fails


def test_a_lower_tail_that_returns_z_fails(monkeypatch):
    real = ops.mish
    monkeypatch.setattr(ops, "mish", lambda x: torch.where(x < -30, x, real(x)))
    v = _verifier()
    check = v.check_forward()
    assert check.status == "fail" and "mixed" in check.detail, check.detail
