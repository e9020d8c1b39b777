"""The plan of one bench run: options, the rows each case will have (one per provider), their provenance,
and what fills a row after timing (rates, speedups, notes). Shared by the local and the DDP runner."""
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

from mishbench import envinfo
from mishbench.bench.providers import Spec, flops, one_line
from mishbench.names import parse_baselines  # noqa: F401 (checked without torch by the CLI; re-exported)
from mishbench.op import ops
from mishbench.op.model import ModelNew
from mishbench.op.precision import accuracy_class, dtype_name, resolve_precision
from mishbench.op.reference import Model
from mishbench.schema import Row, new_row, row_key
from mishbench.shapes import Size
from mishbench.truth import new_seed

MIN_ITERS = 30  # DESIGN.md: median and p20/p80 of >= 30 timed calls
ROUNDS = 3  # interleaved rounds the first `iters` samples are split into
CASE_BUDGET_S = 20.0  # adaptive sampling stops after this long per case
INTERRUPTED = 130


@dataclass
class BenchOptions:
    sizes: List[Size]
    dtype: torch.dtype
    precision: Optional[str]
    modes: List[str]
    baselines: List[str]
    warmup: int = 10
    iters: int = 30
    candidate: Optional[Path] = None
    distributed: int = 0
    resume: bool = False
    out: Path = Path("results") / "bench.csv"
    seed: Optional[int] = None  # None: a fresh per-run seed (recorded in every row)
    warmup_ms: float = 100.0
    max_iters: int = 200
    input_sets: int = 3


def peak_kind(precision: str, dtype: torch.dtype) -> Tuple[str, float]:
    """(peak to compare against, divisor): ieee → fp32; 3xtf32 → tf32 ÷ 3; tf32 → tf32; else the dtype's."""
    if dtype == torch.float32:
        if precision == "3xtf32":
            return "tf32", 3.0
        if precision == "tf32":
            return "tf32", 1.0
        return "fp32", 1.0
    return dtype_name(dtype), 1.0


