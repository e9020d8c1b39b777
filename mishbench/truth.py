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
import time
import random
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from mishbench import rounding
from mishbench.inputs import linear_params, make_inputs
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


def storage_floor(dtype: torch.dtype) -> float:
    """The floor of a tensor with no rounding scale (trained parameters, losses): c·ε_st, the table's floor
    with S = 0 (rounding.floor_constants: c = 4 for fp32 and float64, 1 for fp16/bf16)."""
    c, _, eps_st = rounding.floor_constants(dtype)
    return c * eps_st


def error_bar(eager_err: float, dtype: torch.dtype, floor: Optional[float] = None) -> float:
    """max(2·e_eager, floor): the most an implementation in this accuracy class may err. `floor` is the
    tensor's condition-aware floor (rounding.floor); without one, the storage floor."""
    return max(2.0 * eager_err, storage_floor(dtype) if floor is None else floor)


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
    """One line: how many elements are off, the worst one and where, NaN/inf mismatches.

    An element is "off" when its error exceeds bar × rms|ref| (= bar·‖ref‖/√n): the norm-wise verdict
    ‖out − ref‖ ≤ bar·‖ref‖ holds whenever no element is off, so a failed verdict always names at least one.
    """
    out64, ref64 = out.detach().to(torch.float64), ref.detach().to(torch.float64)
    if out64.shape != ref64.shape:
        return f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    nan_mis = int((torch.isnan(out64) != torch.isnan(ref64)).sum())
    inf_mis = int((torch.isinf(out64) != torch.isinf(ref64)).sum())
    finite = torch.isfinite(out64) & torch.isfinite(ref64)
    diff = torch.where(finite, (out64 - ref64).abs(), torch.zeros_like(out64))
    finite_ref = ref64[torch.isfinite(ref64)]
    rms = float(torch.linalg.vector_norm(finite_ref)) / math.sqrt(max(out64.numel(), 1)) if finite_ref.numel() else 0.0
    n_bad = int((diff > bar * rms).sum()) if rms > 0 else int((diff > bar).sum())
    parts = [f"{n_bad}/{out64.numel()} elements off by more than bar x rms|ref|"]
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

    def train(self, size: Size, state: State, xs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor],
              steps: int, lr: float, momentum: float) -> Tuple[List[float], State]:
        """Load `state` (strict) into ONE module in xs' dtype/device and run `steps` in-place SGD steps on it
        (candidate.protocol.train_calls): the loss of each step and the final state_dict (CPU)."""
        raise NotImplementedError

    def grad_mode(self, mode: str, size: Size, state: State, x: torch.Tensor, grad_y: Optional[torch.Tensor]
                  ) -> Tuple[torch.Tensor, Dict[str, Optional[torch.Tensor]], Dict[str, object]]:
        """Load `state` and make the backward calls of one of candidate.protocol.GRAD_MODES (accumulating,
        torch.autograd.grad, expanded and non-contiguous upstream gradients): y, the gradients by name and
        facts -- 'upstream_after' (grad_y as the subject left it) and, for autograd_grad, 'grad_written'."""
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


def reference_model(size: Size, state: State, device, dtype: torch.dtype) -> Model:
    """The reference Model holding `state`, in `dtype` on `device`. Built on the meta device and loaded, not
    initialised: nn.Linear's init of 8192² weights took 0.9 s on the CPU (2 cores) for values the state
    overwrites -- and the judge builds two per comparison. Converted first, then loaded: loading a float64
    state into fp32 parameters would round it."""
    with torch.device("meta"):
        model = Model(size.in_features, size.out_features)
    model = model.to_empty(device=device).to(dtype)
    model.load_state_dict(state, strict=True)
    return model


def reference_run(size: Size, state: State, x: torch.Tensor, grad_y: Optional[torch.Tensor],
                  dtype: torch.dtype, tf32: bool = False):
    """The reference Model with `state` in `dtype` on x's device: y and grads (x, weight, bias)."""
    model = reference_model(size, state, x.device, dtype)
    xx = x.detach().to(dtype).clone().requires_grad_(grad_y is not None)
    with eager_matmul_mode(tf32):
        if grad_y is None:
            with torch.no_grad():
                return model(xx), None
        y = model(xx)
        y.backward(grad_y.to(dtype))
    return y.detach(), grads_by_name(model, xx)


