"""`bench --candidate FILE`: one candidate worker kept open for a whole bench run, and the candidate's part of
each result row (judged here against float64 truth, then timed)."""
import hashlib
import math
import random
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from mishbench.candidate.process import CandidateError, Limits
from mishbench.candidate.runner import RemoteRunner
from mishbench.candidate.source import Candidate, load_candidate
from mishbench.clock import merge
from mishbench.shapes import Size
from mishbench.inputs import make_inputs
from mishbench.truth import Judge, new_seed


# CUDA errors after which the process's context is unusable: every later request would fail the same way.
_STICKY_CUDA = re.compile(r"illegal memory access|device-side assert|misaligned address|unspecified launch failure"
                          r"|illegal instruction", re.IGNORECASE)


TRUSTED = "trusted"  # Candidate.origin of the baselines' own workers (trusted_source)


def trusted_source(impl: str, precision: str, tf32: bool, cache: str) -> str:
    """The code a baseline's worker runs, so bench --candidate times every row the same way: eager Model,
    torch.compile of it (fixed shapes), or our ModelNew (its extension from `cache`, built already)."""
    lines = ["import os", "import torch", ""]
    if tf32:  # the tf32 accuracy class: eager's matmuls in TF32 for the whole (trusted) process
        lines += ["from mishbench.op.precision import eager_matmul_mode", "eager_matmul_mode(True).__enter__()"]
    if impl == "eager":
        lines += ["from mishbench.op.reference import Model as ModelNew"]
    elif impl in ("compile", "compile-max"):
        extra = ', mode="max-autotune"' if impl == "compile-max" else ""
        lines += ["from mishbench.op.reference import Model", "", "",
                  "class ModelNew(Model):",
                  "    def __init__(self, in_features, out_features):",
                  "        super().__init__(in_features, out_features)",
                  f"        self._compiled = torch.compile(super().forward, dynamic=False{extra})",
                  "", "    def forward(self, x):", "        return self._compiled(x)"]
    elif impl == "mishbench":
        lines += [f"os.environ['MISHBENCH_CACHE'] = {cache!r}",
                  "from mishbench.op.model import ModelNew as _Ours", "", "",
                  "class ModelNew(_Ours):",
                  "    def __init__(self, in_features, out_features):",
                  f"        super().__init__(in_features, out_features, precision={precision!r})"]
    else:
        raise ValueError(f"no trusted worker for {impl!r}")
    return "\n".join(lines) + "\n"


class BatchCase:
    """One (shape, mode) of one worker: its row so far, the judge, the inputs, and the timed rounds."""

    def __init__(self, size: Size, mode: str, row: Dict[str, Any]):
        self.size, self.mode, self.row = size, mode, row
        self.done = False  # an error row: nothing more to time
        self.judge = self.state = self.x = self.grad_y = self.pick = None
        self.rounds: List[Dict[str, Any]] = []


