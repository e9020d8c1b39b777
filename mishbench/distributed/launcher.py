"""The torchrun launcher that verify and bench share: start `python -m torch.distributed.run ... -m
mishbench.distributed.worker --job DIR` in its own process group, kill it whole on timeout or Ctrl-C, and
say in one line why a run did not end cleanly (the ranks write `rank<r>.err` files into the job folder)."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from mishbench.distributed import worker


def check_ranks(n: int, device: torch.device) -> None:
    """ValueError (a usage problem) for N < 1, or more CUDA ranks than visible GPUs (one GPU per rank)."""
    if n < 1:
        raise ValueError(f"need at least 1 rank, got {n}")
    if device.type == "cuda":
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus < n:
            raise ValueError(f"{n} ranks need {n} GPUs (one per rank), but {gpus} visible")


def fsdp_skip_reason(device: torch.device) -> Optional[str]:
    """Why FSDP cannot run here at all, or None.

    torch < 2.4 has no fully_shard (FSDP2), and its FullyShardedDataParallel wrapper needs CUDA in its
    forward: on torch 2.0.1 with gloo on the CPU it raises 'Found no NVIDIA driver on your system'.
    """
    if device.type == "cuda" or worker.find_fully_shard() is not None:
        return None
    return (f"torch {torch.__version__} cannot run FSDP on the CPU: it has no fully_shard (FSDP2, torch >= 2.4) "
            "and its FullyShardedDataParallel wrapper needs CUDA ('Found no NVIDIA driver' with gloo)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_torchrun(n: int, job_dir: Path, stdout=subprocess.PIPE) -> "subprocess.Popen":
    """Start `torchrun -m mishbench.distributed.worker --job job_dir` with n ranks in its own process group
    (so kill_group takes down torchrun and every rank); its output goes to `stdout` (stderr merged)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "--monitor-interval", "0.5",
           "-m", "mishbench.distributed.worker", "--job", str(job_dir)]
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # so `-m mishbench.distributed.worker` resolves
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    # NCCL collectives honour the process-group timeout only with async error handling (the default on
    # new torch; torch < 2.2 reads the old name).
    env.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    if worker.find_fully_shard() is None:
        env.setdefault("NCCL_ASYNC_ERROR_HANDLING", "1")
    return subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def launch(n: int, job_dir: Path, timeout: float) -> Tuple[int, str, bool]:
    """Run torchrun; (exit code, combined output, timed out). The whole process group dies on timeout."""
    proc = start_torchrun(n, job_dir)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out.decode(errors="replace"), False
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, _ = proc.communicate()
        return proc.returncode, out.decode(errors="replace"), True


def kill_group(proc: "subprocess.Popen", grace: float = 5.0) -> None:
    """SIGTERM the process group started with `proc` (start_new_session), SIGKILL after `grace` seconds;
    returns once no member of the group runs any more (or after `grace` more seconds)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            if sig == signal.SIGTERM:
                os.killpg(proc.pid, signal.SIGKILL)  # stragglers that outlived torchrun
            break
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return
    # A SIGKILLed rank is gone only once the kernel has run its exit: at a load of 12 on 2 cores a rank
    # was still running right after the kill (seen in the interrupt test).
    deadline = time.monotonic() + grace
    while _group_running(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def _group_running(pgid: int) -> bool:
    """Whether a process of group `pgid` is still running (zombies, which nobody may reap, count as gone).
    Reads /proc (Linux); elsewhere it answers False and kill_group does not wait."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return False
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def rank_errors(job_dir: Path) -> List[str]:
    """'rank r: stage: error' lines, earliest first (the first failure is the cause, the rest follow it)."""
    files = sorted(job_dir.glob("rank*.err"), key=lambda p: p.stat().st_mtime)
    return [f"{p.stem}: {p.read_text().strip()}" for p in files]


def tail(output: str, lines: int = 3) -> str:
    kept = [ln.strip() for ln in output.splitlines() if ln.strip()]
    return " | ".join(kept[-lines:])[-400:]


def failure_reason(errors: List[str], returncode: Optional[int], output: str, killed: Optional[str] = None) -> str:
    """One line on why a torchrun did not end cleanly: `killed` (the sentence saying it was killed after a
    timeout) with the first rank error or the output's tail; else the first rank error; else the exit code."""
    if killed:
        return killed + (f"; {errors[0]}" if errors else f"; last output: {tail(output)}")
    if errors:
        return f"a rank failed: {errors[0]}" + (f" (+{len(errors) - 1} more ranks)" if len(errors) > 1 else "")
    return f"torchrun exited with {returncode}: {tail(output)}"