class Compared:
    """One tensor judged: its error against float64 truth and the bar max(2·e_eager, floor).

    `floor` and `kappa` (‖S‖/‖R‖) come from the tensor's rounding scale (`floors`); a tensor without one
    (trained parameters, losses) gets the storage floor and no kappa.
    """

    def __init__(self, name: str, out, ref64, eager, dtype, floor: Optional[float] = None,
                 kappa: Optional[float] = None):
        self.name = name
        self.err = rel_err(out, ref64)
        self.eager_err = rel_err(eager, ref64)
        self.floor = storage_floor(dtype) if floor is None else floor
        self.kappa = kappa
        self.bar = error_bar(self.eager_err, dtype, self.floor)
        self.max_abs = max_abs_err(out, ref64)
        self.allclose = allclose_kernelbench(out, eager)
        self.ok = self.err <= self.bar
        self.summary = "" if self.ok else mismatch_summary(out, ref64, self.bar)

    def made_of(self) -> str:
        """What the bar was made of, for a detail line: eager's error, the floor, κ."""
        kappa = "" if self.kappa is None else f", kappa {self.kappa:.3g}"
        return f"eager {self.eager_err:.3g}, floor {self.floor:.3g}{kappa}"

    def metrics(self) -> Dict[str, object]:
        out = {"rel_err": self.err, "bar": self.bar, "eager_rel_err": self.eager_err, "floor": self.floor,
               "max_abs_err": self.max_abs, "allclose_kernelbench": self.allclose}
        if self.kappa is not None:
            out["kappa"] = self.kappa
        return out


def floors(state: State, x: torch.Tensor, grad_y: Optional[torch.Tensor], dtype: torch.dtype,
           truth: Dict[str, torch.Tensor]) -> Dict[str, Tuple[float, float]]:
    """(floor, κ) per checked tensor, keyed as `truth` is ('y' and GRAD_NAMES): DESIGN.md's condition-aware
    floor from the rounding scales of the reference's own intermediates (rounding.py).

    x: (..., K) as the subject got it; grad_y: (..., N) or None; truth: the float64 reference's y and, with
    grad_y, its gradients. Rows of any leading shape are flattened first. `dtype` is the class's storage
    dtype: for fp16/bf16 the scales count z and Mish(z) stored in it between the steps.
    """
    # On x's device: at 1024x8192x8192 the three float64 GEMMs of squares take ms on a GPU, ~1 min on 2 cores.
    n = truth["y"].shape[-1]
    w, b = linear_params(state, Size(1, x.shape[-1], n))  # by shape: the names may be a candidate's
    w, b = w.to(x.device), b.to(x.device)
    x2 = x.detach().to(torch.float64).reshape(-1, w.shape[1])
    gy = None if grad_y is None else grad_y.detach().to(x.device, torch.float64).reshape(-1, w.shape[0])
    scales = rounding.rounding_scales(x2, w, b, gy, storage_dtype=dtype)
    which = {"y": "y", "x": "dx", "linear.weight": "dW", "linear.bias": "db"}
    out = {}
    for key, ref in truth.items():
        s = scales.get(which.get(key, ""))
        if s is None or ref is None:
            continue
        r = ref.detach().to(s.device, torch.float64).reshape(s.shape)
        out[key] = (rounding.floor(s, r, dtype), rounding.kappa(s, r))
    return out


def eager_run(size: Size, state: State, x: torch.Tensor, grad_y: Optional[torch.Tensor], dtype: torch.dtype,
              tf32: bool = False):
    """Eager PyTorch in the accuracy class of `dtype`, whose own error sets the bar: the reference Model in
    `dtype` -- or, for float64, where eager is the reference, the reference with every reduction summed in
    two halves (rounding.second_order_fp64), so a correct float64 kernel is not held to zero."""
    if dtype != torch.float64:
        return reference_run(size, state, x, grad_y, dtype, tf32=tf32)
    k, n = size.in_features, size.out_features
    w = state["linear.weight"].detach().to(x.device, torch.float64)
    b = state["linear.bias"].detach().to(x.device, torch.float64)
    x2 = x.detach().to(torch.float64).reshape(-1, k)
    gy = None if grad_y is None else grad_y.detach().to(torch.float64).reshape(-1, n)
    out = rounding.second_order_fp64(x2, w, b, gy)
    y = out["y"].reshape(tuple(x.shape[:-1]) + (n,))
    if grad_y is None:
        return y, None
    return y, {"x": out["dx"].reshape(x.shape), "linear.weight": out["dW"], "linear.bias": out["db"]}


