"""`mishbench bench` in this process: time Model (eager, torch.compile) and ModelNew across shapes.

One *case* is (shape, mode). For each case every provider is built on the same parameters and inputs,
gated against the float64 truth (the one judge, truth.py), then timed in interleaved rounds -- a chunk of
each provider in turn, repeated -- so clock and thermal drift hit all providers alike. Speedups are ratios
within the case (same run_id). The case's rows go to the CSV as soon as it finishes (sink.py), so Ctrl-C
keeps every finished case.

`run_rows` takes the device, the timer, the peak-rate function and the free-memory probe as arguments, so
the CPU tests drive it end to end with `clock.time_cpu` and simulated failures.
"""
import copy
import math
import time
from contextlib import ExitStack
from typing import Callable, Dict, List, Optional

import torch

from mishbench.bench.plan import CASE_BUDGET_S, INTERRUPTED, ROUNDS, BenchOptions, Plan, fill_speedups
from mishbench.bench.providers import (CompileWatch, Inputs, Provider, ProviderFailed, Spec, compile_module,
                                       estimate_bytes, fmt_bytes, gate, make_input_sets, one_line, release, sync)
from mishbench.bench.sink import Sink, finish
from mishbench.bench.table import results_table
from mishbench.clock import MAX_SPREAD, Timing, flush_bytes, merge
from mishbench.op.model import ModelNew
from mishbench.op.precision import dtype_name
from mishbench.schema import COLUMNS, CsvSchemaError, Row
from mishbench.shapes import Size
from mishbench.truth import eager_run, floors, reference_run

Timer = Callable[..., Timing]
BATCH_ROUNDS = 3  # --candidate: rounds of 2 batches per worker, alternating (each batch ~50 ms of calls)


