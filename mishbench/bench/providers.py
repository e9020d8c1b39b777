"""Bench providers: one implementation (eager Model, torch.compile of it, our ModelNew) on one case, built on
the case's parameters and inputs, gated against the float64 truth, then timed by the one clock.

Used by the local runner (local.py) and by every rank of the DDP runner (ddp.py).
"""
import gc
import math
from contextlib import ExitStack, contextmanager
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch

from mishbench.clock import Timing
from mishbench.op.precision import eager_matmul_mode
from mishbench.shapes import Size
from mishbench.inputs import make_inputs
from mishbench.truth import GRAD_LABELS, Compared

BASELINES = ("eager", "compile", "compile-max")
SUBJECT_IMPLS = ("mishbench", "composite", "candidate")  # rows whose mismatch/error fails the run
COMPILE_MAX_MODE = "max-autotune-no-cudagraphs"
# torch.compile's backend; tests swap in "eager" (no C++/Triton toolchain needed on the CPU).
COMPILE_BACKEND = "inductor"


class Inputs(NamedTuple):
    x: torch.Tensor
    grad_y: Optional[torch.Tensor]


def make_input_sets(size: Size, mode: str, seed: int, count: int, device, dtype: torch.dtype) -> List[Inputs]:
    """`count` input sets (at least one) drawn from `seed`: x as KernelBench's torch.rand, and for fwd_bwd an
    upstream gradient. Drawn on the CPU in float64, so every device and process sees the same values."""
    gen = torch.Generator().manual_seed(seed + 1)
    sets = []
    for _ in range(max(1, count)):
        x = make_inputs(size, "rand", gen, device, dtype)
        grad_y = None
        if mode == "fwd_bwd":
            x.requires_grad_(True)
            grad_y = torch.randn(size.batch, size.out_features, generator=gen,
                                 dtype=torch.float64).to(device, dtype)
        sets.append(Inputs(x, grad_y))
    return sets


class Spec(NamedTuple):
    """A planned row: which implementation, in which precision/class, under which TF32 setting."""
    impl: str
    precision: str
    accuracy: str
    tf32: bool


