"""The one judge: inputs from a seed, the float64 reference, error bars and the verdict (DESIGN.md, "Errors and
tolerances").

Every comparison in the project -- verify's checks, bench's correctness gate, the DDP runs, candidates --
goes through here: `reference_run` computes the reference Model in float64 (the truth) and in the subject's
accuracy class (eager PyTorch, whose own error sets the bar); `Compared` holds one tensor's error against
its bar `max(2·e_eager, floor)`; `verdict` turns a list of them into one Check; `Judge` draws the inputs
from the run's seed and runs subject and reference side by side. The subject is reached only through a
`Runner`, so the same judge serves our ModelNew (in this process) and an untrusted candidate (in its own).
"""
import math
import random
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from mishbench.op.precision import accuracy_class, eager_matmul_mode
from mishbench.op.reference import Model
from mishbench.schema import Check
from mishbench.shapes import Size

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

State = "OrderedDict[str, torch.Tensor]"
GRAD_NAMES = ("x", "linear.weight", "linear.bias")
# What a gradient is called in reports: dx, dW, db.
GRAD_LABELS = {"x": "dx", "linear.weight": "dW", "linear.bias": "db"}


def grads_by_name(model, x) -> Dict[str, torch.Tensor]:
    """The gradients after a backward, by name (GRAD_NAMES), for our ModelNew and the reference alike."""
    return {"x": x.grad, "linear.weight": model.linear.weight.grad, "linear.bias": model.linear.bias.grad}


class Runner:
    """What the checks need from the subject under test. Tensors cross this boundary, modules do not."""

    subject = "builtin"

    def impl(self, device: torch.device) -> str:
        raise NotImplementedError

    def precision(self, dtype: torch.dtype, device: torch.device) -> str:
        raise NotImplementedError

    def construction_seed(self, seed: int) -> int:
        """The seed `init_state(size, seed)` constructs under: `seed` itself, unless the subject must never
        see the run's seed (a candidate's process: a seed derived from it)."""
        return seed

    def init_state(self, size: Size, seed: int) -> State:
        """The subject's state_dict (CPU, as constructed) right after `torch.manual_seed(construction_seed(seed))`."""
        raise NotImplementedError

    def run(self, size: Size, state: State, x: torch.Tensor, grad_y: Optional[torch.Tensor]
            ) -> Tuple[torch.Tensor, Optional[Dict[str, torch.Tensor]]]:
        """Load `state` (strict) in x's dtype/device, compute y = subject(x); with grad_y, backward too.

        Returns y and the gradients by name ('x', 'linear.weight', 'linear.bias').
        """
        raise NotImplementedError

    def call_error(self, size: Size, x: torch.Tensor, param_device: torch.device,
                   param_dtype: torch.dtype) -> Optional[str]:
        """Call the subject (params on param_device/param_dtype) on a bad input: the error text, or None."""
        raise NotImplementedError

    def gradcheck(self, size: Size, device: torch.device) -> Tuple[bool, str]:
        """torch.autograd.gradcheck of the subject in float64 on `device`."""
        raise NotImplementedError

    # -- compiler / runtime compatibility (verify/compat.py) --
    def compat(self, mode: str, size: Size, state: State, x: torch.Tensor, grad_y: Optional[torch.Tensor] = None
               ) -> Tuple[torch.Tensor, Optional[Dict[str, torch.Tensor]], Dict[str, object]]:
        """Run the subject (state loaded in x's dtype/device) under one of COMPAT_MODES; y, grads, facts.

        'compile': torch.compile(fullgraph=True), forward (+ backward with grad_y). 'autocast:bf16' /
        'autocast:fp16': fp32 module under torch.autocast(x's device type); y in the autocast dtype.
        'cuda_graph': x is (trials, batch, in): capture the forward once, replay per trial; y stacked.
        'serialization': save/load the state_dict through torch.save/torch.load into a fresh module; facts
        'state_equal', 'outputs_equal'. 'no_grad' / 'inference_mode': forward only; facts 'grad_fn',
        'requires_grad', 'is_inference', 'retained_bytes' (CUDA: allocator growth with y alive), 'y_bytes'.
        Raises NotImplementedError where the subject cannot be run that way (the check then skips).
        """
        raise NotImplementedError


def reference_run(size: Size, state: State, x: torch.Tensor, grad_y: Optional[torch.Tensor],
                  dtype: torch.dtype, tf32: bool = False):
    """The reference Model with `state` in `dtype` on x's device: y and grads (x, weight, bias)."""
    # Convert first, then load: loading a float64 state into fp32 parameters would round it.
    model = Model(size.in_features, size.out_features).to(x.device, dtype)
    model.load_state_dict(state, strict=True)
    xx = x.detach().to(dtype).clone().requires_grad_(grad_y is not None)
    with eager_matmul_mode(tf32):
        if grad_y is None:
            with torch.no_grad():
                return model(xx), None
        y = model(xx)
        y.backward(grad_y.to(dtype))
    return y.detach(), grads_by_name(model, xx)


def make_inputs(size: Size, kind: str, generator: torch.Generator, device, dtype, lead: Sequence[int] = ()):
    """x for a trial: 'rand' (KernelBench's own torch.rand) or 'randn10' (randn·10: both Mish branches and the
    x > 20 threshold are hit). Drawn on the CPU in float64 so every dtype sees the same values."""
    shape = tuple(lead) + (size.batch, size.in_features) if lead else (size.batch, size.in_features)
    if kind == "rand":
        x = torch.rand(shape, generator=generator, dtype=torch.float64)
    else:
        x = torch.randn(shape, generator=generator, dtype=torch.float64) * 10
    return x.to(device=device, dtype=dtype)