class LocalRun:
    """The cases of one plan, measured in this process."""

    def __init__(self, plan: Plan, timer: Timer, free_memory: Optional[Callable[[], int]]):
        self.plan, self.device, self.timer = plan, plan.device, timer
        self.free_memory = free_memory
        self.candidate = None  # candidate.measure.CandidateBench for --candidate: ONE worker for the run
        # --candidate: each planned row's trusted worker (CandidateBench.trusted), by spec; every row of a
        # case is then timed by the harness's batch clock, the workers alternating (_batch_case).
        self.trusted: Dict[Spec, object] = {}

    # -- building ---------------------------------------------------------------------------------------
    def _inputs(self, size: Size, mode: str) -> List[Inputs]:
        return make_input_sets(size, mode, self.plan.seed, self.plan.opts.input_sets, self.device, self.plan.dtype)

    def _build(self, spec: Spec, size: Size, mode: str) -> Provider:
        template = self.plan.template(size)
        if spec.impl == "mishbench":
            module = ModelNew(size.in_features, size.out_features, precision=spec.precision)
            module.load_state_dict(template.state_dict(), strict=True)
        else:
            module = copy.deepcopy(template)
        module = module.to(self.device, self.plan.dtype)
        if spec.impl in ("compile", "compile-max"):
            return Provider(spec, module, compile_module(module, spec.impl), mode)
        return Provider(spec, module, module, mode)

    # -- one case ---------------------------------------------------------------------------------------
    def run_case(self, size: Size, mode: str, progress: Callable[[str], None]) -> List[Row]:
        if self.candidate is not None:
            return self._finish_rows(self._batch_case(size, mode, progress), size, mode)
        rows: Dict[Spec, Row] = {spec: self.plan.base_row(size, mode, spec) for spec in self.plan.specs}
        need = estimate_bytes(size, mode, self.plan.dtype, len(self.plan.specs), self.plan.opts.input_sets,
                              flush_bytes(self.device) if self.device.type == "cuda" else 0)
        free = self.free_memory() if self.free_memory is not None else None
        if free is not None and need > free:
            why = f"needs ~{fmt_bytes(need)}, {fmt_bytes(free)} free: not tried"
            for spec, row in rows.items():
                row["status"] = "oom"
                self.plan.note(size, mode, spec, why)
        else:
            try:
                self._measure_case(size, mode, rows, progress)
            except torch.cuda.OutOfMemoryError as exc:  # in the shared setup (inputs, reference)
                self._fail_open(rows, size, mode, "oom", one_line(exc))
            except Exception as exc:  # noqa: BLE001 - the reference itself failed: nothing can be gated
                self._fail_open(rows, size, mode, "error", "setup: " + one_line(exc))
            finally:
                release(self.device)
            self._fail_open(rows, size, mode, "error", "no result (internal error)")
        return self._finish_rows(list(rows.values()), size, mode)

    def _finish_rows(self, out: List[Row], size: Size, mode: str) -> List[Row]:
        fill_speedups(out)
        for row in out:
            self.plan.fill_rates(row, size, mode)
        return out

    def _batch_case(self, size: Size, mode: str, progress) -> List[Row]:
        """--candidate: every row in a worker of its own (the baselines' trusted), judged, then timed in
        BATCH_ROUNDS rounds, each worker a few batches in turn, so drift hits all alike."""
        workers = [(spec, self.trusted[spec]) for spec in self.plan.specs]
        workers.append((self.plan.candidate_spec, self.candidate))
        cases = []
        for spec, bench in workers:
            progress(f"{spec.impl}: check in its own process")
            cases.append(bench.start(size, mode))
        for r in range(BATCH_ROUNDS):
            for (spec, bench), case in zip(workers, cases):
                progress(f"{spec.impl}: timing round {r + 1}/{BATCH_ROUNDS}")
                bench.time_round(case, batches=2)
        return [self._worker_row(spec, bench.finish(case), size, mode) for (spec, bench), case in zip(workers, cases)]

    def _fail_open(self, rows: Dict[Spec, Row], size: Size, mode: str, status: str, message: str) -> None:
        """Every row of the case that has no status yet gets `status`."""
        for spec, row in rows.items():
            if not row["status"]:
                row["status"] = status
                self.plan.note(size, mode, spec, message)

    def _measure_case(self, size: Size, mode: str, rows: Dict[Spec, Row], progress) -> None:
        if any(s.impl in ("compile", "compile-max") for s in self.plan.specs):
            import torch._dynamo as dynamo
            dynamo.reset()  # fixed shapes, fresh cache per shape
        progress("inputs and float64 reference")
        inputs = self._inputs(size, mode)
        state = self.plan.template(size).state_dict()
        first = inputs[0]
        y64, g64 = reference_run(size, state, first.x, first.grad_y, torch.float64)
        truth = dict(g64 or {}, y=y64)
        fl = floors(state, first.x, first.grad_y, self.plan.dtype, truth)
        eagers: Dict[str, Dict[str, torch.Tensor]] = {}
        for accuracy, tf32 in sorted({(s.accuracy, s.tf32) for s in self.plan.specs}):
            ye, ge = eager_run(size, state, first.x, first.grad_y, self.plan.dtype, tf32=tf32)
            eagers[accuracy] = dict(ge or {}, y=ye)
        live: List[Provider] = []
        watches: Dict[Provider, CompileWatch] = {}
        for spec in self.plan.specs:
            progress(f"{spec.impl}: build and check")
            try:
                prov, watch = self._prepare(spec, size, mode, inputs, truth, eagers[spec.accuracy], fl)
            except ProviderFailed as exc:
                rows[spec]["status"] = exc.status
                self.plan.note(size, mode, spec, exc.message)
                continue
            rows[spec]["rel_err"] = prov.rel_err
            rows[spec]["compile_s"] = prov.compile_s
            rows[spec]["peak_mem_mb"] = prov.peak_mem_mb
            if not prov.bar_ratio <= 1.0:  # NaN fails too
                rows[spec]["status"] = "mismatch"
                self.plan.note(size, mode, spec, f"rel_err {prov.rel_err:.3g} above the bar: not timed")
                continue
            live.append(prov)
            if watch is not None:
                watches[prov] = watch
        del truth, eagers
        for watch in watches.values():
            watch.freeze()
        self._time_interleaved(live, inputs, rows, watches, progress)

    def _prepare(self, spec: Spec, size: Size, mode: str, inputs: List[Inputs], truth, eager, fl):
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
                sync(self.device)
                prov.compile_s = time.perf_counter() - t0
                watch.after_first_call()
            before = 0
            if self.device.type == "cuda":
                sync(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
                before = torch.cuda.memory_allocated(self.device)
            y, grads = prov.outputs(inputs[0])
            if self.device.type == "cuda":
                sync(self.device)
                own = sum(p.numel() * p.element_size() for p in prov.module.parameters())
                own += inputs[0].x.numel() * inputs[0].x.element_size()
                prov.peak_mem_mb = (torch.cuda.max_memory_allocated(self.device) - before + own) / 2**20
            got = dict(grads, y=y)
            prov.rel_err, prov.bar_ratio = gate(got, truth, eager, self.plan.dtype, fl)
            del y, grads, got
            prov.setup(inputs[0])
            return prov, watch
        except ProviderFailed:
            raise
        except torch.cuda.OutOfMemoryError as exc:
            release(self.device)
            raise ProviderFailed("oom", one_line(exc)) from None
        except Exception as exc:  # noqa: BLE001 - one provider failing must not end the sweep
            raise ProviderFailed("error", one_line(exc)) from None

    def _time_interleaved(self, live: List[Provider], inputs: List[Inputs], rows: Dict[Spec, Row],
                          watches: Dict[Provider, CompileWatch], progress) -> None:
        """Rounds of a chunk per provider until each has `iters` samples; then more rounds, for the
        providers whose spread is still above MAX_SPREAD, up to max_iters or the case budget."""
        opts = self.plan.opts
        chunk = max(1, math.ceil(self.plan.iters / ROUNDS))
        max_iters = max(opts.max_iters, self.plan.iters)
        started = set()

        def run_chunk(prov: Provider, n: int) -> None:
            first = prov not in started
            started.add(prov)
            progress(f"{prov.spec.impl}: timing ({prov.samples}/{self.plan.iters})")
            try:
                with prov.context():
                    t = self.timer(prov.call, inputs, warmup=opts.warmup if first else 1,
                                   warmup_ms=opts.warmup_ms if first else 0.0, iters=n, max_iters=n,
                                   setup=prov.setup)
                prov.parts.append(t)
            except torch.cuda.OutOfMemoryError as exc:
                release(self.device)
                raise ProviderFailed("oom", one_line(exc)) from None
            except ProviderFailed:
                raise
            except Exception as exc:  # noqa: BLE001
                raise ProviderFailed("error", one_line(exc)) from None

        def attempt(prov: Provider, n: int) -> None:
            try:
                run_chunk(prov, n)
            except ProviderFailed as exc:
                rows[prov.spec]["status"] = exc.status
                self.plan.note_row(rows[prov.spec], exc.message)
                live.remove(prov)

        while True:
            behind = [p for p in live if p.samples < self.plan.iters]
            if not behind:
                break
            for prov in behind:
                attempt(prov, min(chunk, self.plan.iters - prov.samples))
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
                self.plan.note_row(row, exc.message)
                continue
            t = merge(prov.parts)
            row.update(median_ms=t.median_ms, p20_ms=t.p20_ms, p80_ms=t.p80_ms, iters=t.iters, status="ok")

    def _worker_row(self, spec: Spec, part: Dict[str, object], size: Size, mode: str) -> Row:
        """A row measured in a worker process: the plan's row with the worker's part filled in."""
        row = self.plan.base_row(size, mode, spec)
        row.update({k: v for k, v in part.items() if k in COLUMNS and k not in self.plan.provenance})
        if row["status"] not in ("ok", "mismatch", "oom", "error"):
            row["status"] = "error"
        note = " ".join(str(part.get("detail") or "").split())
        if note:
            self.plan.note_row(row, note)
        return row


def run_rows(opts: BenchOptions, console, device: torch.device, timer: Timer,
             peak_fn: Optional[Callable[[str], float]] = None,
             free_memory: Optional[Callable[[], int]] = None, plan: Optional[Plan] = None) -> int:
    """The bench loop on any device; returns the exit code. KeyboardInterrupt propagates to the caller,
    after every finished case's rows are on disk (`plan.written` says which)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    plan = plan or Plan(opts, console, device, peak_fn=peak_fn)
    run = LocalRun(plan, timer, free_memory)
    if opts.candidate is not None:
        try:
            from mishbench.candidate.measure import CandidateBench
        except ImportError as exc:
            console.print(f"[bold red]error:[/] --candidate: the candidates module cannot be loaded ({exc})",
                          highlight=False, soft_wrap=True)
            return 1
        # Reads the file only (CandidateUsageError, exit 2, before anything is timed); the worker starts below.
        run.candidate = CandidateBench(opts.candidate, device, opts.dtype, plan.precision, plan.seed)
        from mishbench.op.build import cache_root
        run.trusted = {spec: CandidateBench.trusted(spec.impl, spec.precision, spec.tf32, device, opts.dtype,
                                                    plan.seed, str(cache_root())) for spec in plan.specs}
    sink = Sink(opts.out, opts.resume)
    try:
        sink.open()
    except CsvSchemaError as exc:
        console.print(f"[bold red]error:[/] --out: {exc}", highlight=False, soft_wrap=True)
        return 2
    todo, skipped = sink.pending(plan.cases(), plan.planned_keys)
    if skipped:
        console.print(f"--resume: {skipped} case(s) already in {opts.out} with every row ok: skipped",
                      highlight=False)
    if not plan.kernels and device.type == "cuda":
        from mishbench.op import ops
        console.print(f"[yellow]warning[/]: the CUDA extension is not loaded ({ops.extension_reason()}); "
                      "ModelNew rows run plain PyTorch and say route=composite", highlight=False)
    per_case = len(plan.specs) + (1 if opts.candidate is not None else 0)
    total = len(todo) * per_case
    console.print(f"bench run {plan.run_id[:8]}: {len(todo)} case(s), {total} row(s), {dtype_name(opts.dtype)} "
                  f"precision={plan.precision} (class {plan.accuracy}), seed={plan.seed} -> {opts.out}", highlight=False)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar, ExitStack() as stack:
        task = bar.add_task("starting", total=total)
        if run.candidate is not None and todo:
            # One worker for every case, closed when the loop ends, and killed at once when Ctrl-C or an
            # error leaves it. A candidate that does not load gives an 'error' row per case, saying why.
            bar.update(task, description="candidate: starting its process and loading it (builds included)")
            stack.enter_context(run.candidate)
            for spec, bench in run.trusted.items():
                bar.update(task, description=f"{spec.impl}: starting its (trusted) process")
                stack.enter_context(bench)
        for i, (size, mode) in enumerate(todo):
            row0 = i * per_case + 1

            def progress(what: str, size=size, mode=mode, row0=row0) -> None:
                bar.update(task, description=f"rows {row0}-{row0 + per_case - 1}/{total} · {size} {mode} · {what}")

            rows = run.run_case(size, mode, progress)
            sink.write(rows, plan.written)
            bar.advance(task, len(rows))
            for row in rows:
                msg = plan.message_for(row)
                if row["status"] != "ok":
                    bar.console.print(f"[yellow]{size} {mode} {row['impl']} ({row['precision']}): {row['status']}[/]"
                                      f"{': ' + msg if msg else ''}", highlight=False, soft_wrap=True)
    return finish(console, results_table(plan.written, plan), plan.written, opts.out)


def run_guarded(opts: BenchOptions, console, device: torch.device, **kwargs) -> int:
    """`run_rows` with Ctrl-C turned into a count of the kept rows and exit code 130 (no traceback)."""
    plan = Plan(opts, console, device, peak_fn=kwargs.get("peak_fn"))
    try:
        return run_rows(opts, console, device, plan=plan, **kwargs)
    except KeyboardInterrupt:
        console.print(f"interrupted: {len(plan.written)} finished row(s) kept in {opts.out}", highlight=False)
        return INTERRUPTED
    except Exception as exc:  # noqa: BLE001
        if type(exc).__name__ != "CandidateUsageError":
            raise
        console.print(f"[bold red]error:[/] --candidate: {exc}", highlight=False, soft_wrap=True)
        return 2
