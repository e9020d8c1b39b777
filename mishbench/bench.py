"""`mishbench bench`: time Model (eager, torch.compile) and ModelNew across shapes; append rows to a CSV.

One *case* is (shape, mode). For each case every provider is built on the same parameters and inputs,
gated against a float64 reference (DESIGN.md error bar), then timed in interleaved rounds — a chunk of
each provider in turn, repeated — so clock and thermal drift hit all providers alike. Speedups are ratios
within the case (same run_id). The case's rows are appended to the CSV and flushed as soon as it finishes,
so Ctrl-C keeps every finished case.

The loop (`_run_rows`) takes the device, the timer, the peak-rate function and the free-memory probe as
arguments, so the CPU tests drive it end to end with `timing.time_cpu` and simulated failures.
"""
import copy
import datetime
import gc
import math
import time
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from . import envinfo
from .csvschema import COLUMNS, CsvSchemaError, Row, append_rows, new_row, read_rows, row_key
from .metrics import error_bar, rel_err
from .precision import accuracy_class, dtype_name, eager_matmul_mode, resolve_precision
from .shapes import Size
from .timing import MAX_SPREAD, Timing, flush_bytes, merge, peak_kind, peak_tflops, time_cuda

BASELINES = ("eager", "compile", "compile-max")
SUBJECT_IMPLS = ("mishbench", "composite", "candidate")  # rows whose mismatch/error fails the run
MIN_ITERS = 30  # DESIGN.md: median and p20/p80 of >= 30 timed calls
ROUNDS = 3  # interleaved rounds the first `iters` samples are split into
CASE_BUDGET_S = 20.0  # adaptive sampling stops after this long per case
COMPILE_MAX_MODE = "max-autotune-no-cudagraphs"
GRAD_NAMES = ("x", "linear.weight", "linear.bias")
INTERRUPTED = 130

# torch.compile's backend; tests swap in "eager" (no C++/Triton toolchain needed on the CPU).
_COMPILE_BACKEND = "inductor"

Timer = Callable[..., Timing]


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


def parse_baselines(text: Optional[str], preset: str) -> List[str]:
    """'eager,compile,compile-max' -> list; default eager,compile (eager only for the sweep).

    eager is always timed: it is the declared baseline every speedup and pct is read against.
    """
    if text is None or not text.strip():
        return ["eager"] if preset == "sweep" else ["eager", "compile"]
    out: List[str] = []
    for item in text.split(","):
        name = item.strip()
        if not name:
            raise ValueError(f"empty item in {text!r}")
        if name not in BASELINES:
            raise ValueError(f"unknown baseline {name!r}: expected a comma list of {', '.join(BASELINES)}")
        if name not in out:
            out.append(name)
    if "eager" not in out:
        out.insert(0, "eager")
    return out


# ---------------------------------------------------------------------------------------------------------
# Providers
# ---------------------------------------------------------------------------------------------------------
class Inputs(NamedTuple):
    x: torch.Tensor
    grad_y: Optional[torch.Tensor]


def make_input_sets(size: Size, mode: str, seed: int, count: int, device, dtype: torch.dtype) -> List[Inputs]:
    """`count` input sets (at least one) drawn from `seed`: x as KernelBench's torch.rand, and for fwd_bwd an
    upstream gradient. Drawn on the CPU in float64, so every device and process sees the same values."""
    from .verify import make_inputs
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
    klass: str
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


def _compile(module: torch.nn.Module, impl: str) -> Callable:
    kwargs = {"dynamic": False}
    if _COMPILE_BACKEND == "inductor":
        if impl == "compile-max":
            kwargs["mode"] = COMPILE_MAX_MODE
    else:
        kwargs["backend"] = _COMPILE_BACKEND
    return torch.compile(module, **kwargs)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------------------
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


def _cuda_free_bytes(device: torch.device) -> int:
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------
def _fmt_bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


