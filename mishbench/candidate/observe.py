"""What the worker sees of each output and of each inline build: a second opinion of the output contract (DESIGN.md, "Candidates:
where the judge stands"). Imported by the worker, so torch and the standard library only; the harness
judges the outputs it gets back itself (candidate/contract.py).
"""
from typing import Any, Dict, List, Optional, Tuple

import time

import torch

try:  # a weak reference to a storage: an earlier output is compared only while something keeps it alive
    from torch.multiprocessing.reductions import StorageWeakRef
except ImportError:  # pragma: no cover - every torch >= 2.0 has it
    StorageWeakRef = None


def _span(t: torch.Tensor) -> Tuple[int, int]:
    storage = t.untyped_storage()
    start = storage.data_ptr()
    return start, start + storage.nbytes()


def overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.device != b.device:
        return False
    (a0, a1), (b0, b1) = _span(a), _span(b)
    return a1 > a0 and b1 > b0 and a0 < b1 and b0 < a1


def plain_tensor(t: torch.Tensor) -> torch.Tensor:
    """t as exactly torch.Tensor, without running a subclass's __torch_function__ (the reply must not
    carry a subclass: torch.load(weights_only=True) in the harness refuses it)."""
    if type(t) is torch.Tensor:
        return t
    disable = getattr(torch._C, "DisableTorchFunctionSubclass", None) or torch._C.DisableTorchFunction
    with disable():
        return torch.Tensor.as_subclass(t, torch.Tensor)


def module_tensors(model: torch.nn.Module) -> List[Tuple[str, torch.Tensor]]:
    """Parameters, buffers and plain tensor attributes (a persistent output buffer hides there)."""
    out = [(n, p) for n, p in model.named_parameters()] + [(n, b) for n, b in model.named_buffers()]
    for prefix, mod in model.named_modules():
        for attr, value in vars(mod).items():
            if isinstance(value, torch.Tensor) and not attr.startswith("_parameters"):
                out.append(((prefix + "." if prefix else "") + attr, value))
    return out


def equal_nan(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():
        return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())
    return bool(torch.equal(a, b))


def poison(numel: int, device: torch.device, dtype: torch.dtype) -> None:
    """Fill freed memory of the output's size with NaN, so an output the candidate never wrote (torch.empty
    reusing a freed block: KernelBench's stale-output exploit) reads as NaN. On CUDA the caching allocator
    hands the block straight back; on the CPU small blocks usually come back from malloc's free list."""
    if numel <= 0 or not dtype.is_floating_point:
        return
    for n in (numel, 2 * numel):
        block = torch.empty(n, device=device, dtype=dtype)
        block.fill_(float("nan"))
        del block
    if device.type == "cuda":
        torch.cuda.synchronize()


class Outputs:
    """What the worker sees of each output (a second opinion of the output contract, DESIGN.md): its exact
    type, dtype, shape, device, contiguity, and storage shared with the input, the module's tensors or ANY
    earlier output that is still alive (a ring of buffers the candidate keeps). Findings by kind, counted."""

    def __init__(self):
        self.findings: Dict[str, Dict[str, Any]] = {}
        self.calls = 0
        self.earlier: List[Tuple[Any, int, int, torch.device, int]] = []  # weak ref, span, device, call

    def note(self, kind: str, text: str) -> None:
        f = self.findings.setdefault(kind, {"count": 0, "first": text, "call": self.calls})
        f["count"] += 1

    def check(self, y, x_in: torch.Tensor, size, shared: Optional[str]) -> None:
        self.calls += 1
        if not isinstance(y, torch.Tensor):
            self.note("type", f"forward returned {type(y).__module__}.{type(y).__qualname__}, not a torch.Tensor")
            return
        if type(y) is not torch.Tensor:
            self.note("type", f"the output is a {type(y).__module__}.{type(y).__qualname__}, a subclass of "
                              "torch.Tensor (a drop-in returns exactly torch.Tensor)")
        want = tuple(x_in.shape[:-1]) + (int(size[2]),) if x_in.dim() else (int(size[2]),)
        if tuple(y.shape) != want:
            self.note("shape", f"output shape {tuple(y.shape)} for input {tuple(x_in.shape)} (Model: {want})")
        if y.dtype != x_in.dtype:
            self.note("dtype", f"output dtype {y.dtype} for a {x_in.dtype} input (Model returns {x_in.dtype})")
        if y.device != x_in.device:
            self.note("device", f"output on {y.device} for an input on {x_in.device}")
        if not y.is_contiguous():
            self.note("contiguous", f"output not contiguous (strides {tuple(y.stride())} for shape {tuple(y.shape)})")
        if shared:
            self.note("storage", f"output shares storage with {shared}")
        try:
            storage = y.untyped_storage()
            start = storage.data_ptr()
            end = start + storage.nbytes()
        except Exception:  # noqa: BLE001 - a wrapper subclass without storage: its type is the finding
            return
        self.earlier = [e for e in self.earlier if not e[0].expired()]
        if end > start:
            for _ref, s0, s1, dev, call in self.earlier:
                if dev == y.device and start < s1 and s0 < end:
                    self.note("storage", f"call {self.calls}'s output shares storage with call {call}'s, which is "
                                         "still alive (outputs from a ring of buffers)")
                    break
            if StorageWeakRef is not None and len(self.earlier) < 4096:
                self.earlier.append((StorageWeakRef(storage), start, end, y.device, self.calls))

    def reply(self) -> Dict[str, Any]:
        return {"calls": self.calls, "findings": {k: dict(v) for k, v in self.findings.items()}}


def wrap_extension_builders(builds: List[Dict[str, Any]]) -> None:
    """Record every inline build: name, whether CUDA sources were given, time, build dir, and the
    compiler output of a failed one (load_inline's exception carries it)."""
    import torch.utils.cpp_extension as cpp

    def wrap(fn, kind):
        def wrapper(*args, **kwargs):
            name = kwargs.get("name", args[0] if args else "?")
            cuda = bool(kwargs.get("cuda_sources") or (len(args) > 2 and args[2])) if kind == "load_inline" \
                else any(str(s).endswith(".cu") for s in (kwargs.get("sources") or (args[1] if len(args) > 1 else [])))
            build_dir = kwargs.get("build_directory")
            if not build_dir:
                try:
                    build_dir = cpp._get_build_directory(name, False)
                except Exception:  # noqa: BLE001
                    build_dir = ""
            rec = {"name": str(name), "kind": kind, "cuda": cuda, "build_dir": str(build_dir), "ok": False,
                   "seconds": 0.0, "error": "", "sources": {}}
            if kind == "load_inline":
                for key, idx in (("cpp_sources", 1), ("cuda_sources", 2)):
                    src = kwargs.get(key, args[idx] if len(args) > idx else None)
                    if isinstance(src, str):
                        src = [src]
                    rec["sources"][key] = "\n".join(src or [])
            builds.append(rec)
            t0 = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                rec["error"] = f"{type(exc).__name__}: {exc}"
                rec["seconds"] = time.perf_counter() - t0
                raise
            rec["ok"], rec["seconds"] = True, time.perf_counter() - t0
            return result
        return wrapper

    cpp.load_inline = wrap(cpp.load_inline, "load_inline")
    cpp.load = wrap(cpp.load, "load")
