"""One rank of `mishbench verify --distributed N` (and of `bench --distributed N`), launched by torchrun.

    python -m torch.distributed.run --nproc_per_node N ... -m mishbench.distributed.worker --job DIR

DIR/job.pt (written by the launcher) holds the config, the initial state and the global batch (float64, so
every rank and the launcher see the same values). Each rank trains ModelNew and the reference Model on its
contiguous shard of the batch under DistributedDataParallel and then FSDP; rank 0 writes DIR/result.pt after
each engine (so a later failure keeps the earlier results). A job that names an entry point runs that
instead (bench's DDP step: mishbench.bench.ddp:run_rank). A rank that fails writes DIR/rank<r>.err with
one line saying where and why, then re-raises so torchrun stops the others.
"""
import argparse
import importlib
import datetime
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.distributed as dist

# Test hook: "raise:<rank>" makes that rank raise at step 2 of its first training run, "hang:<rank>" makes it
# sleep there, so the launcher's error reporting and timeouts can be tested without a broken op;
# "<kind>:<rank>:<step>" picks the step (bench --distributed counts every timed step of the process).
FAULT_ENV = "MISHBENCH_DIST_FAULT"
FAULT_STEP = 2


def find_fully_shard() -> Optional[Callable]:
    """FSDP2's `fully_shard`: torch.distributed.fsdp (torch >= 2.6) or ._composable.fsdp (2.4, 2.5); else None."""
    try:
        from torch.distributed.fsdp import fully_shard
        return fully_shard
    except ImportError:
        pass
    try:
        from torch.distributed._composable.fsdp import fully_shard
        return fully_shard
    except ImportError:
        return None


def fault(step: int) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    if not spec or not dist.is_initialized():
        return
    kind, rank, at = (spec.split(":") + [""])[:3]
    if step != (int(at) if at else FAULT_STEP) or str(dist.get_rank()) != rank:
        return
    if kind == "raise":
        raise RuntimeError(f"injected fault on rank {rank} at step {step} ({FAULT_ENV}={spec})")
    if kind == "hang":
        time.sleep(3600)


def train(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, steps: int, lr: float,
          reduce_loss: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> List[float]:
    """`steps` SGD steps on loss = mean((model(x) − target)²); the loss before each step (float64).

    The same loop serves the ranks (x = their shard; reduce_loss averages the loss over ranks, which is the
    full-batch loss because the shards are equal) and the launcher's single-process runs on the full batch.
    """
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        fault(step)
        opt.zero_grad(set_to_none=True)
        loss = ((model(x) - target) ** 2).mean()
        loss.backward()
        opt.step()
        value = loss.detach().to(torch.float64)
        if reduce_loss is not None:
            value = reduce_loss(value)
        losses.append(float(value))
    return losses


def _strip(key: str) -> str:
    for prefix in ("_fsdp_wrapped_module.", "module."):
        key = key.replace(prefix, "")
    return key


def _wrap(engine: str, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    if engine == "ddp":
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    fully_shard = find_fully_shard()
    if fully_shard is not None:
        # Shard the root only: ModelNew calls the fused op from its own forward, so a separately sharded
        # `linear` child would never run its forward hook (its weights would stay sharded at the op).
        fully_shard(model)
        return model
    from torch.distributed.fsdp import FullyShardedDataParallel
    return FullyShardedDataParallel(model, device_id=device if device.type == "cuda" else None)


def _full_state(engine: str, wrapped: torch.nn.Module, model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """The full (unsharded) parameters; a collective for FSDP, so every rank calls it."""
    if engine == "ddp":
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if wrapped is model:  # fully_shard: DTensors
        out = {}
        for k, v in model.state_dict().items():
            v = v.full_tensor() if hasattr(v, "full_tensor") else v
            out[_strip(k)] = v.detach().cpu().clone()
        return out
    from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel, StateDictType
    cfg = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
    with FullyShardedDataParallel.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT, cfg):
        return {_strip(k): v.detach().cpu().clone() for k, v in wrapped.state_dict().items()}


def _run(engine: str, which: str, job: dict, device: torch.device) -> Dict[str, object]:
    from mishbench.op.model import ModelNew
    from mishbench.op.precision import eager_matmul_mode
    from mishbench.op.reference import Model

    cfg = job["config"]
    rank, world = dist.get_rank(), dist.get_world_size()
    dtype = getattr(torch, cfg["dtype"])
    k, n = cfg["in_features"], cfg["out_features"]
    model = ModelNew(k, n, cfg["precision"]) if which == "new" else Model(k, n)
    model.load_state_dict(job["state"], strict=True)
    model = model.to(device, dtype)
    wrapped = _wrap(engine, model, device)
    rows = job["x"].shape[0] // world
    x = job["x"][rank * rows:(rank + 1) * rows].to(device, dtype)
    target = job["target"][rank * rows:(rank + 1) * rows].to(device, dtype)

    def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(value)
        return value / world

    # The reference runs in the accuracy class's eager mode (TF32 on only for the 'tf32' class).
    with eager_matmul_mode(bool(cfg["tf32"]) and which == "ref"):
        losses = train(wrapped, x, target, cfg["steps"], cfg["lr"], reduce_loss=mean_over_ranks)
    params = _full_state(engine, wrapped, model)
    impl = model.implementation(device) if which == "new" else "eager"
    return {"losses": losses, "params": params, "impl": impl}


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary name, then rename: the launcher never reads a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", required=True, type=Path)
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    stage = "start"
    try:
        job = torch.load(args.job / "job.pt", weights_only=True)
        cfg = job["config"]
        device = torch.device("cpu")
        if cfg["device"] == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        stage = "init_process_group"
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=cfg["collective_timeout"]))
        if job.get("entry"):
            # Another command's rank work (`bench --distributed N` names mishbench.bench.ddp:run_rank): the
            # entry point is named by the job, so this floor never imports the command above it.
            module, _, func = str(job["entry"]).partition(":")
            run_rank = getattr(importlib.import_module(module), func)

            def set_stage(what: str) -> None:
                nonlocal stage
                stage = what
            run_rank(job, device, args.job, set_stage)
        else:
            results = {}  # type: Dict[str, Dict[str, object]]
            for engine in cfg["engines"]:
                results[engine] = {}
                for which in ("new", "ref"):
                    stage = f"{engine} {'ModelNew' if which == 'new' else 'Model'}"
                    results[engine][which] = _run(engine, which, job, device)
                if rank == 0:
                    save_atomic(results, args.job / "result.pt")
        stage = "shutdown"
        dist.barrier()
    except BaseException as exc:  # noqa: BLE001 - recorded for the launcher, then re-raised
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        (args.job / f"rank{rank}.err").write_text(f"{stage}: {' '.join(last.split())}\n")
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
