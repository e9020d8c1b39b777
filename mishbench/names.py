"""The names the command line accepts, checked as strings, without torch (floor 0).

`mishbench verify --dtype fp8` must answer in well under a second: importing torch costs seconds (and
`torch._dynamo` as much again), so every flag is validated here first and the commands import torch only
once the flags are known good. The torch-side tables (`op/precision.py` DTYPES, `bench/providers.py`
BASELINES) are built from these names, and a test keeps them equal.
"""
import re
from typing import List, Optional

DTYPES = ("fp32", "fp16", "bf16", "fp64")
PRECISIONS = ("ieee", "3xtf32", "tf32", "native")
FP32_PRECISIONS = ("ieee", "3xtf32", "tf32")
BASELINES = ("eager", "compile", "compile-max")
BENCH_MODES = ("fwd", "fwd_bwd", "all")
DEVICES = ("auto", "cpu", "cuda")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_dtype(name: str) -> str:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}: expected one of {', '.join(DTYPES)}")
    return name


def check_precision(precision: Optional[str], dtype: str = "fp32") -> Optional[str]:
    """An fp32-only mode asked for with another dtype is an error naming both."""
    if precision is None:
        return None
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if dtype != "fp32" and precision in FP32_PRECISIONS:
        raise ValueError(f"precision {precision!r} applies to fp32 inputs only, not {dtype}")
    return precision


def check_device(name: str) -> str:
    """The spelling only ('auto', 'cpu', 'cuda', 'cuda:N'); whether a GPU is there is torch's question."""
    if not _DEVICE.match(name):
        raise ValueError(f"unknown device {name!r}: expected auto, cpu or cuda")
    return name


def check_mode(mode: str) -> str:
    if mode not in BENCH_MODES:
        raise ValueError(f"unknown mode {mode!r}: expected fwd, fwd_bwd or all")
    return mode


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
