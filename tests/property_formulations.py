"""Correct and wrong ways to compute Linear -> Mish -> Mish, batched over seeds, for the error-bar property test.

Every formulation is `fn(x, w, b, gy, dt) -> {'y', 'dx', 'dW', 'db'}` with x: (B, M, K), w: (B, N, K),
b: (B, N), gy: (B, M, N) in storage dtype dt (B = seeds); it returns y: (B, M, N), dx: (B, M, K),
dW: (B, N, K), db: (B, N) in dt. Half dtypes compute in fp32 and store once, as the kernels do.
Imports torch only (and the project's ops module where it can be found), so it survives a package move.
"""
import importlib
import math
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
HALF = (F16, BF16)
NAMES = ("y", "dx", "dW", "db")
THRESHOLD = 20.0  # PyTorch's softplus threshold, which the project's Mish uses too
Out = Dict[str, torch.Tensor]


class Case(NamedTuple):
    """One shape verify uses: x has shape lead + (k,) when verify passes it (lead () is a 1-D input)."""
    label: str
    lead: Tuple[int, ...]
    k: int
    n: int

    @property
    def m(self) -> int:
        return math.prod(self.lead)


def compute_dtype(dt: torch.dtype) -> torch.dtype:
    return F32 if dt in HALF else dt


# ---------------------------------------------------------------------------------------------------------
# Mish and Mish′ in several spellings, in whatever dtype they are given.
# ---------------------------------------------------------------------------------------------------------
def _t_rational(u):
    n = torch.exp(torch.clamp(u, max=THRESHOLD))
    tt = n * (n + 2)
    return tt / (tt + 2)


def mish_rational(u):
    """DESIGN.md's form: u·n(n+2)/(n(n+2)+2), n = eᵘ; u above the threshold (the project's composite path)."""
    return torch.where(u > THRESHOLD, u, u * _t_rational(u))


def mish_grad_terms(u):
    """Mish′ as its two terms t + u·σ(u)·(1 − t²) (the project's composite path)."""
    t = _t_rational(u)
    return t + u * torch.sigmoid(u) * (1 - t * t)


def mish_sigmoid(u):
    """tanh(softplus(u)) = σ(2 − σ)/(1 + (1 − σ)²) with σ = sigmoid(u): no cancellation at either end."""
    s = torch.sigmoid(u)
    return u * (s * (2 - s) / (1 + (1 - s) ** 2))


def mish_softplus(u):
    return u * torch.tanh(F.softplus(u))


def mish_log1p(u):
    uc = torch.clamp(u, max=THRESHOLD)
    return torch.where(u > THRESHOLD, u, u * torch.tanh(torch.log1p(torch.exp(uc))))


def mish_grad_closed(u):
    """Mish′ in the Mish paper's closed form eᵘ·ω/δ², ω = 4(u+1) + 4e²ᵘ + e³ᵘ + eᵘ(4u+6), δ = 2eᵘ + e²ᵘ + 2:
    it cancels in other terms than t + u·σ·(1 − t²) near the zero of Mish′."""
    uc = torch.clamp(u, max=THRESHOLD)
    e = torch.exp(uc)
    omega = 4 * (uc + 1) + 4 * e * e + e * e * e + e * (4 * uc + 6)
    delta = 2 * e + e * e + 2
    return torch.where(u > THRESHOLD, torch.ones_like(u), e * omega / (delta * delta))


def mish_wrong_tail(u):
    """WRONG: returns u (≈ −100) below −20, where Mish is ~0 (a threshold applied to |u|)."""
    return torch.where(u < -THRESHOLD, u, mish_rational(u))


def tf32_round(t: torch.Tensor) -> torch.Tensor:
    """fp32 rounded to TF32 (10 mantissa bits), round to nearest even, by bit arithmetic."""
    bits = t.contiguous().view(torch.int32)
    bits = (bits + 0xFFF + ((bits >> 13) & 1)) & -8192
    return bits.view(torch.float32)


