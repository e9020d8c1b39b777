"""`mishbench bench --distributed N`: time one DDP training step of Model and ModelNew over N ranks.

A step is forward + backward + DDP's gradient all-reduce (mode `fwd_bwd`, the only one DESIGN.md has for it;
no optimizer step). The global batch B of each size is split over the ranks in contiguous shards (sizes differ
by at most one row); the parameters and inputs are drawn from the run's seed exactly as single-process bench
draws them, so every rank and every implementation sees the same values.

The launcher (`run_distributed_bench`) uses the machinery verify --distributed uses (distributed/launcher.py:
start_torchrun, kill_group, the rank<r>.err files): one torchrun for all cases, with a job whose entry
point is `run_rank` here, which mishbench.distributed.worker calls in every rank. For each case every rank builds eager Model
and ModelNew under DistributedDataParallel, checks one step against a float64 run of the reference on the
full batch (DESIGN.md's error bar; the DDP-averaged weight and bias gradients times N are the full-batch
ones), then times steps of the providers in interleaved rounds with bench's timers (CUDA events and a
device-wide synchronize on the GPU, the host clock with gloo on the CPU). Step counts are fixed and equal on
every rank (no time-based warm-up, no adaptive extension): a rank that ran one step more would wait forever
in an all-reduce. Before each step (untimed) the grads are dropped and the ranks meet at a barrier, so a
step's time is not inflated by another rank still finishing the previous one.

Rank 0 writes case<i>.pt as each case ends; the launcher turns it into CSV rows at once (append per case,
like bench), one row per implementation with world_size = N: median/p20/p80 of the slowest rank (a
synchronous step is as slow as its slowest rank), with every rank's median in the table. A rank that
crashes or hangs ends that torchrun: the case it was in gets 'error' rows saying which rank and why, and
the remaining cases go on in a fresh torchrun.
"""
import copy
import gc
import math
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

from mishbench.bench.plan import INTERRUPTED, ROUNDS, Plan, fill_speedups, peak_kind
from mishbench.bench.providers import (BASELINES, Inputs, Provider, Spec, gate, make_input_sets)
from mishbench.bench.sink import Sink, finish
from mishbench.bench.table import results_table
from mishbench.clock import merge, peak_tflops, release_flush_buffers, time_cpu, time_cuda
from mishbench.distributed import launcher
from mishbench.distributed.worker import fault, save_atomic
from mishbench.op.model import ModelNew
from mishbench.op.precision import dtype_name, eager_matmul_mode
from mishbench.op.reference import Model
from mishbench.schema import CsvSchemaError, row_key
from mishbench.shapes import Size
from mishbench.truth import eager_run, floors, reference_run

ENTRY = "mishbench.bench.ddp:run_rank"

MODE = "fwd_bwd"  # DESIGN.md's modes are fwd and fwd_bwd: a DDP training step is a forward and a backward
POLL_S = 0.2
_sleep = time.sleep  # the launcher's poll wait (tests interrupt it)


