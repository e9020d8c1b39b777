"""Inputs from a seed: x as KernelBench draws it, randn·10, and batches with a few extreme rows mixed in
(DESIGN.md: inputs cover the function's range). Part of the judge (truth.py), drawn in the harness only."""
from typing import Optional, Sequence, Tuple

import torch

from mishbench import rounding
from mishbench.shapes import Size

State = "OrderedDict[str, torch.Tensor]"


# Where the extreme rows of a "mixed" batch take z = x·Wᵀ + b: both tails of softplus, far past fp32's
# exp overflow at |z| ≈ 88 (e^z underflows below, a log1p(e^-z) + z form overflows there), and the zero of
# Mish′, where dz vanishes.
EXTREME_Z = 100.0
# |x| of an extreme row stays below this (fp16's range with room for the GEMM); a tiny W then simply does
# not reach ±100.
EXTREME_X_CAP = 1e3


def linear_params(state: State, size: Size, dtype: Optional[torch.dtype] = torch.float64
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """W (out, in) and b (out,) of a state on the CPU in `dtype` (None: their own), found by shape, so
    parameter names do not matter; a state without a bias gives zeros."""
    tensors = [v for v in state.values() if isinstance(v, torch.Tensor)]
    w = next((v for v in tensors if tuple(v.shape) == (size.out_features, size.in_features)), None)
    b = next((v for v in tensors if tuple(v.shape) == (size.out_features,)), None)
    if w is None:
        raise ValueError(f"the state has no ({size.out_features}, {size.in_features}) weight")
    dtype = dtype or w.dtype
    w = w.detach().to("cpu", dtype)
    b = torch.zeros(size.out_features, dtype=dtype) if b is None else b.detach().to("cpu", dtype)
    return w, b


def extreme_rows(state: State, size: Size, n: int, generator: torch.Generator) -> torch.Tensor:
    """n rows of x (float64, CPU) whose pre-activations under `state` reach the function's edges, in turn:
    one output at z = −100, one at z = +100 (the row scaled from a random direction, so its other outputs
    spread over ±100 too), and up to 64 outputs at the zero of Mish′ (solved for, the rest ordinary)."""
    w, b = linear_params(state, size)
    rows = []
    for i in range(n):
        x0 = torch.randn(size.in_features, generator=generator, dtype=torch.float64) * 10
        z0 = w @ x0
        if i % 3 == 1:
            rows.append(_hit_mish_grad_zero(w, b, x0, generator))
            continue
        target = -EXTREME_Z if i % 3 == 0 else EXTREME_Z
        j = int(z0.abs().argmax())
        alpha = (target - float(b[j])) / float(z0[j]) if float(z0[j]) != 0.0 else 1.0
        top = float(x0.abs().max())
        if top > 0 and abs(alpha) * top > EXTREME_X_CAP:
            alpha = EXTREME_X_CAP / top * (1.0 if alpha > 0 else -1.0)
        rows.append(alpha * x0)
    return torch.stack(rows) if rows else torch.empty(0, size.in_features, dtype=torch.float64)


def _hit_mish_grad_zero(w: torch.Tensor, b: torch.Tensor, x0: torch.Tensor, generator: torch.Generator):
    """x0 moved the least distance that puts a random set of outputs at the zero of Mish′."""
    n_out, k = w.shape
    m = max(1, min(n_out, k // 2, 64))
    pick = torch.randperm(n_out, generator=generator)[:m]
    wj = w[pick]
    r = rounding.MISH_GRAD_ZERO - b[pick] - wj @ x0
    x = x0 + torch.linalg.pinv(wj) @ r
    return x.clamp(-EXTREME_X_CAP, EXTREME_X_CAP)


def make_inputs(size: Size, kind: str, generator: torch.Generator, device, dtype, lead: Sequence[int] = (),
                state: Optional[State] = None):
    """x for a trial: 'rand' (KernelBench's own torch.rand), 'randn10' (randn·10: both Mish branches and the
    x > 20 threshold are hit) or 'mixed' (randn10 with a few rows -- one in 8, at most 6, at random places --
    replaced by `extreme_rows` of `state`: never judged alone, so a wrong tail dominates the norm while
    subnormal-level differences of correct formulas vanish). Drawn on the CPU in float64 so every dtype sees
    the same values."""
    shape = tuple(lead) + (size.batch, size.in_features) if lead else (size.batch, size.in_features)
    if kind == "rand":
        x = torch.rand(shape, generator=generator, dtype=torch.float64)
    elif kind in ("randn10", "mixed"):
        x = torch.randn(shape, generator=generator, dtype=torch.float64) * 10
    else:
        raise ValueError(f"unknown input kind {kind!r}")
    if kind == "mixed":
        if state is None:
            raise ValueError("'mixed' inputs need the state: the extreme rows are solved for its W and b")
        flat = x.reshape(-1, size.in_features)
        n = min(6, flat.shape[0] // 8)
        if n:
            where = torch.randperm(flat.shape[0], generator=generator)[:n]
            flat[where] = extreme_rows(state, size, n, generator)
    return x.to(device=device, dtype=dtype)