class Judge:
    """The run's seed and the inputs drawn from it, and the comparison of a subject with the reference.

    `gen` is the one generator every input and upstream gradient of a run is drawn from, in check order,
    so `--seed N` reproduces a run exactly.
    """

    def __init__(self, device: torch.device, dtype: torch.dtype, seed: int, precision: str):
        self.device, self.dtype, self.seed, self.precision = device, dtype, seed, precision
        self.accuracy = accuracy_class(precision, dtype)
        self.tf32 = self.accuracy == "tf32"
        self.gen = torch.Generator().manual_seed(seed)

    def inputs(self, size: Size, kind: str, lead: Sequence[int] = (), dtype: Optional[torch.dtype] = None,
               state: Optional[State] = None):
        return make_inputs(size, kind, self.gen, self.device, dtype or self.dtype, lead, state)

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
        return self.truth(size, state, x, grad_y, dtype, eager).judge(got_y, got_grads)

    def truth(self, size: Size, state: State, x: torch.Tensor, grad_y: Optional[torch.Tensor] = None,
              dtype: Optional[torch.dtype] = None,
              eager: Optional[Callable[[], Tuple[torch.Tensor, Optional[Dict[str, torch.Tensor]]]]] = None
              ) -> "Truth":
        """float64 Model, eager and the floors on one input, computed once: `.judge(y, grads)` for every
        output of that input (a batch of timed calls returns many)."""
        dtype = dtype or self.dtype
        y64, g64 = reference_run(size, state, x, grad_y, torch.float64)
        ye, ge = eager() if eager is not None else eager_run(size, state, x, grad_y, dtype, tf32=self.tf32)
        truth = dict(g64 or {}, y=y64)
        return Truth(dtype, truth, dict(ge or {}, y=ye), floors(state, x, grad_y, dtype, truth),
                     grad_y is not None)


class Truth:
    """The reference side of one comparison: float64 outputs, eager's and the floors, by tensor name."""

    def __init__(self, dtype: torch.dtype, ref64: Dict[str, torch.Tensor], eager: Dict[str, torch.Tensor],
                 floors_by_name: Dict[str, Tuple[float, float]], with_grads: bool):
        self.dtype, self.ref64, self.eager, self.floors, self.with_grads = dtype, ref64, eager, floors_by_name, with_grads

    def judge(self, got_y: torch.Tensor, got_grads: Optional[Dict[str, torch.Tensor]] = None
              ) -> List[Tuple[str, Compared]]:
        out = [("y", Compared("y", got_y, self.ref64["y"], self.eager["y"], self.dtype, *self.floors["y"]))]
        for name in (GRAD_NAMES if self.with_grads else ()):
            got = (got_grads or {}).get(name)
            got = torch.full_like(self.ref64[name], float("nan")) if got is None else got
            label = GRAD_LABELS[name]
            out.append((label, Compared(label, got, self.ref64[name], self.eager[name], self.dtype,
                                        *self.floors[name])))
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
                                   f"({c.made_of()}); {c.summary}"
                     + (f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""), metrics)
    return Check(name, "pass", f"worst {label} {cmp.name}: rel_err {cmp.err:.3g} <= bar {cmp.bar:.3g} "
                               f"({cmp.made_of()}, max_abs {cmp.max_abs:.3g})", metrics)


def guard(name: str, fn: Callable[[], Check], progress: Optional[Callable[[str], None]] = None) -> Check:
    """Run one check: a crash is an `error` row, an OOM a `skip` row, never a traceback. The row's metrics get
    `seconds`, its wall time (the JSON says where a slow verify spends it)."""
    if progress is not None:
        progress(name)
    t0 = time.perf_counter()
    try:
        check = fn()
    except torch.cuda.OutOfMemoryError as exc:  # a size too large for this card
        check = Check(name, "skip", f"out of memory: {str(exc).splitlines()[0]}")
    except Exception as exc:  # noqa: BLE001 - a crashing subject is a finding, not a traceback
        check = Check(name, "error", f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
    check.metrics.setdefault("seconds", round(time.perf_counter() - t0, 3))
    return check


def new_seed() -> int:
    """A per-run seed nobody can predict; recorded in the report so `--seed` reproduces a failure."""
    return random.SystemRandom().randrange(2**31)