# ---------------------------------------------------------------------------------------------------------
# Shared by the launcher and the ranks
# ---------------------------------------------------------------------------------------------------------
def shard_bounds(batch: int, world: int, rank: int) -> Tuple[int, int]:
    """Rows [lo, hi) of the global batch on `rank`: contiguous, sizes differ by at most one."""
    base, extra = divmod(batch, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def check_sizes(sizes: List[Size], n: int) -> None:
    """ValueError naming the first size whose batch cannot give every rank at least one row."""
    for size in sizes:
        if size.batch < n:
            raise ValueError(f"batch {size.batch} of size {size} is smaller than the {n} ranks: every rank "
                             f"needs at least one row of the global batch (give a batch >= {n})")


# ---------------------------------------------------------------------------------------------------------
# Rank side (the job's entry point: mishbench.distributed.worker.main calls it in every rank)
# ---------------------------------------------------------------------------------------------------------
def run_rank(job: dict, device: torch.device, job_dir: Path, set_stage: Callable[[str], None]) -> None:
    """Every case of the job in this rank; rank 0 writes job_dir/case<i>.pt after each."""
    import torch.distributed as dist

    cfg = job["config"]
    rank = dist.get_rank()
    for i, case in enumerate(job["cases"]):
        size = Size(*case)
        result = _rank_case(size, cfg, device, lambda what, size=size: set_stage(f"case {size}: {what}"))
        if rank == 0:
            save_atomic(result, job_dir / f"case{i:04d}.pt")
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


_STEPS = [0]  # steps run in this process, for the MISHBENCH_DIST_FAULT test hook


def _rank_case(size: Size, cfg: dict, device: torch.device, stage: Callable[[str], None]) -> dict:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel


    rank, world = dist.get_rank(), dist.get_world_size()
    dtype = getattr(torch, cfg["dtype"])
    specs = [Spec(*s) for s in cfg["specs"]]
    seed = cfg["seed"]
    lo, hi = shard_bounds(size.batch, world, rank)

    stage("inputs and float64 reference")
    torch.manual_seed(seed)  # the template Model, drawn as single-process bench draws it
    template = Model(size.in_features, size.out_features)
    state = template.state_dict()
    full = make_input_sets(size, MODE, seed, cfg["input_sets"], torch.device("cpu"), dtype)
    shards = [Inputs(s.x.detach()[lo:hi].to(device).requires_grad_(True), s.grad_y[lo:hi].to(device))
              for s in full]
    x0, gy0 = full[0].x.detach().to(device), full[0].grad_y.to(device)
    del full

    def mine(ref: torch.Tensor, grads: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """This rank's part of full-batch results: its rows of y and dx, all of dW and db."""
        return {"y": ref[lo:hi], "x": grads["x"][lo:hi], "linear.weight": grads["linear.weight"],
                "linear.bias": grads["linear.bias"]}
    y64, g64 = reference_run(size, state, x0, gy0, torch.float64)
    truth = mine(y64, g64)
    # Each tensor's floor from the full batch's rounding scales (the sum of the shards' dW, db is the
    # full batch's): this rank judges its rows of y and dx, and all of dW and db, against those floors.
    fl = floors(state, x0, gy0, dtype, dict(g64, y=y64))
    eagers: Dict[str, Dict[str, torch.Tensor]] = {}
    for accuracy, tf32 in sorted({(s.accuracy, s.tf32) for s in specs}):
        ye, ge = eager_run(size, state, x0, gy0, dtype, tf32=tf32)
        eagers[accuracy] = mine(ye, ge)
    del x0, gy0, y64, g64

    result = {"backend": dist.get_backend(), "world_size": world, "specs": {}}
    live = []
    for spec in specs:
        name = "Model" if spec.impl in BASELINES else "ModelNew"
        stage(f"{spec.impl} ({name}): build and check")
        if spec.impl in BASELINES:
            module = copy.deepcopy(template)
        else:
            module = ModelNew(size.in_features, size.out_features, precision=spec.precision)
            module.load_state_dict(state, strict=True)
        module = module.to(device, dtype)
        if spec.impl not in BASELINES and (module.implementation(device) == "cuda") != bool(cfg["kernels"]):
            raise RuntimeError(f"ModelNew runs impl={module.implementation(device)} in rank {rank}, not what the "
                               f"launcher planned (kernels={cfg['kernels']})")
        wrapped = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
        prov = Provider(spec, module, wrapped, MODE)
        y, grads = prov.outputs(shards[0])
        got = dict(grads, y=y)
        # DDP averages the gradients over ranks; the shards' sum is the full batch's gradient.
        got["linear.weight"] = got["linear.weight"] * world
        got["linear.bias"] = got["linear.bias"] * world
        worst = gate(got, truth, eagers[spec.accuracy], dtype, fl)
        del y, grads, got
        per_rank = [None] * world
        dist.all_gather_object(per_rank, worst)  # every rank takes the same decision: time it or not
        err = max(e for e, _ in per_rank)
        ok = all(r <= 1.0 for _, r in per_rank)  # NaN fails too
        entry = {"rel_err": err, "status": "ok" if ok else "mismatch", "ranks": []}
        result["specs"][tuple(spec)] = entry
        if ok:
            live.append(prov)
        else:
            entry["note"] = f"rel_err {err:.3g} above the bar on some rank: not timed"

    def step(prov: "Provider") -> Callable:
        def call(inputs) -> None:
            fault(_STEPS[0])
            _STEPS[0] += 1
            prov.call(inputs)
        return call

    def setup(prov: "Provider") -> Callable:
        def before(inputs) -> None:
            prov.setup(inputs)
            dist.barrier(**barrier_kw)  # untimed: every rank starts the step together
        return before

    # NCCL's barrier otherwise guesses the rank's GPU (and warns); gloo takes no device_ids.
    barrier_kw = {"device_ids": [device.index]} if device.type == "cuda" else {}
    iters = int(cfg["iters"])
    chunk = max(1, math.ceil(iters / ROUNDS))
    started = set()
    while any(p.samples < iters for p in live):
        for prov in live:
            n = min(chunk, iters - prov.samples)
            if n <= 0:
                continue
            stage(f"{prov.spec.impl}: timing")
            first = prov not in started
            started.add(prov)
            kwargs = dict(warmup=cfg["warmup"] if first else 1, warmup_ms=0.0, iters=n, max_iters=n,
                          budget_s=None, setup=setup(prov))
            with prov.context():
                if device.type == "cuda":
                    t = time_cuda(step(prov), shards, device=device, **kwargs)
                else:
                    t = time_cpu(step(prov), shards, **kwargs)
            prov.parts.append(t)
    stage("collecting the timings")
    mine_t = {}
    for prov in live:
        t = merge(prov.parts)
        mine_t[tuple(prov.spec)] = {"median_ms": t.median_ms, "p20_ms": t.p20_ms, "p80_ms": t.p80_ms,
                                    "iters": t.iters, "rows": hi - lo}
    per_rank_t = [None] * world
    dist.all_gather_object(per_rank_t, mine_t)
    for key, entry in result["specs"].items():
        if entry["status"] == "ok":
            entry["ranks"] = [per[key] for per in per_rank_t]
    return result


# ---------------------------------------------------------------------------------------------------------
# Launcher side
# ---------------------------------------------------------------------------------------------------------
def _error(console, message: str, code: int) -> int:
    from rich.markup import escape
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return code


def run_distributed_bench(opts, console, case_timeout: Optional[float] = None,
                          collective_timeout: Optional[float] = None) -> int:
    """`bench --distributed N`: exit 0 ok, 1 a mishbench/composite row failed, 2 usage, 130 interrupted.

    case_timeout: seconds without a finished case before torchrun is killed; collective_timeout: the
    process-group timeout in every rank (a hung rank makes the others fail after it).
    """

    n = opts.distributed
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    try:
        launcher.check_ranks(n, device)
        check_sizes(opts.sizes, n)
    except ValueError as exc:
        return _error(console, f"--distributed {n}: {exc}", 2)
    if opts.candidate is not None:
        return _error(console, "--candidate with --distributed: a candidate is timed in its own process, not "
                               "under DDP; run them separately", 2)
    if any(m != MODE for m in opts.modes):
        return _error(console, f"--mode {','.join(opts.modes)} with --distributed: a DDP training step is "
                               f"{MODE} (forward, backward and the gradient all-reduce)", 2)
    if case_timeout is None:
        case_timeout = 900.0 if cuda else 300.0
    if collective_timeout is None:
        collective_timeout = 300.0 if cuda else 120.0

    if cuda:
        from mishbench.op import build
        console.print("distributed: building the CUDA extension once before the ranks start", highlight=False)
        build.load()
    run = Plan(opts, console, device, world_size=n)
    # Under DDP only eager and ModelNew are timed (a compiled DDP module is another benchmark).
    run.specs = [s for s in run.specs if s.impl in ("eager", run.subject_impl)]
    run.peak_fn = _peaks(run, device, n) if cuda else None

    sink = Sink(opts.out, opts.resume)
    try:
        sink.open()
    except CsvSchemaError as exc:
        return _error(console, f"--out: {exc}", 2)
    todo, skipped = sink.pending([(size, MODE) for size in opts.sizes], run.planned_keys)
    if skipped:
        console.print(f"--resume: {skipped} case(s) already in {opts.out} with every row ok: skipped",
                      highlight=False)
    where = (f"NCCL, one GPU per rank ({run.provenance['gpu']})" if cuda else
             "gloo on the CPU (no CUDA GPU visible: host-clock times, not GPU numbers)")
    skipped = [b for b in opts.baselines if b != "eager"]
    console.print(f"bench run {run.run_id[:8]}: DDP training step (forward + backward + gradient all-reduce, "
                  f"mode {MODE}) over {n} rank(s), {where}; {len(todo)} case(s), "
                  f"{len(todo) * len(run.specs)} row(s), {dtype_name(opts.dtype)} precision={run.precision} "
                  f"(class {run.accuracy}), seed={run.seed} -> {opts.out}", highlight=False, soft_wrap=True)
    if skipped:
        console.print(f"--distributed times eager and {run.subject_impl} only: {', '.join(skipped)} not timed "
                      "under DDP", highlight=False)
    per_rank: Dict[tuple, str] = {}
    try:
        _launch_cases(run, todo, n, device, case_timeout, collective_timeout, per_rank, sink)
    except KeyboardInterrupt:
        console.print(f"interrupted: {len(run.written)} finished row(s) kept in {opts.out}", highlight=False)
        return INTERRUPTED
    table = results_table(run.written, run, title=f"mishbench bench --distributed {n} (DDP step)",
                          extra=("per-rank median ms", lambda r: per_rank.get(row_key(r), "")))
    return finish(console, table, run.written, opts.out)


def _peaks(run, device: torch.device, n: int) -> Callable[[str], float]:
    """N × the single-GPU peak of each class the run needs, measured now on GPU 0, before the ranks use it."""
    peaks = {}
    for spec in run.specs:
        kind, _ = peak_kind(spec.precision, run.dtype)
        if kind not in peaks:
            peaks[kind] = peak_tflops(device, kind, lambda kind=kind: eager_matmul_mode(kind == "tf32"))
    release_flush_buffers()
    torch.cuda.empty_cache()
    return lambda kind: n * peaks[kind]


def _job(run, cases: List[Tuple[Size, str]], collective_timeout: float, device: torch.device) -> dict:
    cfg = {"device": device.type, "dtype": str(run.dtype).replace("torch.", ""), "seed": run.seed,
           "specs": [tuple(s) for s in run.specs], "input_sets": run.opts.input_sets,
           "warmup": int(run.opts.warmup), "iters": run.iters, "collective_timeout": collective_timeout,
           "kernels": run.kernels}
    return {"entry": ENTRY, "config": cfg, "cases": [tuple(size) for size, _ in cases]}


def _launch_cases(run, todo, n: int, device: torch.device, case_timeout: float, collective_timeout: float,
                  per_rank: Dict[tuple, str], sink: Sink) -> None:
    """torchrun over the cases still to do; after a failure, a fresh torchrun for the cases after it."""
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    console = run.console
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("starting torchrun", total=len(todo))

        def done(size: Size, rows) -> None:
            sink.write(rows, run.written)
            bar.advance(task)
            for row in rows:
                if row["status"] != "ok":
                    msg = escape(run.message_for(row))  # exception text: '[...]' in it is not markup
                    bar.console.print(f"[yellow]{size} {MODE} {row['impl']} ({row['precision']}) DDP×{n}: "
                                      f"{row['status']}[/]{': ' + msg if msg else ''}", highlight=False,
                                      soft_wrap=True)

        pending = list(todo)
        while pending:
            with tempfile.TemporaryDirectory(prefix="mishbench-ddpbench-") as tmp:
                job_dir = Path(tmp)
                torch.save(_job(run, pending, collective_timeout, device), job_dir / "job.pt")
                bar.update(task, description=f"torchrun with {n} ranks: starting")
                seen, why = _watch(job_dir, pending, n, case_timeout, bar, task, run, per_rank, done)
            if seen < len(pending):  # the case that was running when torchrun failed
                size, _ = pending[seen]
                status = "oom" if "out of memory" in why.lower() or "OutOfMemoryError" in why else "error"
                rows = [run.base_row(size, MODE, spec) for spec in run.specs]
                for row in rows:
                    row["status"] = status
                    run.note_row(row, why)
                done(size, rows)
                seen += 1
            pending = pending[seen:]


def _watch(job_dir: Path, pending, n: int, case_timeout: float, bar, task, run, per_rank, done):
    """Start torchrun on job_dir and turn each case<i>.pt into rows as it appears; (cases done, why it
    stopped early or '')."""
    log_path = job_dir / "torchrun.log"
    seen, timed_out = 0, False
    with open(log_path, "wb") as log:
        proc = launcher.start_torchrun(n, job_dir, stdout=log)
        try:
            deadline = time.monotonic() + case_timeout
            while True:
                exited = proc.poll() is not None
                while seen < len(pending) and (job_dir / f"case{seen:04d}.pt").exists():
                    size, _ = pending[seen]
                    result = torch.load(job_dir / f"case{seen:04d}.pt", weights_only=True)
                    done(size, _rows(run, size, result, per_rank))
                    seen += 1
                    deadline = time.monotonic() + case_timeout
                if exited or seen == len(pending):
                    break
                if time.monotonic() > deadline:
                    timed_out = True
                    launcher.kill_group(proc)
                    break
                if seen < len(pending):
                    bar.update(task, description=f"torchrun with {n} ranks: {pending[seen][0]} {MODE}")
                _sleep(POLL_S)
            if seen == len(pending):
                try:
                    proc.wait(timeout=60)  # the ranks' shutdown barrier; a straggler is killed below
                except subprocess.TimeoutExpired:
                    pass
        except BaseException:  # Ctrl-C included: torchrun and every rank go down with us
            launcher.kill_group(proc)
            raise
        finally:
            if proc.poll() is None:
                launcher.kill_group(proc)
    if seen == len(pending):
        return seen, ""
    output = log_path.read_bytes().decode(errors="replace") if log_path.exists() else ""
    errors = launcher.rank_errors(job_dir)
    why = launcher.failure_reason(errors, proc.returncode, output, killed=(
        f"no case finished within {case_timeout:.0f} s: torchrun killed" if timed_out else None))
    return seen, why


def _rows(run, size: Size, result: dict, per_rank: Dict[tuple, str]):
    """CSV rows of one case from rank 0's result: the slowest rank's statistics, every rank's median kept."""
    rows = []
    for spec in run.specs:
        row = run.base_row(size, MODE, spec)
        entry = result["specs"].get(tuple(spec))
        if entry is None:
            row["status"] = "error"
            run.note_row(row, "no result from the ranks (internal error)")
            rows.append(row)
            continue
        row["rel_err"] = entry["rel_err"]
        row["status"] = entry["status"]
        if entry.get("note"):
            run.note_row(row, entry["note"])
        ranks = entry.get("ranks") or []
        if entry["status"] == "ok" and ranks:
            slowest = max(ranks, key=lambda r: r["median_ms"])
            row.update(median_ms=slowest["median_ms"], p20_ms=slowest["p20_ms"], p80_ms=slowest["p80_ms"],
                       iters=slowest["iters"])
            per_rank[row_key(row)] = " / ".join(f"{r['median_ms']:.4g}" for r in ranks)
        rows.append(row)
    fill_speedups(rows)
    for row in rows:
        run.fill_rates(row, size, MODE)
    return rows
