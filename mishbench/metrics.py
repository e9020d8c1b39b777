"""Error metrics and bars (DESIGN.md, "Errors and tolerances")."""
import math
from typing import Optional

import torch

# KernelBench's own allclose tolerances, reported as extra information only.
KERNELBENCH_TOL = {torch.float32: 1e-4, torch.float64: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def _aligned_diff(out: torch.Tensor, ref64: torch.Tensor) -> Optional[torch.Tensor]:
    """out − ref in float64 with matching NaN/±inf treated as equal; None where they do not match."""
    out64 = out.detach().to(torch.float64)
    ref64 = ref64.detach().to(torch.float64)
    if out64.shape != ref64.shape:
        return None
    out_nan, ref_nan = torch.isnan(out64), torch.isnan(ref64)
    out_inf, ref_inf = torch.isinf(out64), torch.isinf(ref64)
    if not torch.equal(out_nan, ref_nan) or not torch.equal(out_inf, ref_inf):
        return None
    if out_inf.any() and not torch.equal(out64[out_inf], ref64[ref_inf]):
        return None
    finite = ~(ref_nan | ref_inf)
    return torch.where(finite, out64 - ref64, torch.zeros_like(out64))


def rel_err(out: torch.Tensor, ref64: torch.Tensor) -> float:
    """‖out − ref64‖ / ‖ref64‖ over the finite elements; inf where shapes or NaN/inf positions differ."""
    diff = _aligned_diff(out, ref64)
    if diff is None:
        return math.inf
    ref = ref64.detach().to(torch.float64)
    ref = torch.where(torch.isfinite(ref), ref, torch.zeros_like(ref))
    num = torch.linalg.vector_norm(diff).item()
    den = torch.linalg.vector_norm(ref).item()
    if den == 0.0:
        return num  # an all-zero reference: absolute error is the only meaningful measure
    return num / den


def max_abs_err(out: torch.Tensor, ref64: torch.Tensor) -> float:
    diff = _aligned_diff(out, ref64)
    if diff is None:
        return math.inf
    return diff.abs().max().item() if diff.numel() else 0.0


def eps_floor(dtype: torch.dtype) -> float:
    """c·ε of the storage dtype: c = 8 for fp32 (fp32/tf32 classes) and fp64, 1 for fp16/bf16."""
    c = 1.0 if dtype in (torch.float16, torch.bfloat16) else 8.0
    return c * torch.finfo(dtype).eps


def error_bar(eager_err: float, dtype: torch.dtype) -> float:
    """max(2·e(eager), c·ε): the most an implementation in this accuracy class may err."""
    return max(2.0 * eager_err, eps_floor(dtype))


def allclose_kernelbench(out: torch.Tensor, ref: torch.Tensor) -> bool:
    """KernelBench's verdict: allclose(atol = rtol = 1e-4 for fp32, 1e-2 for half types)."""
    tol = KERNELBENCH_TOL.get(ref.dtype, 1e-4)
    if out.shape != ref.shape:
        return False
    return bool(torch.allclose(out.detach().to(torch.float64), ref.detach().to(torch.float64),
                               atol=tol, rtol=tol, equal_nan=True))


def _unravel(flat: int, shape) -> tuple:
    # torch.unravel_index exists only from torch 2.2.
    idx = []
    for size in reversed(shape):
        idx.append(flat % size)
        flat //= size
    return tuple(reversed(idx))


def mismatch_summary(out: torch.Tensor, ref: torch.Tensor, bar: float) -> str:
    """One line: how many elements are off, the worst one and where, NaN/inf mismatches."""
    out64, ref64 = out.detach().to(torch.float64), ref.detach().to(torch.float64)
    if out64.shape != ref64.shape:
        return f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    nan_mis = int((torch.isnan(out64) != torch.isnan(ref64)).sum())
    inf_mis = int((torch.isinf(out64) != torch.isinf(ref64)).sum())
    finite = torch.isfinite(out64) & torch.isfinite(ref64)
    diff = torch.where(finite, (out64 - ref64).abs(), torch.zeros_like(out64))
    scale = ref64[torch.isfinite(ref64)].abs().max().item() if torch.isfinite(ref64).any() else 1.0
    n_bad = int((diff > bar * max(scale, 1e-30)).sum())
    parts = [f"{n_bad}/{out64.numel()} elements off by more than bar x max|ref|"]
    if diff.numel():
        flat = int(diff.argmax())
        idx = _unravel(flat, tuple(diff.shape))
        parts.append(f"worst at {idx}: {out64.flatten()[flat].item():.6g} vs {ref64.flatten()[flat].item():.6g}")
    if nan_mis:
        parts.append(f"{nan_mis} NaN mismatches")
    if inf_mis:
        parts.append(f"{inf_mis} inf mismatches")
    return "; ".join(parts)
