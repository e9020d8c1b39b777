"""mishbench.rounding: the float64 Mish derivatives, the rounding scales, the floor, the two-halves reference."""
import importlib
import math

import pytest
import torch
import torch.nn.functional as F

rounding = importlib.import_module("mishbench.rounding")  # torch-only; one place to change if it moves
F64 = torch.float64
EPS32 = torch.finfo(torch.float32).eps


def _z_grid():
    return torch.cat([torch.linspace(-100, 100, 40001, dtype=F64),
                      torch.tensor([rounding.MISH_GRAD_ZERO, -1.19, -1.2, 0.0, 20.0, 20.0001], dtype=F64)])


def test_mish_parts_match_autograd_in_float64():
    z = _z_grid()
    parts = rounding.mish_mish_parts(z)
    zz = z.clone().requires_grad_(True)
    y = F.mish(F.mish(zz))
    (h,) = torch.autograd.grad(y.sum(), zz, create_graph=True)
    (hp,) = torch.autograd.grad(h.sum(), zz)
    assert torch.allclose(parts["y"], y.detach(), rtol=1e-14, atol=0)
    # Relative to H (the two-term scale): h itself crosses zero at z ≈ -1.19.
    assert float(((parts["h"] - h.detach()).abs() / parts["H"]).nan_to_num(0).max()) < 1e-14
    # h′ against autograd's double backward: equal to ~1e-14 absolute, and relatively to 2e-10 for z < 8.
    # Above, autograd's 1 − t² (t ≈ 1) loses digits (relative 3e-4 at z in [10, 15); above z ≈ 18 it is 0
    # while the analytic h′ is ~-1e-14): there the analytic one is the exact one (central difference below).
    assert float((parts["h_prime"] - hp).abs().max()) < 2e-14
    inner = (z > -30) & (z < 8)
    assert float(((parts["h_prime"] - hp).abs() / (hp.abs() + 1e-12))[inner].max()) < 1e-9


def test_h_prime_matches_central_difference():
    z = torch.linspace(-30, 30, 6001, dtype=F64)
    d = 1e-5
    hc = (rounding.mish_mish_parts(z + d)["h"] - rounding.mish_mish_parts(z - d)["h"]) / (2 * d)
    hp = rounding.mish_mish_parts(z)["h_prime"]
    assert float(((hc - hp).abs() / (hp.abs() + 1e-3)).max()) < 1e-7


def test_no_nan_for_finite_z():
    z = torch.tensor([-1e300, -1e5, -746.0, -745.0, -100.0, 100.0, 710.0, 800.0, 1e5, 1e300], dtype=F64)
    for name, v in rounding.mish_mish_parts(z).items():
        assert bool(torch.isfinite(v).all()), name


def test_mish_grad_zero():
    p = rounding._mish_parts(torch.tensor(rounding.MISH_GRAD_ZERO, dtype=F64))
    assert abs(float(p["grad"])) < 1e-15 and float(p["abs_grad"]) > 0.5


def _inputs(b=3, m=9, k=11, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, m, k, generator=g, dtype=F64) * 10
    w = (torch.rand(b, n, k, generator=g, dtype=F64) * 2 - 1) / math.sqrt(k)
    bias = (torch.rand(b, n, generator=g, dtype=F64) * 2 - 1) / math.sqrt(k)
    return x, w, bias, torch.randn(b, m, n, generator=g, dtype=F64)


def test_rounding_scales_shapes_and_batching():
    x, w, b, gy = _inputs()
    s = rounding.rounding_scales(x, w, b, gy)
    want = {"z": (3, 9, 6), "y": (3, 9, 6), "dz": (3, 9, 6), "dx": (3, 9, 11), "dW": (3, 6, 11), "db": (3, 6)}
    assert {k: tuple(v.shape) for k, v in s.items()} == want
    one = rounding.rounding_scales(x[1], w[1], b[1], gy[1])
    for k in want:
        assert torch.allclose(one[k], s[k][1], rtol=1e-13, atol=0), k
    assert set(rounding.rounding_scales(x, w, b)) == {"z", "y"}
    # S_z by the table: every product and the bias once, root-sum-square.
    assert torch.allclose(s["z"][0, 2, 3], ((x[0, 2] * w[0, 3]) ** 2).sum().add(b[0, 3] ** 2).sqrt())