class Compared:
    """Errors of one output against float64 truth, with the bar from eager's own error."""

    def __init__(self, name: str, out, ref64, eager, dtype):
        self.name = name
        self.err = rel_err(out, ref64)
        self.eager_err = rel_err(eager, ref64)
        self.bar = error_bar(self.eager_err, dtype)
        self.max_abs = max_abs_err(out, ref64)
        self.allclose = allclose_kernelbench(out, eager)
        self.ok = self.err <= self.bar
        self.summary = "" if self.ok else mismatch_summary(out, ref64, self.bar)

    def metrics(self) -> Dict[str, object]:
        return {"rel_err": self.err, "bar": self.bar, "eager_rel_err": self.eager_err,
                "max_abs_err": self.max_abs, "allclose_kernelbench": self.allclose}


class Judge:
    """The run's seed and the inputs drawn from it, and the comparison of a subject with the reference.

    `gen` is the one generator every input and upstream gradient of a run is drawn from, in check order,
    so `--seed N` reproduces a run exactly.
    """

    def __init__(self, device: torch.device, dtype: torch.dtype, seed: int, precision: str):
        self.device, self.dtype, self.seed, self.precision = device, dtype, seed, precision
        self.klass = accuracy_class(precision, dtype)
        self.tf32 = self.klass == "tf32"
        self.gen = torch.Generator().manual_seed(seed)

    def inputs(self, size: Size, kind: str, lead: Sequence[int] = (), dtype: Optional[torch.dtype] = None):
        return make_inputs(size, kind, self.gen, self.device, dtype or self.dtype, lead)

    def upstream(self, shape: Sequence[int], dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """An upstream gradient dL/dy of `shape`, drawn from the run's generator."""
        return torch.randn(tuple(shape), generator=self.gen, dtype=torch.float64).to(self.device, dtype or self.dtype)

    def compare(self, runner: "Runner", size: Size, x: torch.Tensor, with_grad: bool,
                state: Optional[State] = None) -> List[Compared]:
        """Run the subject, the float64 reference and eager on one input: y (and dx, dW, db) judged."""
        if state is None:
            state = runner.init_state(size, self.seed)
        grad_y = self.upstream(tuple(x.shape[:-1]) + (size.out_features,)) if with_grad else None
        y, grads = runner.run(size, state, x, grad_y)
        return [c for _, c in self.against_truth(size, state, x, grad_y, y, grads)]

    def against_truth(self, size: Size, state: State, x: torch.Tensor, grad_y: Optional[torch.Tensor],
                      got_y: torch.Tensor, got_grads: Optional[Dict[str, torch.Tensor]],
                      dtype: Optional[torch.dtype] = None,
                      eager: Optional[Callable[[], Tuple[torch.Tensor, Optional[Dict[str, torch.Tensor]]]]] = None
                      ) -> List[Tuple[str, Compared]]:
        """y (and, with grad_y, the gradients) against float64 Model; the bar from eager Model in `dtype`
        (this run's class) or from `eager()` where the caller runs it another way (e.g. under autocast).
        A missing gradient counts as NaN, so it fails."""
        dtype = dtype or self.dtype
        y64, g64 = reference_run(size, state, x, grad_y, torch.float64)
        ye, ge = eager() if eager is not None else reference_run(size, state, x, grad_y, dtype, tf32=self.tf32)
        out = [("y", Compared("y", got_y, y64, ye, dtype))]
        for name in (GRAD_NAMES if grad_y is not None else ()):
            got = (got_grads or {}).get(name)
            got = torch.full_like(g64[name], float("nan")) if got is None else got
            label = GRAD_LABELS[name]
            out.append((label, Compared(label, got, g64[name], ge[name], dtype)))
        return out


def verdict(name: str, results: List[Tuple[str, "Compared"]]) -> Check:
    worst = max(results, key=lambda r: r[1].err / r[1].bar if r[1].bar else float("inf"))
    label, cmp = worst
    metrics = dict(cmp.metrics())
    metrics["worst"] = f"{label} {cmp.name}"
    bad = [(lbl, c) for lbl, c in results if not c.ok]
    if bad:
        lbl, c = bad[0]
        return Check(name, "fail", f"{lbl} {c.name}: rel_err {c.err:.3g} > bar {c.bar:.3g} "
                                   f"(eager {c.eager_err:.3g}); {c.summary}"
                     + (f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""), metrics)
    return Check(name, "pass", f"worst {label} {cmp.name}: rel_err {cmp.err:.3g} <= bar {cmp.bar:.3g} "
                               f"(eager {cmp.eager_err:.3g}, max_abs {cmp.max_abs:.3g})", metrics)


def guard(name: str, fn: Callable[[], Check], progress: Optional[Callable[[str], None]] = None) -> Check:
    """Run one check: a crash is an `error` row, an OOM a `skip` row, never a traceback."""
    if progress is not None:
        progress(name)
    try:
        return fn()
    except torch.cuda.OutOfMemoryError as exc:  # a size too large for this card
        return Check(name, "skip", f"out of memory: {str(exc).splitlines()[0]}")
    except Exception as exc:  # noqa: BLE001 - a crashing subject is a finding, not a traceback
        return Check(name, "error", f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")


def new_seed() -> int:
    """A per-run seed nobody can predict; recorded in the report so `--seed` reproduces a failure."""
    return random.SystemRandom().randrange(2**31)


