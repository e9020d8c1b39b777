"""Precision modes, dtypes and accuracy classes (DESIGN.md, "Precision modes and accuracy classes")."""
import contextlib
import functools
from typing import Dict, Optional, Tuple

import torch

PRECISIONS = ("ieee", "3xtf32", "tf32", "native")
FP32_PRECISIONS = ("ieee", "3xtf32", "tf32")

DTYPES = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp64": torch.float64,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def parse_dtype(name: str) -> torch.dtype:
    """'fp32' | 'fp16' | 'bf16' | 'fp64' -> torch.dtype; ValueError naming the bad value otherwise."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}: expected one of {', '.join(DTYPES)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    return DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def _fp32_precision(matmul) -> Optional[str]:
    """`matmul.fp32_precision` (torch >= 2.9) or None. torch 2.0's cuBLASModule.__getattr__ raises
    AssertionError, not AttributeError, for unknown names, so getattr/hasattr with a default cannot be used."""
    try:
        return matmul.fp32_precision
    except (AttributeError, AssertionError):
        return None


def torch_allows_tf32() -> bool:
    """Whether PyTorch's float32 matmul setting allows TF32 (what nn.Linear would do on a GPU).

    torch >= 2.9 has `torch.backends.cuda.matmul.fp32_precision`; reading the legacy
    `get_float32_matmul_precision()` after the new API was used raises, so the new one is read first.
    """
    matmul = torch.backends.cuda.matmul
    new = _fp32_precision(matmul)
    if new is not None:
        if new == "none":  # inherits the generic setting
            new = getattr(torch.backends, "fp32_precision", "ieee")
        return new == "tf32"
    return torch.get_float32_matmul_precision() != "highest"


def has_tensor_cores(device: torch.device) -> bool:
    """mma.sync tf32 needs sm_80+. Runs on every forward with precision resolution, so it is cached per
    device index (torch.cuda.is_available() alone cost ~1 µs per call on the H100 machine's CPU)."""
    if device.type != "cuda":
        return False
    return _tensor_cores(device.index if device.index is not None else _current_device())


def _current_device() -> int:
    return torch.cuda.current_device() if torch.cuda.is_available() else 0


@functools.lru_cache(maxsize=None)
def _tensor_cores(index: int) -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability(index)[0] >= 8


def default_precision(dtype: torch.dtype, device: torch.device) -> str:
    """The mode an fp32 input runs in when `precision=None`, following PyTorch's float32 matmul setting.

    strict -> '3xtf32' on GPUs with tensor cores (fp32-class accuracy), 'ieee' elsewhere;
    TF32 allowed -> 'tf32'. Non-fp32 dtypes always run 'native'. The CPU computes plain fp32 ('ieee').
    """
    if dtype != torch.float32:
        return "native"
    if device.type != "cuda":
        return "ieee"
    if torch_allows_tf32():
        return "tf32" if has_tensor_cores(device) else "ieee"
    return "3xtf32" if has_tensor_cores(device) else "ieee"


def check_precision(precision: Optional[str]) -> None:
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}")


def check_combination(precision: Optional[str], dtype: torch.dtype) -> None:
    """For the CLI: an fp32-only mode asked for with another dtype is a usage error naming both."""
    check_precision(precision)
    if dtype != torch.float32 and precision in FP32_PRECISIONS:
        raise ValueError(f"precision {precision!r} applies to fp32 inputs only, not {dtype_name(dtype)}")


def constant_under_compile(fn):
    """torch.compile evaluates `fn` once at trace time and bakes its result into the graph instead of
    tracing it. For what dynamo cannot trace: the C getter behind torch.backends.cuda.matmul.fp32_precision
    (a graph break under fullgraph=True; a later change of the matmul flags recompiles, checked on torch
    2.14), and loading the extension (file I/O, time.perf_counter: "cannot trace time.perf_counter" on the
    H100). No-op in eager mode and on torch < 2.1, which has no torch.compiler."""
    mark = getattr(getattr(torch, "compiler", None), "assume_constant_result", None)
    return mark(fn) if mark is not None else fn


# resolve_precision's answers for explicit modes, which depend only on (precision, dtype, device): every
# forward asks, and launch-bound shapes pay the ~1.5 µs of the full resolution in host time.
_EXPLICIT_MODES: Dict[Tuple[str, torch.dtype, torch.device], str] = {}


@constant_under_compile
def resolve_precision(precision: Optional[str], dtype: torch.dtype, device: torch.device) -> str:
    """The mode that actually runs for inputs of `dtype` on `device`.

    A model's `precision` is its choice for fp32 inputs: other dtypes (e.g. bf16 under autocast) run
    'native'. 'native' for fp32 means 'ieee'. On the CPU, and on GPUs without tensor cores, every fp32
    mode computes plain fp32 and is reported as 'ieee'. precision=None follows PyTorch's float32 matmul
    setting, read on every call.
    """
    if precision is None:
        return default_precision(dtype, device)
    key = (precision, dtype, device)
    try:
        mode = _EXPLICIT_MODES.get(key)
    except TypeError:  # unhashable, so not a mode name: say which value was wrong
        check_precision(precision)
        raise
    if mode is None:
        mode = _resolve_explicit(precision, dtype, device)
        if device.type != "cuda" or device.index is not None:  # "cuda" alone means the current device
            _EXPLICIT_MODES[key] = mode
    return mode


def _resolve_explicit(precision: str, dtype: torch.dtype, device: torch.device) -> str:
    check_precision(precision)
    if dtype != torch.float32:
        return "native"
    if precision == "native" or not has_tensor_cores(device):
        return "ieee"
    return precision


def accuracy_class(precision: str, dtype: torch.dtype) -> str:
    """The baseline a run is held against: 'fp32' (ieee, 3xtf32), 'tf32', or the dtype's own name."""
    if dtype == torch.float32:
        return "tf32" if precision == "tf32" else "fp32"
    return dtype_name(dtype)


@contextlib.contextmanager
def eager_matmul_mode(tf32: bool):
    """Run eager PyTorch's fp32 matmuls with TF32 on or off, restoring the previous setting after.

    Through the legacy setter `torch.set_float32_matmul_precision`, which exists on every torch >= 2.0 and
    keeps both readings consistent: writing `torch.backends.cuda.matmul.fp32_precision` (torch >= 2.9)
    instead makes `torch.get_float32_matmul_precision()` — which Inductor reads for its cache key and
    autotuning — raise "mix of the legacy and new APIs" (seen on an H100, torch 2.11: compile-max failed in
    tf32 mode).
    """
    try:
        old = torch.get_float32_matmul_precision()
    except RuntimeError:  # the user set the new API: read it there
        old = "high" if torch_allows_tf32() else "highest"
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def eager_uses_tf32(accuracy_class_name: str) -> bool:
    return accuracy_class_name == "tf32"