def _flops(size: Size, mode: str) -> float:
    return float(size.flops) * (3.0 if mode == "fwd_bwd" else 1.0)


class _Run:
    """State of one bench run: provenance, the plan, rows written so far."""

    def __init__(self, opts: BenchOptions, console, device: torch.device, timer: Timer,
                 peak_fn: Optional[Callable[[str], float]], free_memory: Optional[Callable[[], int]]):
        self.opts, self.console, self.device, self.timer = opts, console, device, timer
        self.peak_fn, self.free_memory = peak_fn, free_memory
        self.written: List[Row] = []
        self.messages: Dict[Tuple[str, str, str, str], str] = {}  # (shape, mode, impl, precision) -> why
        self.run_id = uuid.uuid4().hex
        from .verify import new_seed
        self.seed = opts.seed if opts.seed is not None else new_seed()
        self.iters = max(int(opts.iters), MIN_ITERS)
        self.dtype = opts.dtype
        self.precision = resolve_precision(opts.precision, opts.dtype, device)
        self.klass = accuracy_class(self.precision, opts.dtype)
        tf32 = self.klass == "tf32"
        base_prec = "native" if opts.dtype != torch.float32 else ("tf32" if tf32 else "ieee")
        from .model import ModelNew
        self.subject_impl = "mishbench" if ModelNew(1, 1).implementation(device) == "cuda" else "composite"
        self.specs = [Spec(b, base_prec, self.klass, tf32) for b in opts.baselines]
        if tf32:  # KernelBench compares against strict-fp32 eager: measure it too
            self.specs.append(Spec("eager", "ieee", "fp32", False))
        self.specs.append(Spec(self.subject_impl, self.precision, self.klass, tf32))
        self.candidate = None  # candidate.CandidateBench for --candidate: ONE worker for the whole run
        self.provenance = {
            "run_id": self.run_id, "git_sha": envinfo.git_sha(),
            "gpu": envinfo.gpu_name(device) if device.type == "cuda" else "cpu",
            "driver": envinfo.driver_version() if device.type == "cuda" else "",
            "torch": torch.__version__, "cuda": torch.version.cuda or "", "world_size": 1,
        }
        self._templates: Dict[Size, torch.nn.Module] = {}

    # -- planning ---------------------------------------------------------------------------------------
    def planned_keys(self, size: Size, mode: str) -> List[tuple]:
        specs = list(self.specs)
        if self.opts.candidate is not None:
            specs.append(Spec("candidate", self.precision, self.klass, self.klass == "tf32"))
        return [row_key(self._base_row(size, mode, s)) for s in specs]

    def cases(self) -> List[Tuple[Size, str]]:
        return [(size, mode) for size in self.opts.sizes for mode in self.opts.modes]

    def _base_row(self, size: Size, mode: str, spec: Spec) -> Row:
        return new_row(impl=spec.impl, mode=mode, dtype=dtype_name(self.dtype), precision=spec.precision,
                       accuracy_class=spec.klass, batch=size.batch, in_features=size.in_features,
                       out_features=size.out_features, seed=self.seed, **self.provenance)

    # -- building ---------------------------------------------------------------------------------------
    def _template(self, size: Size) -> torch.nn.Module:
        """Model(K, N) drawn under the run's seed, on the CPU: every provider starts from these values."""
        if size not in self._templates:
            from .reference import Model
            torch.manual_seed(self.seed)
            self._templates = {size: Model(size.in_features, size.out_features)}  # keep one: 256 MB at 8192²
        return self._templates[size]

    def _inputs(self, size: Size, mode: str) -> List[Inputs]:
        return make_input_sets(size, mode, self.seed, self.opts.input_sets, self.device, self.dtype)

    def _build(self, spec: Spec, size: Size, mode: str) -> Provider:
        template = self._template(size)
        if spec.impl in ("mishbench", "composite"):
            from .model import ModelNew
            module = ModelNew(size.in_features, size.out_features, precision=spec.precision)
            module.load_state_dict(template.state_dict(), strict=True)
        else:
            module = copy.deepcopy(template)
        module = module.to(self.device, self.dtype)
        if spec.impl in ("compile", "compile-max"):
            return Provider(spec, module, _compile(module, spec.impl), mode)
        return Provider(spec, module, module, mode)

    # -- one case ---------------------------------------------------------------------------------------
    def run_case(self, size: Size, mode: str, progress: Callable[[str], None]) -> List[Row]:
        rows: Dict[Spec, Row] = {spec: self._base_row(size, mode, spec) for spec in self.specs}
        need = estimate_bytes(size, mode, self.dtype, len(self.specs), self.opts.input_sets,
                              flush_bytes(self.device) if self.device.type == "cuda" else 0)
        free = self.free_memory() if self.free_memory is not None else None
        if free is not None and need > free:
            why = f"needs ~{_fmt_bytes(need)}, {_fmt_bytes(free)} free: not tried"
            for spec, row in rows.items():
                row["status"] = "oom"
                self._note(size, mode, spec, why)
        else:
            try:
                self._measure_case(size, mode, rows, progress)
            except torch.cuda.OutOfMemoryError as exc:  # in the shared setup (inputs, reference)
                self._fail_open(rows, size, mode, "oom", _one_line(exc))
            except Exception as exc:  # noqa: BLE001 - the reference itself failed: nothing can be gated
                self._fail_open(rows, size, mode, "error", "setup: " + _one_line(exc))
            finally:
                _release(self.device)
            self._fail_open(rows, size, mode, "error", "no result (internal error)")
        out = list(rows.values())
        if self.opts.candidate is not None:
            out += self._candidate_rows(size, mode, progress)
        _fill_speedups(out)
        for row in out:
            self._fill_rates(row, size, mode)
        return out

    def _fail_open(self, rows: Dict[Spec, Row], size: Size, mode: str, status: str, message: str) -> None:
        """Every row of the case that has no status yet gets `status`."""
        for spec, row in rows.items():
            if not row["status"]:
                row["status"] = status
                self._note(size, mode, spec, message)

    def _measure_case(self, size: Size, mode: str, rows: Dict[Spec, Row], progress) -> None:
        from .verify import reference_run
        if any(s.impl in ("compile", "compile-max") for s in self.specs):
            import torch._dynamo as dynamo
            dynamo.reset()  # fixed shapes, fresh cache per shape
        progress("inputs and float64 reference")
        inputs = self._inputs(size, mode)
        state = self._template(size).state_dict()
        first = inputs[0]
        y64, g64 = reference_run(size, state, first.x, first.grad_y, torch.float64)
        truth = dict(g64 or {}, y=y64)
        bars: Dict[str, Dict[str, float]] = {}
        for klass, tf32 in sorted({(s.klass, s.tf32) for s in self.specs}):
            ye, ge = reference_run(size, state, first.x, first.grad_y, self.dtype, tf32=tf32)
            eager = dict(ge or {}, y=ye)
            bars[klass] = {name: error_bar(rel_err(eager[name], truth[name]), self.dtype) for name in truth}
            del ye, ge, eager
        live: List[Provider] = []
        watches: Dict[Provider, CompileWatch] = {}
        for spec in self.specs:
            progress(f"{spec.impl}: build and check")
            try:
                prov, watch = self._prepare(spec, size, mode, inputs, truth, bars[spec.klass])
            except ProviderFailed as exc:
                rows[spec]["status"] = exc.status
                self._note(size, mode, spec, exc.message)
                continue
            rows[spec]["rel_err"] = prov.rel_err
            rows[spec]["compile_s"] = prov.compile_s
            rows[spec]["peak_mem_mb"] = prov.peak_mem_mb
            if not prov.bar_ratio <= 1.0:  # NaN fails too
                rows[spec]["status"] = "mismatch"
                self._note(size, mode, spec, f"rel_err {prov.rel_err:.3g} above the bar: not timed")
                continue
            live.append(prov)
            if watch is not None:
                watches[prov] = watch
        del truth
        for watch in watches.values():
            watch.freeze()
        self._time_interleaved(live, inputs, rows, watches, progress)

    def _prepare(self, spec: Spec, size: Size, mode: str, inputs: List[Inputs], truth, bars):
        """Build the provider, compile it (timed apart), run the correctness gate, measure its memory."""
        watch = None
        try:
            prov = self._build(spec, size, mode)
            if spec.impl in ("compile", "compile-max"):
                watch = CompileWatch()
                watch.before_first_call()
                prov.setup(inputs[0])
                t0 = time.perf_counter()
                with prov.context():
                    prov.call(inputs[0])
                _sync(self.device)
                prov.compile_s = time.perf_counter() - t0
                watch.after_first_call()
            before = 0
            if self.device.type == "cuda":
                _sync(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
                before = torch.cuda.memory_allocated(self.device)
            y, grads = prov.outputs(inputs[0])
            if self.device.type == "cuda":
                _sync(self.device)
                own = sum(p.numel() * p.element_size() for p in prov.module.parameters())
                own += inputs[0].x.numel() * inputs[0].x.element_size()
                prov.peak_mem_mb = (torch.cuda.max_memory_allocated(self.device) - before + own) / 2**20
            got = dict(grads, y=y)
            worst, worst_ratio = 0.0, -1.0
            for name, ref in truth.items():
                out = got.get(name)
                err = math.inf if out is None else rel_err(out, ref)
                ratio = err / bars[name] if bars[name] > 0 else math.inf
                if ratio > worst_ratio or math.isnan(err):
                    worst, worst_ratio = err, ratio
            prov.rel_err = worst
            prov.bar_ratio = worst_ratio
            del y, grads, got
            prov.setup(inputs[0])
            return prov, watch
        except ProviderFailed:
            raise
        except torch.cuda.OutOfMemoryError as exc:
            _release(self.device)
            raise ProviderFailed("oom", _one_line(exc)) from None
        except Exception as exc:  # noqa: BLE001 - one provider failing must not end the sweep
            raise ProviderFailed("error", _one_line(exc)) from None

    def _time_interleaved(self, live: List[Provider], inputs: List[Inputs], rows: Dict[Spec, Row],
                          watches: Dict[Provider, CompileWatch], progress) -> None:
        """Rounds of a chunk per provider until each has `iters` samples; then more rounds, for the
        providers whose spread is still above MAX_SPREAD, up to max_iters or the case budget."""
        opts = self.opts
        chunk = max(1, math.ceil(self.iters / ROUNDS))
        max_iters = max(opts.max_iters, self.iters)
        started = set()

        def run_chunk(prov: Provider, n: int) -> None:
            first = prov not in started
            started.add(prov)
            progress(f"{prov.spec.impl}: timing ({prov.samples}/{self.iters})")
            try:
                with prov.context():
                    t = self.timer(prov.call, inputs, warmup=opts.warmup if first else 1,
                                   warmup_ms=opts.warmup_ms if first else 0.0, iters=n, max_iters=n,
                                   setup=prov.setup)
                prov.parts.append(t)
            except torch.cuda.OutOfMemoryError as exc:
                _release(self.device)
                raise ProviderFailed("oom", _one_line(exc)) from None
            except ProviderFailed:
                raise
            except Exception as exc:  # noqa: BLE001
                raise ProviderFailed("error", _one_line(exc)) from None

        def attempt(prov: Provider, n: int) -> None:
            try:
                run_chunk(prov, n)
            except ProviderFailed as exc:
                rows[prov.spec]["status"] = exc.status
                self._note_spec(rows[prov.spec], exc.message)
                live.remove(prov)

        while True:
            behind = [p for p in live if p.samples < self.iters]
            if not behind:
                break
            for prov in behind:
                attempt(prov, min(chunk, self.iters - prov.samples))
        deadline = time.perf_counter() + CASE_BUDGET_S
        while time.perf_counter() < deadline:
            wide = [p for p in live if p.samples < max_iters and merge(p.parts).spread > MAX_SPREAD]
            if not wide:
                break
            for prov in wide:
                attempt(prov, min(chunk, max_iters - prov.samples))
        for prov in list(live):
            row = rows[prov.spec]
            watch = watches.get(prov)
            try:
                if watch is not None:
                    watch.check()
            except ProviderFailed as exc:
                row["status"] = exc.status
                self._note_spec(row, exc.message)
                continue
            t = merge(prov.parts)
            row.update(median_ms=t.median_ms, p20_ms=t.p20_ms, p80_ms=t.p80_ms, iters=t.iters, status="ok")

    def _candidate_rows(self, size: Size, mode: str, progress) -> List[Row]:
        """The candidate's row, measured in its worker process (issue 6), which stays open across cases; the
        baselines of this case were timed just before, in this process (which the candidate never ran in)."""
        spec = Spec("candidate", self.precision, self.klass, self.klass == "tf32")
        progress("candidate: in its own process")
        row = self._base_row(size, mode, spec)
        try:
            part = dict(self.candidate.measure(size, mode, warmup=self.opts.warmup, iters=self.iters))
        except Exception as exc:  # noqa: BLE001 - the harness's side failed (e.g. the float64 reference)
            row["status"] = "error"
            self._note(size, mode, spec, _one_line(exc))
            return [row]
        row.update({k: v for k, v in part.items() if k in COLUMNS and k not in self.provenance})
        if row["status"] not in ("ok", "mismatch", "oom", "error"):
            row["status"] = "error"
        note = " ".join(str(part.get("detail") or "").split())
        host, ev = part.get("host_median_ms"), part.get("median_ms")
        try:
            if host is not None and ev and float(host) > 1.5 * float(ev) + 0.05:
                note += f" host time {float(host):.4g} ms vs event time {float(ev):.4g} ms: work outside " \
                        "the current stream?"
        except (TypeError, ValueError):
            pass
        if note.strip():
            self._note_spec(row, note.strip())
        return [row]

    def _fill_rates(self, row: Row, size: Size, mode: str) -> None:
        if row["status"] != "ok" or row["median_ms"] in ("", None):
            return
        tflops = _flops(size, mode) / (float(row["median_ms"]) * 1e-3) / 1e12
        row["tflops"] = tflops
        if self.peak_fn is None:
            return
        kind, div = peak_kind(str(row["precision"]), self.dtype)
        try:
            peak = self.peak_fn(kind) / div
        except Exception as exc:  # noqa: BLE001 - a missing peak leaves pct empty, it fails nothing
            self.console.print(f"[yellow]peak {kind} not measured[/]: {_one_line(exc)}", highlight=False)
            self.peak_fn = None
            return
        row["pct_of_peak"] = 100.0 * tflops / peak if peak > 0 else ""

    # -- notes ------------------------------------------------------------------------------------------
    def _note(self, size: Size, mode: str, spec: Spec, message: str) -> None:
        self.messages[(str(size), mode, spec.impl, spec.precision)] = message

    def _note_spec(self, row: Row, message: str) -> None:
        size = Size(int(row["batch"]), int(row["in_features"]), int(row["out_features"]))
        self.messages[(str(size), str(row["mode"]), str(row["impl"]), str(row["precision"]))] = message

    def message_for(self, row: Row) -> str:
        size = Size(int(row["batch"]), int(row["in_features"]), int(row["out_features"]))
        return self.messages.get((str(size), str(row["mode"]), str(row["impl"]), str(row["precision"])), "")


def _fill_speedups(rows: List[Row]) -> None:
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


def _done_keys(path: Path) -> set:
    return {row_key(r) for r in read_rows(path) if r.get("status") == "ok"}


def _run_rows(opts: BenchOptions, console, device: torch.device, timer: Timer = time_cuda,
              peak_fn: Optional[Callable[[str], float]] = None,
              free_memory: Optional[Callable[[], int]] = None, run: Optional[_Run] = None) -> int:
    """The bench loop on any device; returns the exit code. KeyboardInterrupt propagates to the caller,
    after every finished case's rows are on disk (`run.written` says which)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    run = run or _Run(opts, console, device, timer, peak_fn, free_memory)
    if opts.candidate is not None:
        try:
            from .candidate import CandidateBench
        except ImportError as exc:
            console.print(f"[bold red]error:[/] --candidate: the candidates module cannot be loaded ({exc})",
                          highlight=False, soft_wrap=True)
            return 1
        # Reads the file only (CandidateUsageError, exit 2, before anything is timed); the worker starts below.
        run.candidate = CandidateBench(opts.candidate, device, opts.dtype, run.precision, run.seed)
    try:
        done = _done_keys(opts.out) if opts.resume else set()
        append_rows(opts.out, [])  # creates it with the header; a foreign --out fails now, not mid-run
    except CsvSchemaError as exc:
        console.print(f"[bold red]error:[/] --out: {exc}", highlight=False, soft_wrap=True)
        return 2
    todo, skipped = [], 0
    for size, mode in run.cases():
        keys = run.planned_keys(size, mode)
        if done and all(k in done for k in keys):
            skipped += 1
        else:
            todo.append((size, mode))
    if skipped:
        console.print(f"--resume: {skipped} case(s) already in {opts.out} with every row ok: skipped",
                      highlight=False)
    if run.subject_impl == "composite" and device.type == "cuda":
        from . import ops
        console.print(f"[yellow]warning[/]: the CUDA extension is not loaded ({ops.extension_reason()}); "
                      "ModelNew rows run plain PyTorch and are labelled impl=composite", highlight=False)
    per_case = len(run.specs) + (1 if opts.candidate is not None else 0)
    total = len(todo) * per_case
    console.print(f"bench run {run.run_id[:8]}: {len(todo)} case(s), {total} row(s), {dtype_name(opts.dtype)} "
                  f"precision={run.precision} (class {run.klass}), seed={run.seed} -> {opts.out}", highlight=False)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar, ExitStack() as stack:
        task = bar.add_task("starting", total=total)
        if run.candidate is not None and todo:
            # One worker for every case, closed when the loop ends, and killed at once when Ctrl-C or an
            # error leaves it. A candidate that does not load gives an 'error' row per case, saying why.
            bar.update(task, description="candidate: starting its process and loading it (builds included)")
            stack.enter_context(run.candidate)
        for i, (size, mode) in enumerate(todo):
            row0 = i * per_case + 1

            def progress(what: str, size=size, mode=mode, row0=row0) -> None:
                bar.update(task, description=f"rows {row0}-{row0 + per_case - 1}/{total} · {size} {mode} · {what}")

            rows = run.run_case(size, mode, progress)
            stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            for row in rows:
                row["timestamp"] = stamp
            append_rows(opts.out, rows)
            run.written += rows
            bar.advance(task, len(rows))
            for row in rows:
                msg = run.message_for(row)
                if row["status"] != "ok":
                    bar.console.print(f"[yellow]{size} {mode} {row['impl']} ({row['precision']}): {row['status']}[/]"
                                      f"{': ' + msg if msg else ''}", highlight=False, soft_wrap=True)
    console.print(results_table(run.written, run))
    console.print(f"{len(run.written)} row(s) appended to {opts.out}", highlight=False)
    failed = [r for r in run.written if r["impl"] in SUBJECT_IMPLS and r["status"] in ("mismatch", "error")]
    return 1 if failed else 0


def run_bench(opts: BenchOptions, console) -> int:
    """`mishbench bench`: exit code 0 ok, 1 failed (or no GPU), 2 usage, 130 interrupted."""
    if opts.distributed:
        from .distributed_bench import run_distributed_bench
        return run_distributed_bench(opts, console)
    if not torch.cuda.is_available():
        console.print("bench needs a CUDA GPU: none is visible here", highlight=False)
        return 1
    device = torch.device("cuda", torch.cuda.current_device())
    return run_guarded(opts, console, device, timer=time_cuda, peak_fn=lambda kind: peak_tflops(device, kind),
                       free_memory=lambda: _cuda_free_bytes(device))


def run_guarded(opts: BenchOptions, console, device: torch.device, **kwargs) -> int:
    """`_run_rows` with Ctrl-C turned into a count of the kept rows and exit code 130 (no traceback)."""
    run = _Run(opts, console, device, kwargs.get("timer", time_cuda), kwargs.get("peak_fn"),
               kwargs.get("free_memory"))
    try:
        return _run_rows(opts, console, device, run=run, **kwargs)
    except KeyboardInterrupt:
        console.print(f"interrupted: {len(run.written)} finished row(s) kept in {opts.out}", highlight=False)
        return INTERRUPTED
    except Exception as exc:  # noqa: BLE001
        if type(exc).__name__ != "CandidateUsageError":
            raise
        console.print(f"[bold red]error:[/] --candidate: {exc}", highlight=False, soft_wrap=True)
        return 2


# ---------------------------------------------------------------------------------------------------------
# The final table
# ---------------------------------------------------------------------------------------------------------
def _num(value, fmt: str) -> str:
    if value in ("", None):
        return ""
    try:
        return format(float(value), fmt)
    except (TypeError, ValueError):
        return str(value)


def results_table(rows: Sequence[Row], run: Optional[_Run] = None, title: str = "mishbench bench",
                  extra: Optional[Tuple[str, Callable[[Row], str]]] = None):
    """The bench table; `extra` = (header, cell of a row) adds a column after the times (e.g. per-rank times)."""
    from rich.markup import escape
    from rich.table import Table
    table = Table(title=title, title_justify="left")
    columns = [("shape", "left"), ("mode", "left"), ("impl", "left"), ("precision", "left"),
               ("ms (p20–p80)", "right")]
    if extra is not None:
        columns.append((extra[0], "right"))
    columns += [("TFLOP/s", "right"), ("% peak", "right"), ("× eager", "right"), ("× compile", "right"),
                ("× fp32 eager (KernelBench)", "right"), ("rel_err", "right"), ("compile s", "right"),
                ("status", "left")]
    for name, justify in columns:
        table.add_column(name, justify=justify, overflow="fold")
    style = {"ok": "green", "mismatch": "bold red", "error": "bold red", "oom": "yellow"}
    for r in rows:
        ms = ""
        if r["median_ms"] not in ("", None):
            ms = f"{float(r['median_ms']):.4g} ({float(r['p20_ms']):.4g}–{float(r['p80_ms']):.4g})"
        status = f"[{style.get(str(r['status']), '')}]{r['status']}[/]"
        msg = run.message_for(r) if run is not None else ""
        if msg:
            status += f" {escape(msg)}"  # messages quote exceptions: '[...]' in them is not markup
        cells = [f"{r['batch']}x{r['in_features']}x{r['out_features']}", str(r["mode"]), str(r["impl"]),
                 str(r["precision"]), ms] + ([extra[1](r)] if extra is not None else [])
        table.add_row(*cells, _num(r["tflops"], ".1f"), _num(r["pct_of_peak"], ".0f"),
                      _num(r["speedup_vs_eager"], ".2f"), _num(r["speedup_vs_compile"], ".2f"),
                      _num(r["speedup_vs_fp32_eager"], ".2f"), _num(r["rel_err"], ".2e"),
                      _num(r["compile_s"], ".1f"), status)
    return table