class CandidateBench:
    """One worker kept open for a whole bench run -- the candidate's, or (`trusted`) a baseline's: with
    --candidate every row of a case is timed by the harness's batch clock in a worker of its own, the
    workers' rounds alternating (local.LocalRun), so the ratios compare like with like. A case is
    `start` (judged against float64 truth), `time_round` (batches timed here), `finish` (the row part);
    `measure` is the three in one.

    `open()` starts the worker and loads the candidate; a candidate that does not load is no exception:
    `load_error` says why and every `measure` returns an 'error' row with it. A crash or timeout mid-run
    fails that case's row; the next `measure` restarts the worker, up to `Limits.max_fatal` failures, after
    which rows are 'error' at once; a sticky CUDA error (illegal address, device-side assert) counts as a
    crash, since the worker's CUDA context cannot run another case. `close()` ends the worker; as a context
    manager it is killed at once when an exception (Ctrl-C included) leaves the block."""

    def __init__(self, path, device: torch.device, dtype: torch.dtype, precision: Optional[str] = None,
                 seed: Optional[int] = None, limits: Optional[Limits] = None, candidate: Optional[Candidate] = None,
                 impl: str = "candidate"):
        self.candidate = candidate or load_candidate(path)  # CandidateUsageError here, before any process starts
        self.impl = impl
        self.seed = new_seed() if seed is None else seed
        self.runner = RemoteRunner(self.candidate, device, dtype, precision, limits)
        self.device, self.dtype = device, dtype
        self.load_error: Optional[str] = None

    @classmethod
    def trusted(cls, impl: str, precision: str, tf32: bool, device: torch.device, dtype: torch.dtype,
                seed: int, cache: str, limits: Optional[Limits] = None) -> "CandidateBench":
        source = trusted_source(impl, precision, tf32, cache)
        code = Candidate(Path(f"<{impl} baseline>"), source, hashlib.sha256(source.encode()).hexdigest(), TRUSTED)
        return cls(None, device, dtype, precision, seed, limits, code, impl)

    def open(self) -> "CandidateBench":
        if self.runner.proc is not None:
            return self  # already open
        try:
            reply = self.runner.load()
            self.load_error = None if reply.get("ok") else f"candidate did not load: {reply.get('load_error')}"
        except CandidateError as exc:
            self.load_error = str(exc)
        except Exception as exc:  # noqa: BLE001 - e.g. the process could not be started
            self.load_error = f"the candidate process did not start: {type(exc).__name__}: {exc}"
        except BaseException:
            self.runner.close(kill=True)
            raise
        if self.load_error:
            self.load_error = " ".join(self.load_error.split())
            self.runner.close()
        return self

    def close(self, kill: bool = False) -> None:
        self.runner.close(kill=kill)

    def __enter__(self):
        return self.open()

    def __exit__(self, exc_type, *exc):
        self.close(kill=exc_type is not None)
        return False

    def _row(self, size: Size, mode: str) -> Dict[str, Any]:
        row = {"impl": self.impl, "mode": mode, "batch": size.batch, "in_features": size.in_features,
               "out_features": size.out_features, "seed": self.seed}
        if self.candidate.origin != TRUSTED:
            row["candidate_sha256"] = self.candidate.sha256
        return row

    def error_row(self, size: Size, mode: str, detail: str) -> Dict[str, Any]:
        row = self._row(size, mode)
        row.update(status="error", detail=" ".join(detail.split()))
        return row

    def measure(self, size: Size, mode: str, warmup: int = 10, iters: int = 30) -> Dict[str, Any]:
        """Check one shape against float64 truth, then time it. Returns the worker's part of a result
        row: median/p20/p80 ms (the harness's batch clock), host_median_ms, rel_err, bar, status
        ok|mismatch|oom|error, detail (one line), peak_mem_mb, iters. Then the worker releases its device
        memory for the next case. A failure of the worker or of the harness's side (the float64 reference)
        is an 'error' (or 'oom') row; only Ctrl-C propagates (the worker is left as it is: close it with
        kill=True)."""
        case = self.start(size, mode)
        self.time_round(case, batches=max(5, min(iters, 30) // 6))
        return self.finish(case)

    def start(self, size: Size, mode: str) -> BatchCase:
        """The case judged against float64 truth on its input; the state and input kept for the rounds."""
        case = BatchCase(size, mode, self._row(size, mode))
        if self.load_error:
            case.row, case.done = self.error_row(size, mode, self.load_error), True
            return case
        gen = torch.Generator().manual_seed(self.seed)  # per case: a row does not depend on the cases before
        try:
            case.judge = Judge(self.device, self.dtype, self.seed, self.runner.precision(self.dtype, self.device))
            case.x = make_inputs(size, "rand", gen, self.device, self.dtype)
            cmps = case.judge.compare(self.runner, size, case.x, with_grad=(mode == "fwd_bwd"))
            worst = max(cmps, key=lambda c: c.err / c.bar if c.bar else math.inf)
            case.row.update(rel_err=worst.err, bar=worst.bar, precision=case.judge.precision)
            if not all(c.ok for c in cmps):
                case.row.update(status="mismatch", detail=f"rel_err {worst.err:.3g} > bar {worst.bar:.3g}")
                case.done = True
                return case
            case.state = self.runner.init_state(size, self.seed)
            if mode == "fwd_bwd":
                case.grad_y = torch.randn(size.batch, size.out_features, generator=gen,
                                          dtype=torch.float64).to(self.dtype)
            case.pick = random.Random(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        except Exception as exc:  # noqa: BLE001 - the worker's failure, or the harness's (the float64 reference)
            self._failed(case, exc)
        return case

    def time_round(self, case: BatchCase, batches: int = 2) -> None:
        """`batches` batches of the case timed by the harness's clock (a few outputs picked afterwards)."""
        if case.done:
            return
        try:
            case.rounds.append(self.runner.time_batches(case.size, case.state, [case.x], case.grad_y,
                                                        rng=case.pick, batches=batches))
        except Exception as exc:  # noqa: BLE001 - as in start
            self._failed(case, exc)

    def finish(self, case: BatchCase) -> Dict[str, Any]:
        """The row part: timings merged over the rounds, the picked outputs judged. Then the worker
        releases its device memory for the next case."""
        row, truth = case.row, None
        if not case.done and case.rounds:
            try:
                truth = case.judge.truth(case.size, case.state, case.x)
            except Exception as exc:  # noqa: BLE001 - the harness's side failed: an error row, not a traceback
                self._failed(case, exc)
        if truth is not None:
            bad = [c for c in (truth.judge(y)[0][1] for r in case.rounds for _, y in r["checked"]) if not c.ok]
            timing = merge([r["timing"] for r in case.rounds])
            row.update(median_ms=timing.median_ms, p20_ms=timing.p20_ms, p80_ms=timing.p80_ms,
                       host_median_ms=timing.median_ms, iters=sum(r["n"] * r["timing"].iters for r in case.rounds),
                       peak_mem_mb=case.rounds[-1].get("peak_mem_mb"), status="mismatch" if bad else "ok",
                       detail="" if not bad else f"a timed call's output is wrong: rel_err {bad[0].err:.3g} > bar "
                                                 f"{bad[0].bar:.3g} (work skipped while timed)")
        if row.get("status") == "error" and _STICKY_CUDA.search(str(row.get("detail"))):
            self.runner.fatal.append(str(row["detail"]))
            self.runner.close(kill=True)  # the next case starts a fresh worker (within Limits.max_fatal)
        elif not self.load_error:
            try:
                self.runner.release()
            except CandidateError:
                pass  # a worker that died here is restarted by the next case
        return row

    @staticmethod
    def _failed(case: BatchCase, exc: Exception) -> None:
        msg = " ".join(str(exc).split())
        if not isinstance(exc, CandidateError):  # the harness's own failure: say what raised
            msg = f"{type(exc).__name__}: {msg}"
        case.row.update(status="oom" if "out of memory" in msg.lower() else "error", detail=msg)
        case.done = True


def bench_candidate_rows(path, sizes: List[Size], dtype: torch.dtype, precision: Optional[str], modes: List[str],
                         warmup: int = 10, iters: int = 30, seed: Optional[int] = None,
                         device: Optional[torch.device] = None,
                         progress: Optional[Callable[[str], None]] = None,
                         limits: Optional[Limits] = None) -> List[Dict[str, Any]]:
    """One row dict per (size, mode), in the order given, all from ONE worker (see CandidateBench.measure
    for the keys). Raises CandidateUsageError for a file that cannot be a candidate; a candidate that does
    not load gives rows with status 'error'."""
    device = device or torch.device("cuda")
    rows: List[Dict[str, Any]] = []
    with CandidateBench(path, device, dtype, precision, seed, limits) as cb:
        for size in sizes:
            for mode in modes:
                if progress:
                    progress(f"candidate {size} {mode}")
                rows.append(cb.measure(size, mode, warmup, iters))
    return rows
