"""Rounding scales and the condition-aware error floor (DESIGN.md, "Errors and tolerances"), in float64.

A correct implementation of y = Mish(Mish(x·Wᵀ + b)) and its gradients differs from the exact result by
what rounding does to it; how much depends on the inputs, not only on the dtype. `rounding_scales` builds,
from the float64 reference's own intermediates, one tensor S_T per checked tensor T (z, y, dz, dx, dW, db)
such that a correct computation errs by a few ε_acc·S_T (accumulation) plus ε_st·|T| (the final store);
`floor` turns that into a norm-wise relative bar. `second_order_fp64` is the float64 reference computed in
another reduction order: the float64 class's stand-in for eager PyTorch's error.

Depends on torch only. All tensors may carry leading batch dimensions (the property tests batch seeds):
x (..., M, K), weight (..., N, K), bias (..., N), grad_y (..., M, N); rows of any input shape are
flattened into M by the caller.
"""
import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

_F64 = torch.float64
# The zero of Mish′ (float64 Newton on mish′, see tests): where dz cancels, and H stays positive.
MISH_GRAD_ZERO = -1.1924312145154952
# PyTorch's softplus threshold, which F.mish and the project's Mish use: above it mish(u) = u exactly.
SOFTPLUS_THRESHOLD = 20.0


