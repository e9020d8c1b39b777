"""Facts about the machine, for `info`, the verify JSON and the result CSV's provenance columns."""
import functools
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Optional

import torch

from mishbench import __version__

REPO = Path(__file__).resolve().parents[1]


def _run(cmd, cwd=None) -> Optional[str]:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.lru_cache(maxsize=None)
def git_sha() -> str:
    """The checkout's commit; MISHBENCH_GIT_SHA wins (a GPU machine's copy of the tree may have no .git)."""
    return (os.environ.get("MISHBENCH_GIT_SHA") or _run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO)
            or "unknown")


@functools.lru_cache(maxsize=None)
def driver_version() -> str:
    if shutil.which("nvidia-smi") is None:
        return ""
    out = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return out.splitlines()[0].strip() if out else ""


def gpu_name(device: Optional[torch.device] = None) -> str:
    if not torch.cuda.is_available():
        return ""
    return torch.cuda.get_device_name(device)


@functools.lru_cache(maxsize=None)
def nvcc_version() -> str:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return ""
    out = _run([nvcc, "--version"]) or ""
    for line in out.splitlines():
        if "release" in line:
            return line.split("release")[-1].split(",")[0].strip()
    return out.splitlines()[-1] if out else ""


def versions() -> Dict[str, str]:
    """The `env` block of the verify JSON."""
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "",
        "python": platform.python_version(),
        "mishbench": __version__,
    }


def describe() -> Dict[str, str]:
    """Everything `mishbench info` prints."""
    info = dict(versions())
    info["gpu"] = gpu_name() or "none (no CUDA device visible)"
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        props = torch.cuda.get_device_properties(0)
        info["compute capability"] = f"{major}.{minor}"
        info["multiprocessors"] = str(props.multi_processor_count)
        info["memory"] = f"{props.total_memory / 2**30:.1f} GiB"
    info["driver"] = driver_version() or "n/a"
    info["nvcc"] = nvcc_version() or "not found"
    info["platform"] = platform.platform()
    info["git sha"] = git_sha()
    return info