# ---------------------------------------------------------------------------------------------------------
# Correct formulations.
# ---------------------------------------------------------------------------------------------------------
def _store(out: Dict[str, torch.Tensor], dt) -> Out:
    return {k: v.detach().to(dt) for k, v in out.items()}


def _composite_tail(z, x, w, gy, dt, operand=None) -> Out:
    """The composite path from a stored z on: Mish twice in the compute dtype, dz, then the three products.
    `operand` rounds the backward GEMMs' operands (a wrong formulation), None for none."""
    cdt = compute_dtype(dt)
    zc = z.to(cdt)
    m = mish_rational(zc)
    dz = gy.to(cdt) * mish_grad_terms(m) * mish_grad_terms(zc)
    dzs, ww, xx = dz.to(dt), w, x
    if operand is not None:
        dzs, ww, xx = operand(dzs), operand(w), operand(x)
    return {"y": mish_rational(m).to(dt), "dx": _acc(dzs, ww, dt), "dW": _acc(dzs.mT, xx, dt),
            "db": dz.sum(1).to(dt)}


def _acc(a, b, dt):
    """a @ b of dt operands accumulated in the compute dtype, stored once in dt: what the composite path's
    GEMMs are (fp32 accumulation for half types). Spelled out because torch 2.0.1's CPU bf16 bmm/baddbmm
    at these tiny shapes do not round that way: its composite_local copy failed bf16 3x5x4 and 4x6x3 at
    7.7-11.5x the bar while ops.composite_* (F.linear / mm) passed."""
    cdt = compute_dtype(dt)
    return torch.matmul(a.to(cdt), b.to(cdt)).to(dt)


def composite_local(x, w, b, gy, dt) -> Out:
    """ops.composite_forward/backward's math, batched: the GEMM in dt (z stored in dt), epilogue in fp32."""
    cdt = compute_dtype(dt)
    z = torch.baddbmm(b.to(cdt).unsqueeze(1), x.to(cdt), w.to(cdt).mT).to(dt)  # accumulated in cdt, stored in dt
    return _composite_tail(z, x, w, gy, dt)


def autograd_of(mish_fn: Callable) -> Callable:
    """Autograd through mish_fn∘mish_fn after a GEMM, all in the compute dtype; stored once."""
    def run(x, w, b, gy, dt) -> Out:
        cdt = compute_dtype(dt)
        xx, ww, bb = (t.detach().to(cdt).requires_grad_(True) for t in (x, w, b))
        with torch.enable_grad():
            y = mish_fn(mish_fn(torch.baddbmm(bb.unsqueeze(1), xx, ww.mT)))
            dx, dw, db = torch.autograd.grad(y, (xx, ww, bb), gy.to(cdt))
        return _store({"y": y, "dx": dx, "dW": dw, "db": db}, dt)
    run.__name__ = "autograd_" + mish_fn.__name__
    return run


def chunked_handwritten(x, w, b, gy, dt, rows: int = 32) -> Out:
    """Rows in chunks of 32; K summed in two halves; Mish via log1p; a hand-written backward with Mish′ in
    closed form; dW and db accumulated chunk by chunk (another reduction order over the batch)."""
    cdt = compute_dtype(dt)
    x, w, b, gy = (t.to(cdt) for t in (x, w, b, gy))
    h = x.shape[-1] // 2
    w1, w2 = w[..., :h].mT, w[..., h:].mT
    dw, db = torch.zeros_like(w), torch.zeros_like(b)
    ys, dxs = [], []
    for r0 in range(0, x.shape[1], rows):
        xr = x[:, r0:r0 + rows]
        z = xr[..., :h] @ w1 + xr[..., h:] @ w2 + b.unsqueeze(1)
        m = mish_log1p(z)
        ys.append(mish_log1p(m))
        dz = gy[:, r0:r0 + rows] * mish_grad_closed(m) * mish_grad_closed(z)
        dxs.append(dz @ w)
        dw = dw + dz.mT @ xr
        db = db + dz.sum(1)
    return _store({"y": torch.cat(ys, 1), "dx": torch.cat(dxs, 1), "dW": dw, "db": db}, dt)