class ProviderFailed(Exception):
    """A provider that cannot be timed: `status` is 'oom' or 'error', `message` says why."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Provider:
    """One implementation on one case: owns its module, knows how to call it in `mode`."""

    def __init__(self, spec: Spec, module: torch.nn.Module, fn: Callable, mode: str):
        self.spec, self.module, self.fn, self.mode = spec, module, fn, mode
        self.compile_s: Optional[float] = None
        self.rel_err: Optional[float] = None  # the gate's worst error (output or gradient) ...
        self.bar_ratio: float = math.nan  # ... and its err/bar ratio: <= 1 passes
        self.peak_mem_mb: Optional[float] = None
        self.parts: List[Timing] = []

    @contextmanager
    def context(self):
        """The precision mode (TF32 on/off for fp32 matmuls) and, for fwd, no_grad: set outside the timed calls."""
        with ExitStack() as stack:
            stack.enter_context(eager_matmul_mode(self.spec.tf32))
            if self.mode == "fwd":
                stack.enter_context(torch.no_grad())
            yield

    def setup(self, inputs: Inputs) -> None:
        """Untimed, before each call: grads set to None so every backward allocates as a training step does."""
        if self.mode == "fwd_bwd":
            self.module.zero_grad(set_to_none=True)
            inputs.x.grad = None

    def call(self, inputs: Inputs):
        if self.mode == "fwd":
            return self.fn(inputs.x)
        self.fn(inputs.x).backward(inputs.grad_y)
        return None

    def outputs(self, inputs: Inputs) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """y and (fwd_bwd) the gradients by name, for the correctness gate."""
        self.setup(inputs)
        with self.context():
            y = self.fn(inputs.x)
            if self.mode == "fwd":
                return y.detach(), {}
            y.backward(inputs.grad_y)
        lin = self.module.linear
        return y.detach(), {"x": inputs.x.grad, "linear.weight": lin.weight.grad, "linear.bias": lin.bias.grad}

    @property
    def samples(self) -> int:
        return sum(t.iters for t in self.parts)


class CompileWatch:
    """Proves the compiled graph ran: dynamo compiled >= 1 graph on the first call, and converted no frame
    afterwards (a recompile, or the recompile limit turning the frame into eager, converts one)."""

    def __init__(self):
        self.after_compile: Optional[int] = None

    @staticmethod
    def _counters() -> Tuple[int, int]:
        from torch._dynamo.utils import counters
        return int(counters["stats"]["unique_graphs"]), int(counters["frames"]["total"])

    def before_first_call(self) -> None:
        self._graphs0 = self._counters()[0]

    def after_first_call(self) -> None:
        graphs, _ = self._counters()
        if graphs <= self._graphs0:
            raise ProviderFailed("error", "torch.compile compiled no graph: dynamo fell back to eager, so this "
                                          "row would time eager PyTorch under the name compile")

    def freeze(self) -> None:
        self.after_compile = self._counters()[1]

    def check(self) -> None:
        frames = self._counters()[1]
        if self.after_compile is not None and frames != self.after_compile:
            raise ProviderFailed("error", f"torch.compile converted {frames - self.after_compile} frame(s) during "
                                          "timing (a recompile or an eager fallback): timings discarded")


def compile_module(module: torch.nn.Module, impl: str) -> Callable:
    kwargs = {"dynamic": False}
    if COMPILE_BACKEND == "inductor":
        if impl == "compile-max":
            kwargs["mode"] = COMPILE_MAX_MODE
    else:
        kwargs["backend"] = COMPILE_BACKEND
    return torch.compile(module, **kwargs)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gate(got: Dict[str, torch.Tensor], truth: Dict[str, torch.Tensor], eager: Dict[str, torch.Tensor],
         dtype: torch.dtype, floors: Dict[str, Tuple[float, float]]) -> Tuple[float, float]:
    """The correctness gate: (worst error, its error/bar ratio) over y and the gradients present in `truth`
    (keys 'y', 'x', 'linear.weight', 'linear.bias'), judged by truth.Compared with each tensor's floor
    (truth.floors). A ratio <= 1 passes; a missing or NaN output gives an infinite/NaN ratio, which fails."""
    worst, worst_ratio = 0.0, -1.0
    for name, ref in truth.items():
        out = got.get(name)
        out = torch.full_like(ref, float("nan")) if out is None else out
        cmp = Compared(GRAD_LABELS.get(name, name), out, ref, eager[name], dtype, *floors.get(name, (None, None)))
        ratio = cmp.err / cmp.bar if cmp.bar > 0 else math.inf
        if ratio > worst_ratio or math.isnan(cmp.err):
            worst, worst_ratio = cmp.err, ratio
    return worst, worst_ratio


def estimate_bytes(size: Size, mode: str, dtype: torch.dtype, n_providers: int, input_sets: int,
                   flush: int = 0) -> int:
    """Upper estimate of device memory for a case: per provider params (+grads) and activations, shared
    inputs, the float64 reference and eager-class reference runs, and the L2 flush buffer; +10 %."""
    e = torch.finfo(dtype).bits // 8
    b, k, n = size
    params = (k * n + n) * e
    act = b * n * e
    bwd = mode == "fwd_bwd"
    per = params + 2 * act
    if bwd:
        # grads of W and b, saved pre-activations and the Mish intermediate, upstream and dx
        per += params + 3 * act + b * k * e
    shared = input_sets * (b * k * e + (act if bwd else 0))
    ref = (k * n + n) * 8 * (2 if bwd else 1) + (b * k + 3 * b * n) * 8  # float64 truth
    return int(1.1 * (shared + n_providers * per + ref + flush))


def cuda_free_bytes(device: torch.device) -> int:
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def fmt_bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


def flops(size: Size, mode: str) -> float:
    return float(size.flops) * (3.0 if mode == "fwd_bwd" else 1.0)