def test_rounding_scales_bound_the_parts():
    """S_y ≥ 2|y| (G counts y twice), S_dz ≥ |dz| (H ≥ |h|), S_dx ≥ |dx|/√(N) etc.: the floor is never below
    what a single rounding of the result would be."""
    x, w, b, gy = _inputs(seed=1)
    s = rounding.rounding_scales(x, w, b, gy)
    z = x @ w.mT + b.unsqueeze(1)
    y = F.mish(F.mish(z))
    dz = gy * rounding.mish_mish_parts(z)["h"]
    assert bool((s["y"] >= 2 * y.abs() * (1 - 1e-12)).all())
    assert bool((s["dz"] >= dz.abs() * (1 - 1e-12)).all())
    assert bool((s["db"] >= dz.sum(1).abs() / math.sqrt(x.shape[1]) * (1 - 1e-12)).all())


def test_floor_constants_and_formula():
    assert rounding.floor_constants(torch.float32) == (4.0, EPS32, EPS32)
    assert rounding.floor_constants(torch.float64)[0] == 4.0
    assert rounding.floor_constants(torch.bfloat16) == (1.0, EPS32, torch.finfo(torch.bfloat16).eps)
    assert rounding.floor_constants(torch.float16) == (1.0, EPS32, torch.finfo(torch.float16).eps)
    with pytest.raises(ValueError, match="int32"):
        rounding.floor_constants(torch.int32)
    s, r = torch.tensor([3.0, 4.0], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    assert rounding.floor(s, r, torch.float32) == pytest.approx(4 * (EPS32 * 5 + EPS32 * 1) / 1)
    assert rounding.floor(s, r, torch.bfloat16) == pytest.approx(EPS32 * 5 + torch.finfo(torch.bfloat16).eps)
    assert rounding.kappa(s, r) == pytest.approx(5.0)


def test_floor_of_a_zero_reference_is_absolute():
    """metrics.rel_err returns the absolute error for an all-zero reference; the floor follows it."""
    s = torch.tensor([3.0, 4.0], dtype=F64)
    zero = torch.zeros(2, dtype=F64)
    assert rounding.floor(s, zero, torch.float32) == pytest.approx(4 * EPS32 * 5)
    assert rounding.floor(zero, zero, torch.float32) == 0.0
    assert rounding.kappa(zero, zero) == 0.0 and rounding.kappa(s, zero) == math.inf


def test_floor_leaves_out_non_finite_reference_elements():
    s = torch.tensor([1.0, float("inf"), 2.0], dtype=F64)
    r = torch.tensor([1.0, float("inf"), float("nan")], dtype=F64)
    assert rounding.floor(s, r, torch.float32) == pytest.approx(4 * (EPS32 * 1 + EPS32 * 1))


def test_floor_batched_matches_floor():
    x, w, b, gy = _inputs(seed=2)
    s = rounding.rounding_scales(x, w, b, gy)["dx"]
    r = torch.randn(s.shape, dtype=F64)
    per = rounding.floor_batched(s, r, torch.float32)
    assert per.shape == (3,)
    for i in range(3):
        assert float(per[i]) == pytest.approx(rounding.floor(s[i], r[i], torch.float32), rel=1e-14)


def _reference(x, w, b, gy):
    xx, ww, bb = (t.clone().requires_grad_(True) for t in (x, w, b))
    y = F.mish(F.mish(F.linear(xx, ww, bb)))
    y.backward(gy)
    return {"y": y.detach(), "dx": xx.grad, "dW": ww.grad, "db": bb.grad}


def test_second_order_fp64_is_another_order_of_the_reference():
    x, w, b, gy = (t[0] for t in _inputs(m=33, k=20, n=12, seed=3))
    ref = _reference(x, w, b, gy)
    got = rounding.second_order_fp64(x, w, b, gy)
    for k in ("y", "dx", "dW", "db"):
        err = float(torch.linalg.vector_norm(got[k] - ref[k]) / torch.linalg.vector_norm(ref[k]))
        assert err < 1e-14, k
    # Not the same computation: some element differs in the last bits.
    assert any(not torch.equal(got[k], ref[k]) for k in ("y", "dx", "dW"))
    fwd = rounding.second_order_fp64(x, w, b)
    assert torch.equal(fwd["y"], got["y"]) and fwd["dx"] is None


def test_second_order_fp64_at_1x1x1_has_nothing_to_split():
    x, w, b, gy = (t[0] for t in _inputs(m=1, k=1, n=1, seed=4))
    ref, got = _reference(x, w, b, gy), rounding.second_order_fp64(x, w, b, gy)
    for k in ("y", "dx", "dW", "db"):
        assert torch.allclose(got[k], ref[k], rtol=1e-15, atol=0), k


def test_abs_grad_is_mish_grad_as_three_terms():
    """A(u) = |t| + |u|·σ(u)·(1 + t²) up to the softplus threshold, 1 above; never below |Mish′(u)|."""
    u = torch.tensor([-30.0, rounding.MISH_GRAD_ZERO, 0.0, 3.0, 10.0, 19.5, 20.0, 20.5, 100.0], dtype=F64)
    p = rounding._mish_parts(u)
    t, s = torch.tanh(F.softplus(u)), torch.sigmoid(u)
    want = torch.where(u > 20, torch.ones_like(u), t.abs() + u.abs() * s * (1 + t * t))
    assert torch.allclose(p["abs_grad"], want, rtol=1e-14, atol=0)
    assert bool((p["abs_grad"] >= p["grad"].abs() * (1 - 1e-15)).all())
    assert float(p["abs_grad"][5]) == pytest.approx(1 + 2 * 19.5, rel=1e-6)  # t ≈ σ ≈ 1: ≈ 1 + 2u


def test_h_scale_is_first_order_in_the_two_factors():
    z = torch.tensor([-5.0, rounding.MISH_GRAD_ZERO, 0.5, 4.0, 15.0], dtype=F64)
    parts = rounding.mish_mish_parts(z)
    inner, outer = rounding._mish_parts(z), rounding._mish_parts(parts["m"])
    want = outer["abs_grad"] * inner["grad"].abs() + outer["grad"].abs() * inner["abs_grad"]
    assert torch.allclose(parts["H"], want, rtol=1e-15, atol=0)
    assert float(parts["H"][1]) > 0.2  # positive at the zero of Mish′
    assert float(parts["H"][4]) < 2 * 31 + 1  # ≈ 2·A(15), not A(15)² ≈ 961


def test_stored_z_counts_in_dz_only_for_half_storage():
    x, w, b, gy = _inputs(seed=5)
    plain = rounding.rounding_scales(x, w, b, gy)
    for dt in (torch.float32, torch.float64):
        assert rounding.store_ratio(dt) == 0.0
        same = rounding.rounding_scales(x, w, b, gy, storage_dtype=dt)
        assert all(torch.equal(same[k], plain[k]) for k in plain)
    r = rounding.store_ratio(torch.float16)
    assert r == torch.finfo(torch.float16).eps / EPS32 == 8192.0
    half = rounding.rounding_scales(x, w, b, gy, storage_dtype=torch.float16)
    z = x @ w.mT + b.unsqueeze(1)
    parts = rounding.mish_mish_parts(z)
    assert torch.allclose(half["dz"] - plain["dz"], gy.abs() * parts["h_prime"].abs() * r * z.abs(), rtol=1e-10)
    assert torch.equal(half["y"], plain["y"]) and torch.equal(half["z"], plain["z"])