# ---------------------------------------------------------------------------------------------------------
# Mish and its derivatives in float64, free of overflow and cancellation for every finite x.
# ---------------------------------------------------------------------------------------------------------
def _tanh_softplus(u: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """t = tanh(softplus(u)) and 1 − t, each without cancellation, for any u (±inf too).

    With n = e^{−|u|} ≤ 1 nothing overflows: u ≤ 0 (n = eᵘ): t = T/(T+2), 1 − t = 2/(T+2), T = n(n+2);
    u > 0 (n = e^{−u}): t = (1+2n)/D, 1 − t = 2n²/D, D = 1 + 2n + 2n². For u > 20 this gives t = 1 to
    float64 rounding (1 − t < 1e-17), the same as PyTorch's softplus threshold of 20 would.
    """
    n = torch.exp(-u.abs())
    tt = n * (n + 2)
    d = 1 + 2 * n + 2 * n * n
    neg = u <= 0
    t = torch.where(neg, tt / (tt + 2), (1 + 2 * n) / d)
    one_minus_t = torch.where(neg, 2 / (tt + 2), 2 * n * n / d)
    return t, one_minus_t


def _mish_parts(u: torch.Tensor) -> Dict[str, torch.Tensor]:
    """mish(u), mish′(u), mish″(u) and A(u), mish′ written as its terms in absolute value (see below).

    mish′ = t + u·q with q = σ(u)·(1 − t²) = dt/du; mish″ = 2q + u·q′ with q′ = q·(1 − σ − 2tσ).

    A(u) = |t| + |u|·σ(u)·(1 + t²) for u ≤ 20, the terms t, u·σ and −u·σ·t² of mish′ = t + u·σ − u·σ·t²:
    every formula but a closed form forms 1 − t² from a rounded t (t ≈ 1 for u ≳ 3), so its error is
    relative to u·σ·t², not to the tiny u·σ·(1 − t²); autograd through n(n+2)/(n(n+2)+2) forms
    dt/dT = 1/(T+2) − T/(T+2)², two terms ≈ 2 that cancel, up to the threshold. Against the two-term
    |t| + |u·σ·(1 − t²)| fp32 eager's F.mish backward erred up to 16·ε·A per element at u in [3, 10) and
    that autograd up to 78·ε·A at u in [10, 20); with it the bar failed correct fp32 code (err/bar up to
    2.05 for the composite path, 6.49 for that autograd, over 1000 seeds at c = 4). Above
    PyTorch's softplus threshold (u > 20) mish(u) = u, mish′ = 1 exactly, and A = 1.
    """
    t, omt = _tanh_softplus(u)
    s = torch.sigmoid(u)
    q = s * omt * (1 + t)  # σ·(1 − t²), with 1 − t² = (1 − t)(1 + t): no cancellation as t → 1
    uq = u * q
    abs_grad = torch.where(u > SOFTPLUS_THRESHOLD, torch.ones_like(u), t.abs() + u.abs() * s * (1 + t * t))
    return {"mish": u * t, "t": t, "grad": t + uq, "abs_grad": abs_grad,
            "grad2": 2 * q + uq * (torch.sigmoid(-u) - 2 * t * s)}


def mish_mish_parts(z: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The elementwise quantities the rounding scales are made of, for z of any shape (float64).

    y = g(z) = mish(m) with m = mish(z); h = g′ = mish′(m)·mish′(z); h′ = mish″(m)·mish′(z)² + mish′(m)·mish″(z);
    H = A(m)·|mish′(z)| + |mish′(m)|·A(z) and G = |y| + |mish′(m)|·|m|, as `rounding_scales` says why.
    """
    z = z.to(_F64)
    inner = _mish_parts(z)
    m = inner["mish"]
    outer = _mish_parts(m)
    y = outer["mish"]
    dm = outer["grad"].abs()
    return {
        "m": m, "y": y,
        "h": outer["grad"] * inner["grad"],
        "h_prime": outer["grad2"] * inner["grad"] ** 2 + outer["grad"] * inner["grad2"],
        "H": outer["abs_grad"] * inner["grad"].abs() + dm * inner["abs_grad"],
        "G": y.abs() + dm * m.abs(),
    }


# ---------------------------------------------------------------------------------------------------------
# The rounding scales.
# ---------------------------------------------------------------------------------------------------------
def store_ratio(storage_dtype: Optional[torch.dtype]) -> float:
    """ε_st/ε_acc where a tensor stored in `storage_dtype` rounds again after its fp32 accumulation (fp16:
    8192, bf16: 65536), 0 where the store is the accumulator's own last rounding (fp32, float64) or None."""
    if storage_dtype is None:
        return 0.0
    _, eps_acc, eps_st = floor_constants(storage_dtype)
    return eps_st / eps_acc if eps_st > eps_acc else 0.0


def rounding_scales(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                    grad_y: Optional[torch.Tensor] = None,
                    storage_dtype: Optional[torch.dtype] = None) -> Dict[str, torch.Tensor]:
    """S_T for T in 'z', 'y' and, with grad_y, 'dz', 'dx', 'dW', 'db' (float64, T's shape).

    x: (..., M, K), weight: (..., N, K), bias: (..., N) or None, grad_y: (..., M, N) or None; the values the
    subject saw (its storage dtype), converted to float64. Returns 'z', 'y', 'dz': (..., M, N), 'dx': (..., M, K),
    'dW': (..., N, K), 'db': (..., N). `storage_dtype`: the class's dtype; for fp16/bf16 it adds the stored
    pre-activation's rounding (r below); None (or fp32, float64) adds nothing. The rules (∘ elementwise, roots
    and squares elementwise, r = store_ratio(storage_dtype) = ε_st/ε_acc for half types, else 0):

      S_z  = √((x∘x)·(W∘W)ᵀ + b∘b)              each product and the bias rounds once: root-sum-square
      S_y  = |g′(z)|∘S_z + G(z)                  g = Mish∘Mish: z's error carried through, plus g's own
      S_dz = |dy|∘(H(z) + |h′(z)|∘(S_z + r|z|))  h = Mish′(Mish(z))·Mish′(z), dz = dy∘h(z)
      S_dx = √((dz∘dz + S_dz∘S_dz)·(W∘W))        dz's value and its own error both feed the product
      S_dW = √((dz∘dz + S_dz∘S_dz)ᵀ·(x∘x))
      S_db = √(Σ_rows (dz∘dz + S_dz∘S_dz))

    G(z), "the sum of the absolute values of the terms that form g": g is formed as y = m·t(m) with
    m = z·t(z), t = tanh∘softplus. Products and t (a ratio of positive sums) do not cancel, so each of
    them rounds with a relative error of a few ε; to first order the evaluation error of g at an exact z is
    ε·(|m·t(m)| + |∂y/∂m|·|m|) summed over those roundings: y itself (the outer product) and the inner
    product's rounding carried through the derivative ∂y/∂m = Mish′(m), G(z) = |y| + |Mish′(m)|·|m|.
    The forward evaluates no Mish′, so nothing of Mish′ can cancel there: the exact slope carries δm.

    H(z), h = Mish′(m)·Mish′(z) "with each Mish′ written as its terms, in absolute value": each factor is
    evaluated with an error of a few ε·A(u), A(u) = |t| + |u|·σ(u)·(1 + t²) (u ≤ 20; 1 above), the terms
    t, u·σ and −u·σ·t² of Mish′ (_mish_parts says why the third counts), and the product's first-order
    error is the one factor's error times the other factor: H = A(m)·|Mish′(z)| + |Mish′(m)|·A(z). Not
    A(m)·A(z): no formula expands the product into its nine cross terms, and for z in [3, 20) (m ≈ z) that
    product is ≈ (2z)², up to 1600 where h ≈ 1, which lifted the fp32 floor of dx to a TF32 product's
    error (at 7x13x5 one TF32 backward product then passed 7 of 400 seeds; first-order: it fails all, the
    least ratio 7.75 over 4000). At z ≈ −1.19 Mish′(z) is 0 while its terms are not, and H = |Mish′(m)|·A(z)
    stays positive (Mish′(m) ≥ 0.4: m = mish(z) ≥ −0.31): a formula's rounding there is relative to the
    terms, not to the zero.

    Stored intermediates (half classes): the forward stores z in the storage dtype, and the backward starts
    from that z (the project's composite path saves it; eager's F.mish autograd saves its fp16/bf16 input
    likewise), so z carries ε_st·|z| on top of its accumulation error into dz: the r|z| term (fp16, 100 seeds,
    the composite path: without it err/bar reached 1.42 at 1x1x1, bf16 1.46; with it 0.51 and 0.74). Not
    in S_y: y needs neither it (fp16 worst 0.73 without) nor eager's stored m = Mish(z) (r·|Mish′(m)|·|m|
    changed no ratio), and r|z| there would double the half floor of y at the KernelBench shape (2.3·ε_st,
    above today's bar 2·e_eager ≈ ε_st). In fp32 and float64 the store is the accumulator's own last
    rounding (r = 0), held in S_z.
    h′(z) is analytic (mish_mish_parts); nothing overflows or turns NaN for finite z (|z| ≤ 1e300 tried).
    """
    x, weight = x.to(_F64), weight.to(_F64)
    z = torch.matmul(x, weight.transpose(-1, -2))
    sq = torch.matmul(x * x, (weight * weight).transpose(-1, -2))
    if bias is not None:
        bias = bias.to(_F64).unsqueeze(-2)
        z = z + bias
        sq = sq + bias * bias
    s_z = sq.sqrt()
    parts = mish_mish_parts(z)
    r = store_ratio(storage_dtype)
    s_zin = s_z + r * z.abs() if r else s_z  # z's error as the backward sees it: S_z, plus the store
    out = {"z": s_z, "y": parts["h"].abs() * s_z + parts["G"]}
    if grad_y is None:
        return out
    dy = grad_y.to(_F64)
    dz = dy * parts["h"]
    s_dz = dy.abs() * (parts["H"] + parts["h_prime"].abs() * s_zin)
    p = dz * dz + s_dz * s_dz
    out.update(dz=s_dz,
               dx=torch.matmul(p, weight * weight).sqrt(),
               dW=torch.matmul(p.transpose(-1, -2), x * x).sqrt(),
               db=p.sum(-2).sqrt())
    return out


# ---------------------------------------------------------------------------------------------------------
# The floor.
# ---------------------------------------------------------------------------------------------------------
def floor_constants(storage_dtype: torch.dtype) -> Tuple[float, float, float]:
    """(c, ε_acc, ε_st) of an accuracy class by its storage dtype.

    ε_st = finfo(storage).eps; ε_acc = fp32's eps for fp32, fp16 and bf16 (half types accumulate in fp32),
    float64's for float64; c = 4 for fp32 and float64, 1 for fp16 and bf16 (ε_st dominates there).
    """
    if storage_dtype == torch.float64:
        return 4.0, torch.finfo(_F64).eps, torch.finfo(_F64).eps
    if storage_dtype == torch.float32:
        return 4.0, torch.finfo(torch.float32).eps, torch.finfo(torch.float32).eps
    if storage_dtype in (torch.float16, torch.bfloat16):
        return 1.0, torch.finfo(torch.float32).eps, torch.finfo(storage_dtype).eps
    raise ValueError(f"no accuracy class for dtype {storage_dtype}: expected float32, float64, float16 or bfloat16")


def _finite_pair(s: torch.Tensor, r: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """S and R in float64 with R's non-finite elements (and non-finite S) zeroed, as metrics.rel_err does."""
    r = r.detach().to(_F64)
    s = s.detach().to(_F64)
    ok = torch.isfinite(r)
    r = torch.where(ok, r, torch.zeros_like(r))
    s = torch.where(ok & torch.isfinite(s), s, torch.zeros_like(s))
    return s, r


def floor_batched(s: torch.Tensor, r: torch.Tensor, storage_dtype: torch.dtype, lead: int = 1) -> torch.Tensor:
    """`floor` for each index of the first `lead` dimensions of S and R (same shape): a float64 tensor."""
    c, eps_acc, eps_st = floor_constants(storage_dtype)
    s, r = _finite_pair(s, r)
    s_norm = torch.linalg.vector_norm(s.reshape(s.shape[:lead] + (-1,)), dim=-1)
    r_norm = torch.linalg.vector_norm(r.reshape(r.shape[:lead] + (-1,)), dim=-1)
    # An all-zero reference: rel_err reports the absolute error, so the floor is absolute too.
    rel = c * (eps_acc * s_norm + eps_st * r_norm) / torch.where(r_norm > 0, r_norm, torch.ones_like(r_norm))
    return torch.where(r_norm > 0, rel, c * eps_acc * s_norm)


def floor(s: torch.Tensor, r: torch.Tensor, storage_dtype: torch.dtype) -> float:
    """c·(ε_acc·‖S‖ + ε_st·‖R‖)/‖R‖: the least bar a tensor R computed in `storage_dtype` gets.

    s: the rounding scale S_T, r: the float64 reference R, same shape. Norms are Frobenius over every
    element; R's non-finite elements are left out (as rel_err leaves them out). With ‖R‖ = 0 the floor is
    the absolute c·ε_acc·‖S‖, matching rel_err, which returns the absolute error for a zero reference.
    """
    if s.shape != r.shape:
        raise ValueError(f"S has shape {tuple(s.shape)} but R has {tuple(r.shape)}")
    return float(floor_batched(s.reshape(1, -1), r.reshape(1, -1), storage_dtype)[0])


def kappa(s: torch.Tensor, r: torch.Tensor) -> float:
    """‖S‖/‖R‖, the condition the floor reflects (inf for a zero R with nonzero S, 0 if both are zero)."""
    s, r = _finite_pair(s, r)
    s_norm, r_norm = float(torch.linalg.vector_norm(s)), float(torch.linalg.vector_norm(r))
    if r_norm == 0.0:
        return 0.0 if s_norm == 0.0 else math.inf
    return s_norm / r_norm


# ---------------------------------------------------------------------------------------------------------
# The float64 class's eager stand-in.
# ---------------------------------------------------------------------------------------------------------
def _matmul_two_halves(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a·b with the contracted dimension summed as two halves, then added: another reduction order."""
    k = a.shape[-1] // 2
    return torch.matmul(a[..., :k], b[..., :k, :]) + torch.matmul(a[..., k:], b[..., k:, :])


def second_order_fp64(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                      grad_y: Optional[torch.Tensor] = None) -> Dict[str, Optional[torch.Tensor]]:
    """The float64 reference with every reduction summed in two halves: 'y', 'dx', 'dW', 'db'.

    x: (..., M, K), weight: (..., N, K), bias: (..., N) or None, grad_y: (..., M, N) or None (then the grads are
    None). Each product's own reduction dimension is split: z = x·Wᵀ over K, dx = dz·W over N, dW = dzᵀ·x
    and db = Σ dz over the rows M. The elementwise part is PyTorch's own float64 F.mish and its autograd,
    as in the reference Model, so only the reduction order differs. A dimension of size 1 has nothing to
    split: there the result equals the reference and e_eager is 0 (the floor then sets the bar).
    """
    x, weight = x.to(_F64), weight.to(_F64)
    z = _matmul_two_halves(x, weight.transpose(-1, -2))
    if bias is not None:
        z = z + bias.to(_F64).unsqueeze(-2)
    if grad_y is None:
        with torch.no_grad():
            return {"y": F.mish(F.mish(z)), "dx": None, "dW": None, "db": None}
    with torch.enable_grad():
        zz = z.detach().requires_grad_(True)
        y = F.mish(F.mish(zz))
        (dz,) = torch.autograd.grad(y, zz, grad_y.to(_F64))
    m = dz.shape[-2] // 2
    return {"y": y.detach(),
            "dx": _matmul_two_halves(dz, weight),
            "dW": _matmul_two_halves(dz.transpose(-1, -2), x),
            "db": dz[..., :m, :].sum(-2) + dz[..., m:, :].sum(-2)}
