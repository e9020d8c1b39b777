"""What the candidate's process looks like from inside: every flag under `torch.backends`, the global matmul
and determinism settings, the denormal (flush-to-zero) state, and the warnings the candidate's code raises.

Imported by the worker, so it imports torch and the standard library only. It runs in the candidate's
process, where everything can be rewritten: what it reads is a second opinion (the harness judges the
outputs' accuracy itself); it catches the usual flag flips, not a candidate that attacks this module.
"""
import contextlib
import importlib
import inspect
import os
import pkgutil
import re
import types
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

# Names read on the objects that answer through __getattr__ only (torch.backends.cuda.matmul), so that a
# torch whose source cannot be read still has them watched.
KNOWN = {"torch.backends.cuda.matmul": ("allow_tf32", "allow_fp16_reduced_precision_reduction",
                                        "allow_bf16_reduced_precision_reduction", "allow_fp16_accumulation",
                                        "fp32_precision")}
# A zero-argument function under torch.backends whose name says it reads a setting.
_GETTER = re.compile(r"^(is_|get_|preferred_)|_enabled$")
# Caches (cuFFT plan counts) change with use, not with settings.
_VOLATILE = ("cache",)
_MAX_DEPTH = 4


def _plain(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str, type(None), torch.dtype))


def _names(obj: Any) -> List[str]:
    """Public names of a module or settings object, also those only its class or wrapped module has
    (PropModule keeps its flags as class descriptors and forwards the rest to `.m`), and the string names
    its __getattr__ answers to."""
    names = set()
    try:
        names.update(dir(obj))
    except Exception:  # noqa: BLE001
        pass
    for cls in type(obj).__mro__:
        if cls in (object, types.ModuleType):
            continue
        names.update(vars(cls))
        getattr_fn = vars(cls).get("__getattr__")
        if getattr_fn is not None:
            try:
                names.update(re.findall(r"[\"'](\w+)[\"']", inspect.getsource(getattr_fn)))
            except (OSError, TypeError):
                pass
    wrapped = getattr(obj, "m", None) if isinstance(obj, types.ModuleType) else None
    if isinstance(wrapped, types.ModuleType):
        names.update(vars(wrapped))
        names.discard("m")  # its names are read through the PropModule, under the module's own path
    # ALL_CAPS are constants (VERBOSE_ON, TYPE_CHECKING), not settings.
    return sorted(n for n in names if not n.startswith("_") and not n.isupper()
                  and not any(v in n for v in _VOLATILE))


def _is_settings(value: Any) -> bool:
    """A torch.backends submodule or one of its settings objects (matmul, conv, ...), not a class or
    function, and nothing outside torch.backends."""
    if isinstance(value, types.ModuleType):
        return str(getattr(value, "__name__", "")).startswith("torch.backends")
    if isinstance(value, type) or callable(value):
        return False
    return str(getattr(type(value), "__module__", "")).startswith("torch.backends")


def _zero_arg(fn: Callable) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
               for p in sig.parameters.values())


def _import_backends() -> None:
    """Every torch.backends submodule, so that one the candidate imports later is already watched."""
    for info in pkgutil.iter_modules(getattr(torch.backends, "__path__", [])):
        if not info.name.startswith("_"):
            try:
                importlib.import_module("torch.backends." + info.name)
            except Exception:  # noqa: BLE001 - a backend this build lacks
                pass


_PLAN: List[Tuple[str, Callable[[], Any]]] = []


def _plan() -> List[Tuple[str, Callable[[], Any]]]:
    """(path, read) for every setting under torch.backends, found once by walking the tree (source
    reads and imports are slow; a snapshot after every call only re-reads the values)."""
    if _PLAN:
        return _PLAN
    _import_backends()
    seen = set()

    def walk(obj: Any, prefix: str, depth: int) -> None:
        if id(obj) in seen or depth > _MAX_DEPTH:
            return
        seen.add(id(obj))
        for name in sorted(set(_names(obj)) | set(KNOWN.get(prefix, ()))):
            path = prefix + "." + name
            read = (lambda o=obj, n=name: getattr(o, n))
            try:
                value = read()
            except AttributeError:
                if name in KNOWN.get(prefix, ()):
                    _PLAN.append((path, read))
                continue
            except Exception:  # noqa: BLE001 - a read that raises is recorded as such
                _PLAN.append((path, read))
                continue
            if _plain(value):
                _PLAN.append((path, read))
            elif _is_settings(value):
                walk(value, path, depth + 1)
            elif callable(value) and not isinstance(value, type) and _GETTER.search(name) and _zero_arg(value):
                _PLAN.append((path + "()", value))

    walk(torch.backends, "torch.backends", 0)
    return _PLAN