class Plan:
    """One bench run: provenance, the providers (specs) of every case, the rows written so far and the
    one-line notes that explain a row's status."""

    def __init__(self, opts: BenchOptions, console, device: torch.device, world_size: int = 1,
                 peak_fn: Optional[Callable[[str], float]] = None):
        self.opts, self.console, self.device = opts, console, device
        # Measured GEMM peak of a kind ('fp32', 'tf32', ...) for pct_of_peak; None: pct stays empty.
        self.peak_fn = peak_fn
        self.written: List[Row] = []
        self.messages: Dict[Tuple[str, str, str, str], str] = {}  # (shape, mode, impl, precision) -> why
        self.run_id = uuid.uuid4().hex
        self.seed = opts.seed if opts.seed is not None else new_seed()
        self.iters = max(int(opts.iters), MIN_ITERS)
        self.dtype = opts.dtype
        self.precision = resolve_precision(opts.precision, opts.dtype, device)
        self.accuracy = accuracy_class(self.precision, opts.dtype)
        tf32 = self.accuracy == "tf32"
        base_prec = "native" if opts.dtype != torch.float32 else ("tf32" if tf32 else "ieee")
        # ModelNew's rows are impl=mishbench wherever it runs; the route says whether the kernels ran
        # (DESIGN.md: route=composite where the extension is not loaded).
        self.subject_impl = "mishbench"
        self.kernels = ModelNew(1, 1).implementation(device) == "cuda"
        self.specs = [Spec(b, base_prec, self.accuracy, tf32) for b in opts.baselines]
        if tf32:  # KernelBench compares against strict-fp32 eager: measure it too
            self.specs.append(Spec("eager", "ieee", "fp32", False))
        self.specs.append(Spec(self.subject_impl, self.precision, self.accuracy, tf32))
        self.candidate_spec = Spec("candidate", self.precision, self.accuracy, tf32)
        self.provenance = {
            "run_id": self.run_id, "git_sha": envinfo.git_sha(),
            "gpu": envinfo.gpu_name(device) if device.type == "cuda" else "cpu",
            "driver": envinfo.driver_version() if device.type == "cuda" else "",
            "torch": torch.__version__, "cuda": torch.version.cuda or "", "world_size": world_size,
        }
        self._templates: Dict[Size, torch.nn.Module] = {}

    # -- rows -------------------------------------------------------------------------------------------
    def cases(self) -> List[Tuple[Size, str]]:
        return [(size, mode) for size in self.opts.sizes for mode in self.opts.modes]

    def base_row(self, size: Size, mode: str, spec: Spec) -> Row:
        return new_row(impl=spec.impl, mode=mode, dtype=dtype_name(self.dtype), precision=spec.precision,
                       accuracy_class=spec.accuracy, batch=size.batch, in_features=size.in_features,
                       out_features=size.out_features, seed=self.seed, route=self.route(size, mode, spec),
                       **self.provenance)

    def route(self, size: Size, mode: str, spec: Spec) -> str:
        """The kernel family of a mishbench row, forward then backward ('wgmma/cublas+dz', 'composite/composite'
        without the extension); empty for baselines and candidates (whose kernels are their own)."""
        if spec.impl != self.subject_impl:
            return ""
        parts = [ops.route(size.batch, size.in_features, size.out_features, self.dtype, spec.precision,
                           self.device, backward) for backward in ((False, True) if mode == "fwd_bwd" else (False,))]
        return "/".join(parts)

    def planned_keys(self, size: Size, mode: str) -> List[tuple]:
        specs = list(self.specs) + ([self.candidate_spec] if self.opts.candidate is not None else [])
        return [row_key(self.base_row(size, mode, s)) for s in specs]

    def template(self, size: Size) -> torch.nn.Module:
        """Model(K, N) drawn under the run's seed, on the CPU: every provider starts from these values."""
        if size not in self._templates:
            torch.manual_seed(self.seed)
            self._templates = {size: Model(size.in_features, size.out_features)}  # keep one: 256 MB at 8192²
        return self._templates[size]

    # -- notes ------------------------------------------------------------------------------------------
    def note(self, size: Size, mode: str, spec: Spec, message: str) -> None:
        self.messages[(str(size), mode, spec.impl, spec.precision)] = message

    def note_row(self, row: Row, message: str) -> None:
        self.messages[self._key(row)] = message

    def message_for(self, row: Row) -> str:
        return self.messages.get(self._key(row), "")

    @staticmethod
    def _key(row: Row) -> Tuple[str, str, str, str]:
        size = Size(int(row["batch"]), int(row["in_features"]), int(row["out_features"]))
        return (str(size), str(row["mode"]), str(row["impl"]), str(row["precision"]))

    # -- after timing -----------------------------------------------------------------------------------
    def fill_rates(self, row: Row, size: Size, mode: str) -> None:
        """tflops and pct_of_peak of an ok row. A peak that cannot be measured leaves pct empty for this
        and every later row (that fails nothing)."""
        if row["status"] != "ok" or row["median_ms"] in ("", None):
            return
        tflops = flops(size, mode) / (float(row["median_ms"]) * 1e-3) / 1e12
        row["tflops"] = tflops
        if self.peak_fn is None:
            return
        kind, div = peak_kind(str(row["precision"]), self.dtype)
        try:
            peak = self.peak_fn(kind) / div
        except Exception as exc:  # noqa: BLE001 - a missing peak leaves pct empty, it fails nothing
            self.console.print(f"[yellow]peak {kind} not measured[/]: {one_line(exc)}", highlight=False)
            self.peak_fn = None
            return
        row["pct_of_peak"] = 100.0 * tflops / peak if peak > 0 else ""


def fill_speedups(rows: List[Row]) -> None:
    """speedup_vs_eager / vs_compile against the same accuracy class; vs_fp32_eager against strict-fp32 eager.

    Only between ok rows of this case (same run_id, shape, mode); a mismatch/oom/error row gets none.
    """
    def ok(r: Row) -> bool:
        return r["status"] == "ok" and r["median_ms"] not in ("", None)

    eager = {r["accuracy_class"]: r for r in rows if r["impl"] == "eager" and ok(r)}
    compiled = {r["accuracy_class"]: r for r in rows if r["impl"] == "compile" and ok(r)}
    fp32_eager = next((r for r in rows if r["impl"] == "eager" and r["precision"] == "ieee" and ok(r)), None)
    for r in rows:
        if not ok(r):
            continue
        ms = float(r["median_ms"])
        e, c = eager.get(r["accuracy_class"]), compiled.get(r["accuracy_class"])
        if e is not None:
            r["speedup_vs_eager"] = float(e["median_ms"]) / ms
        if c is not None:
            r["speedup_vs_compile"] = float(c["median_ms"]) / ms
        if fp32_eager is not None:
            r["speedup_vs_fp32_eager"] = float(fp32_eager["median_ms"]) / ms