def _per_seed(case: Case, one: Callable) -> Callable:
    """Run `one(x, w, b, gy)` seed by seed on x shaped as verify passes it (case.lead + (K,)); stack."""
    def run(x, w, b, gy, dt) -> Out:
        outs = {k: [] for k in NAMES}
        for i in range(x.shape[0]):
            got = one(x[i].reshape(case.lead + (case.k,)), w[i], b[i], gy[i].reshape(case.lead + (case.n,)))
            for k, shape in zip(NAMES, ((case.m, case.n), (case.m, case.k), (case.n, case.k), (case.n,))):
                outs[k].append(got[k].detach().reshape(shape))
        return {k: torch.stack(v) for k, v in outs.items()}
    return run


def eager(case: Case) -> Callable:
    """Eager PyTorch as verify's reference Model runs it: F.linear, F.mish twice, autograd, seed by seed."""
    def one(x, w, b, gy):
        x, w, b = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
        with torch.enable_grad():
            y = F.mish(F.mish(F.linear(x, w, b)))
            y.backward(gy)
        return {"y": y, "dx": x.grad, "dW": w.grad, "db": b.grad}
    return _per_seed(case, one)


def import_ops():
    """The project's op module with composite_forward/backward, wherever the package keeps it; None if absent."""
    for name in ("mishbench.ops", "mishbench.op.ops"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(mod, "composite_forward") and hasattr(mod, "composite_backward"):
            return mod
    return None


def ops_composite(case: Case) -> Optional[Callable]:
    """The real composite path (ops.composite_forward/backward), seed by seed; None where it is not found."""
    ops = import_ops()
    if ops is None:
        return None

    def one(x, w, b, gy):
        y, z = ops.composite_forward(x, w, b, save_z=True)
        dx, dw, db = ops.composite_backward(gy, z, x, w, (True, True, True))
        return {"y": y, "dx": dx, "dW": dw, "db": db}
    return _per_seed(case, one)


# ---------------------------------------------------------------------------------------------------------
# Wrong formulations.
# ---------------------------------------------------------------------------------------------------------
def tf32_forward(x, w, b, gy, dt) -> Out:
    """WRONG for fp32: x and W rounded to TF32 before the forward product (fp32 accumulate)."""
    return _composite_tail(torch.baddbmm(b.unsqueeze(1), tf32_round(x), tf32_round(w).mT), x, w, gy, dt)


def tf32_backward(x, w, b, gy, dt) -> Out:
    """WRONG for fp32: the dx and dW products' operands rounded to TF32 (the forward is correct)."""
    return _composite_tail(torch.baddbmm(b.unsqueeze(1), x, w.mT), x, w, gy, dt, operand=tf32_round)


def disguised(low: torch.dtype) -> Callable:
    """WRONG: every stored tensor (inputs, z, Mish(z), y, dz and the grads) rounded to `low`, computed in
    the class's dtype in between and returned in it: fp16 in fp32's clothes, or fp32 in float64's."""
    def run(x, w, b, gy, dt) -> Out:
        def r(t):
            return t.to(low).to(dt)
        x, w, b, gy = r(x), r(w), r(b), r(gy)
        z = r(torch.baddbmm(b.unsqueeze(1), x, w.mT))
        m = r(mish_rational(z))
        dz = r(gy * mish_grad_terms(m) * mish_grad_terms(z))
        return {"y": r(mish_rational(m)), "dx": r(dz @ w), "dW": r(dz.mT @ x), "db": r(dz.sum(1))}
    run.__name__ = f"{str(low).replace('torch.', '')}_disguise"
    return run


# ---------------------------------------------------------------------------------------------------------
# Inputs as verify draws them, plus a few extreme rows.
# ---------------------------------------------------------------------------------------------------------
# The zero of Mish′ in float64 (Newton on Mish′; the tests check it).
MISH_GRAD_ZERO = -1.1924312145154952


def with_extreme_rows(x, w, b):
    """x (B, M, K) float64 with 2·max(1, M // 64) of its rows changed (M ≥ 2): half of them so that z (with
    w (B, N, K), b (B, N)) is −100 in column 0 and +100 in column 1 (the others land anywhere in ±100), half
    so that z sits on the zero of Mish′ in the first min(N, K // 2 or 1) columns. Minimal-norm changes
    (least-norm solve), so the other columns of those rows stay as the draw made them, scaled."""
    x = x.clone()
    bsz, m, k = x.shape
    n = w.shape[-2]
    count = max(1, m // 64)
    rows = torch.linspace(0, m - 1, 2 * count).round().long().unique()
    for i, row in enumerate(rows.tolist()):
        if i % 2 == 0:
            cols, target = [0, 1] if n >= 2 else [0], torch.tensor([-100.0, 100.0][:min(n, 2)], dtype=F64)
        else:
            cols = list(range(min(n, max(1, k // 2))))
            target = torch.full((len(cols),), MISH_GRAD_ZERO, dtype=F64)
        wj = w[:, cols, :]  # (B, J, K)
        resid = target - (x[:, row, None, :] @ wj.mT).squeeze(1) - b[:, cols]  # (B, J)
        gram = wj @ wj.mT  # (B, J, J), J <= max(2, K // 2): well conditioned for random W
        x[:, row] += (wj.mT @ torch.linalg.solve(gram, resid.unsqueeze(-1))).squeeze(-1)
    return x


KINDS = ("rand", "randn10", "rand+extreme", "randn10+extreme")


def draw(case: Case, kind: str, bsz: int, gen: torch.Generator, dt):
    """x (B, M, K), w (B, N, K), b (B, N), gy (B, M, N) in dt, as verify draws them: the parameters as
    nn.Linear initialises them (U(±1/√K) in fp32, then cast), x by 'rand' (KernelBench's torch.rand) or
    'randn10' (randn·10) in float64 then cast, gy randn; '+extreme' mixes in rows from with_extreme_rows."""
    bound = 1.0 / math.sqrt(case.k)
    w = ((torch.rand(bsz, case.n, case.k, generator=gen, dtype=F64) * 2 - 1) * bound).to(F32).to(dt)
    b = ((torch.rand(bsz, case.n, generator=gen, dtype=F64) * 2 - 1) * bound).to(F32).to(dt)
    shape = (bsz, case.m, case.k)
    if kind.startswith("randn10"):
        x = torch.randn(shape, generator=gen, dtype=F64) * 10
    else:
        x = torch.rand(shape, generator=gen, dtype=F64)
    if kind.endswith("+extreme"):
        x = with_extreme_rows(x, w.to(F64), b.to(F64))
    gy = torch.randn(bsz, case.m, case.n, generator=gen, dtype=F64).to(dt)
    return x.to(dt), w, b, gy


def reference(x, w, b, gy) -> Out:
    """The float64 reference: Linear, F.mish twice, autograd, on the stored inputs converted to float64."""
    xx, ww, bb = (t.detach().to(F64).requires_grad_(True) for t in (x, w, b))
    with torch.enable_grad():
        y = F.mish(F.mish(torch.baddbmm(bb.unsqueeze(1), xx, ww.mT)))
        dx, dw, db = torch.autograd.grad(y, (xx, ww, bb), gy.to(F64))
    return {"y": y.detach(), "dx": dx, "dW": dw, "db": db}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per seed ‖out − ref‖/‖ref‖ (absolute where ref is 0, inf where out is not finite), as metrics.rel_err."""
    diff = (out.to(F64) - ref).reshape(out.shape[0], -1)
    num = torch.linalg.vector_norm(diff, dim=1)
    num = torch.where(torch.isfinite(diff).all(1), num, torch.full_like(num, math.inf))
    den = torch.linalg.vector_norm(ref.reshape(ref.shape[0], -1), dim=1)
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), num)