def backends_tree() -> Dict[str, str]:
    """Every readable setting under torch.backends as a string; a read that raises (legacy TF32 flags
    after the fp32_precision API was used, torch >= 2.9) is recorded as '<raises Error>'."""
    out: Dict[str, str] = {}
    for path, read in _plan():
        try:
            value = read()
        except Exception as exc:  # noqa: BLE001
            out[path] = f"<raises {type(exc).__name__}>"
            continue
        out[path] = repr(value) if _plain(value) else f"<{type(value).__name__}>"
    return out


def denormals(device: torch.device) -> str:
    """Whether a float32 denormal survives a multiplication by one: 'kept', or 'flushed to zero' after
    torch.set_flush_denormal(True) (FTZ/DAZ: there is no getter, so it is probed)."""
    try:
        x = torch.full((1,), 1e-40, dtype=torch.float32, device=device)
        return "kept" if float((x * 1.0).cpu()[0]) != 0.0 else "flushed to zero"
    except Exception as exc:  # noqa: BLE001
        return f"<raises {type(exc).__name__}>"


def snapshot(device: Optional[torch.device] = None) -> Dict[str, str]:
    """The whole environment that changes what PyTorch's own kernels compute, as strings."""
    out = backends_tree()

    def get(name: str, fn: Callable[[], Any]) -> None:
        try:
            out[name] = str(fn())
        except Exception as exc:  # noqa: BLE001
            out[name] = f"<raises {type(exc).__name__}>"

    for fn in ("get_float32_matmul_precision", "are_deterministic_algorithms_enabled",
               "is_deterministic_algorithms_warn_only_enabled", "get_deterministic_debug_mode",
               "get_default_dtype", "get_default_device", "is_anomaly_enabled", "is_grad_enabled"):
        if hasattr(torch, fn):  # torch 2.0 lacks some (get_default_device)
            get(f"torch.{fn}()", getattr(torch, fn))
    out["denormals (cpu)"] = denormals(torch.device("cpu"))
    if device is not None and device.type == "cuda":
        out[f"denormals ({device.type})"] = denormals(device)
    return out


def changes(before: Dict[str, str], now: Dict[str, str]) -> List[str]:
    """'name: before -> after' for every setting read both times with another value."""
    return [f"{k}: {before[k]} -> {now[k]}" for k in before if k in now and now[k] != before[k]]


# ------------------------------------------------------------------------------------------ warnings
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))


class Warnings:
    """Warnings raised while the candidate's code runs (import, construction, calls), each kind once."""

    def __init__(self, limit: int = 40):
        self.records: List[Dict[str, Any]] = []
        self.limit = limit

    @contextlib.contextmanager
    def capture(self, stage: str):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield
            finally:
                for w in caught:
                    self._add(stage, w)

    def _add(self, stage: str, w: warnings.WarningMessage) -> None:
        message = " ".join(str(w.message).split())[:300]
        category = getattr(w.category, "__name__", str(w.category))
        if any(r["category"] == category and r["message"] == message for r in self.records):
            return
        if len(self.records) >= self.limit:
            return
        filename = os.path.abspath(str(w.filename))
        deprecation = issubclass(w.category, (DeprecationWarning, FutureWarning)) and (
            filename.startswith(_TORCH_DIR) or "torch" in message)
        where = "torch" if filename.startswith(_TORCH_DIR) else os.path.basename(filename)
        self.records.append({"stage": stage, "category": category, "message": message,
                             "where": f"{where}:{w.lineno}", "deprecation": bool(deprecation)})
