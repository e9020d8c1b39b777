"""`mishbench verify --distributed N`: train under DDP and FSDP with N ranks and check against one process.

The launcher writes a job (initial state, global batch, config) to a temporary directory, builds the CUDA
extension once (so N ranks never race to build it), and runs torchrun with mishbench.distributed.worker
(distributed/launcher.py) in its own process group, killed whole on timeout. Every collective in the
ranks has the process-group timeout. Rank 0 returns the losses and the full final parameters of ModelNew
and Model per engine; here they are compared with single-process training on the full batch: float64 Model
is the truth, Model in the run's dtype sets the bar, judged by the one judge (truth.py).
"""
import tempfile
from pathlib import Path
from typing import Callable, List, Optional

import torch

from mishbench.distributed import launcher, worker
from mishbench.op.model import ModelNew
from mishbench.op.precision import accuracy_class, eager_matmul_mode, resolve_precision
from mishbench.op.reference import Model
from mishbench.schema import Check
from mishbench.shapes import Size
from mishbench.truth import Compared, verdict

ENGINES = ("ddp", "fsdp")
STEPS = 10
LR = 0.1


def default_size(n: int, device: torch.device) -> Size:
    """Odd feature sizes, equal shards (the global batch is split in n contiguous slices)."""
    return Size(128 * n, 1000, 777) if device.type == "cuda" else Size(12 * n, 21, 13)


def _single_process(job: dict, device: torch.device, dtype: torch.dtype, tf32: bool):
    """Model trained on the full batch in one process: losses and final parameters (CPU)."""
    cfg = job["config"]
    model = Model(cfg["in_features"], cfg["out_features"])
    model.load_state_dict(job["state"], strict=True)
    model = model.to(device, dtype)
    with eager_matmul_mode(tf32):
        losses = worker.train(model, job["x"].to(device, dtype), job["target"].to(device, dtype),
                              cfg["steps"], cfg["lr"])
    return losses, {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _compare(name: str, engine_label: str, got: dict, truth, eager, dtype: torch.dtype, world: int) -> Check:
    losses, params = got["new"]["losses"], got["new"]["params"]
    l64, p64 = truth
    le, pe = eager
    results = [("final", Compared(k, params[k], p64[k], pe[k], dtype)) for k in p64]
    results.append(("losses", Compared("loss", torch.tensor(losses), torch.tensor(l64), torch.tensor(le), dtype)))
    check = verdict(name, results)
    # The reference Model under the same engine, for the record: how far the engine itself moves results.
    ref = got["ref"]
    ref_errs = [Compared(k, ref["params"][k], p64[k], pe[k], dtype).err for k in p64]
    ref_errs.append(Compared("loss", torch.tensor(ref["losses"]), torch.tensor(l64), torch.tensor(le), dtype).err)
    check.metrics.update({"world_size": world, "steps": len(losses), "loss_first": losses[0],
                          "loss_last": losses[-1], "model_same_engine_rel_err": max(ref_errs),
                          "impl": got["new"].get("impl")})
    prefix = (f"{engine_label}, {world} ranks, {len(losses)} SGD steps (impl={got['new'].get('impl')}), "
              f"loss {losses[0]:.4g} -> {losses[-1]:.4g}, Model under {engine_label} err {max(ref_errs):.3g}; ")
    if check.status == "pass" and not losses[-1] < losses[0]:
        return Check(name, "fail", prefix + "loss did not decrease", check.metrics)
    check.detail = prefix + check.detail
    return check


def _fsdp_label() -> str:
    fs = worker.find_fully_shard()
    return "FSDP (FullyShardedDataParallel)" if fs is None else "FSDP2 (fully_shard)"


def distributed_checks(n: int, device: torch.device, dtype: torch.dtype, precision: Optional[str], seed: int,
                       progress: Optional[Callable[[str], None]] = None, size: Optional[Size] = None,
                       steps: int = STEPS, lr: float = LR, timeout: Optional[float] = None,
                       collective_timeout: Optional[float] = None) -> List[Check]:
    """Rows `distributed_ddp` and `distributed_fsdp` for N ranks (gloo on the CPU, NCCL with one GPU per rank).

    ValueError (a usage problem) for N < 1, more ranks than GPUs, or a batch that does not split evenly.
    timeout: for the whole torchrun run; collective_timeout: the process-group timeout in every rank.
    """
    progress = progress or (lambda msg: None)
    device = torch.device(device)
    launcher.check_ranks(n, device)
    size = size or default_size(n, device)
    if size.batch % n:
        raise ValueError(f"batch {size.batch} of size {size} does not split evenly over {n} ranks")
    if timeout is None:
        timeout = 900.0 if device.type == "cuda" else 300.0
    if collective_timeout is None:
        collective_timeout = 300.0 if device.type == "cuda" else 120.0

    if device.type == "cuda":
        progress("distributed: building the CUDA extension")
        from mishbench.op import build
        build.load()  # once, here: the ranks then load it from the cache and never race to build it

    resolved = resolve_precision(precision, dtype, device)
    tf32 = accuracy_class(resolved, dtype) == "tf32"
    fsdp_skip = launcher.fsdp_skip_reason(device)
    engines = [e for e in ENGINES if not (e == "fsdp" and fsdp_skip)]
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    state = {k: v.detach().clone() for k, v in ModelNew(size.in_features, size.out_features).state_dict().items()}
    job = {"config": {"device": device.type, "dtype": str(dtype).replace("torch.", ""), "precision": resolved,
                      "tf32": tf32, "in_features": size.in_features, "out_features": size.out_features,
                      "steps": steps, "lr": lr, "engines": engines, "collective_timeout": collective_timeout},
           "state": state,
           "x": torch.randn(size.batch, size.in_features, generator=gen, dtype=torch.float64),
           "target": torch.randn(size.batch, size.out_features, generator=gen, dtype=torch.float64)}

    with tempfile.TemporaryDirectory(prefix="mishbench-dist-") as tmp:
        job_dir = Path(tmp)
        torch.save(job, job_dir / "job.pt")
        progress(f"distributed: torchrun with {n} ranks ({', '.join(engines)})")
        rc, output, timed_out = launcher.launch(n, job_dir, timeout)
        results = {}  # type: Dict[str, dict]
        if (job_dir / "result.pt").exists():
            results = torch.load(job_dir / "result.pt", weights_only=True)
        errors = launcher.rank_errors(job_dir)

    if rc == 0 and not timed_out and all(e in results for e in engines):
        why_missing = ""
    else:
        why_missing = launcher.failure_reason(errors, rc, output, killed=(
            f"torchrun did not finish within {timeout:.0f} s and was killed" if timed_out else None))

    progress("distributed: single-process reference")
    main_dev = torch.device("cuda", 0) if device.type == "cuda" else device
    truth = eager = None
    if results:
        truth = _single_process(job, main_dev, torch.float64, False)
        eager = _single_process(job, main_dev, dtype, tf32)

    checks = []
    for engine, label in (("ddp", "DDP"), ("fsdp", _fsdp_label())):
        name = f"distributed_{engine}"
        if engine == "fsdp" and fsdp_skip:
            checks.append(Check(name, "skip", fsdp_skip))
        elif engine in results:
            check = _compare(name, label, results[engine], truth, eager, dtype, n)
            if why_missing:  # trained and compared, but the run did not end cleanly: say so
                check.detail += f" (afterwards: {why_missing})"
            checks.append(check)
        else:
            checks.append(Check(name, "error", f"{label} with {n} ranks: {why_missing}"))
    return checks
