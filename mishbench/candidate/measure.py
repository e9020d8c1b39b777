"""`bench --candidate FILE`: one candidate worker kept open for a whole bench run, and the candidate's part of
each result row (judged here against float64 truth, then timed)."""
import math
import random
import re
from typing import Any, Callable, Dict, List, Optional

import torch

from mishbench.candidate.process import CandidateError, Limits
from mishbench.candidate.runner import RemoteRunner
from mishbench.candidate.source import load_candidate
from mishbench.shapes import Size
from mishbench.inputs import make_inputs
from mishbench.truth import Judge, new_seed


# CUDA errors after which the process's context is unusable: every later request would fail the same way.
_STICKY_CUDA = re.compile(r"illegal memory access|device-side assert|misaligned address|unspecified launch failure"
                          r"|illegal instruction", re.IGNORECASE)


class CandidateBench:
    """One candidate worker kept open for a whole bench run: bench alternates, case by case, its baselines
    (timed in the harness's own process, which the candidate never runs in) with `measure` here, without
    starting a process and importing (building) the candidate again for every case.

    `open()` starts the worker and loads the candidate; a candidate that does not load is no exception:
    `load_error` says why and every `measure` returns an 'error' row with it. A crash or timeout mid-run
    fails that case's row; the next `measure` restarts the worker, up to `Limits.max_fatal` failures, after
    which rows are 'error' at once; a sticky CUDA error (illegal address, device-side assert) counts as a
    crash, since the worker's CUDA context cannot run another case. `close()` ends the worker; as a context manager it is killed at once
    when an exception (Ctrl-C included) leaves the block."""

    def __init__(self, path, device: torch.device, dtype: torch.dtype, precision: Optional[str] = None,
                 seed: Optional[int] = None, limits: Optional[Limits] = None):
        self.candidate = load_candidate(path)  # CandidateUsageError here, before any process starts
        self.seed = new_seed() if seed is None else seed
        self.runner = RemoteRunner(self.candidate, device, dtype, precision, limits)
        self.device, self.dtype = device, dtype
        self.load_error: Optional[str] = None

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
        return {"impl": "candidate", "mode": mode, "batch": size.batch, "in_features": size.in_features,
                "out_features": size.out_features, "candidate_sha256": self.candidate.sha256, "seed": self.seed}

    def error_row(self, size: Size, mode: str, detail: str) -> Dict[str, Any]:
        row = self._row(size, mode)
        row.update(status="error", detail=" ".join(detail.split()))
        return row

    def measure(self, size: Size, mode: str, warmup: int = 10, iters: int = 30) -> Dict[str, Any]:
        """Check one shape against float64 truth, then time it. Returns the candidate's part of a result
        row: median/p20/p80 ms (CUDA events), host_median_ms, rel_err, bar, status ok|mismatch|oom|error,
        detail (one line), peak_mem_mb, iters. Then the worker releases its device memory for the baselines
        of the next case. Only Ctrl-C and errors of the harness itself propagate (the worker is left as it
        is: close it with kill=True)."""
        if self.load_error:
            return self.error_row(size, mode, self.load_error)
        row = self._measure(size, mode, warmup, iters)
        if row.get("status") == "error" and _STICKY_CUDA.search(str(row.get("detail"))):
            self.runner.fatal.append(str(row["detail"]))
            self.runner.close(kill=True)  # the next measure starts a fresh worker (within Limits.max_fatal)
            return row
        try:
            self.runner.release()
        except CandidateError:
            pass  # a worker that died here is restarted by the next measure
        return row

    def _measure(self, size: Size, mode: str, warmup: int, iters: int) -> Dict[str, Any]:
        row = self._row(size, mode)
        gen = torch.Generator().manual_seed(self.seed)  # per case: a row does not depend on the cases before
        try:
            judge = Judge(self.device, self.dtype, self.seed, self.runner.precision(self.dtype, self.device))
            x = make_inputs(size, "rand", gen, self.device, self.dtype)
            cmps = judge.compare(self.runner, size, x, with_grad=(mode == "fwd_bwd"))
            worst = max(cmps, key=lambda c: c.err / c.bar if c.bar else math.inf)
            row.update(rel_err=worst.err, bar=worst.bar, precision=judge.precision)
            state = self.runner.init_state(size, self.seed)
            grad_y = None
            if mode == "fwd_bwd":
                grad_y = torch.randn(size.batch, size.out_features, generator=gen,
                                     dtype=torch.float64).to(self.dtype)
            # The harness's clock: batches timed around the request, a few outputs picked afterwards judged.
            pick = random.Random(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            t = self.runner.time_batches(size, state, [x], grad_y, rng=pick, batches=max(5, min(iters, 30) // 6))
            timed = [judge.against_truth(size, state, x, None, y, None)[0][1] for _, y in t["checked"]]
        except CandidateError as exc:
            msg = " ".join(str(exc).split())
            row.update(status="oom" if "out of memory" in msg.lower() else "error", detail=msg)
            return row
        timing = t["timing"]
        bad_timed = [c for c in timed if not c.ok]
        ok = all(c.ok for c in cmps) and not bad_timed
        detail = "" if ok else (f"rel_err {worst.err:.3g} > bar {worst.bar:.3g}" if not all(c.ok for c in cmps)
                                else f"a timed call's output is wrong: rel_err {bad_timed[0].err:.3g} > bar "
                                     f"{bad_timed[0].bar:.3g} (work skipped while timed)")
        row.update(median_ms=timing.median_ms, p20_ms=timing.p20_ms, p80_ms=timing.p80_ms,
                   host_median_ms=timing.median_ms, iters=t["n"] * timing.iters,
                   peak_mem_mb=t.get("peak_mem_mb"), status="ok" if ok else "mismatch", detail=detail)
        return row


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
