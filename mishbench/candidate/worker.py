"""The candidate's side of the trust boundary: `python -m mishbench.candidate.worker`.

Started by process.py in a temporary working directory with a scrubbed environment. It imports the
candidate file (building any inline extension), then serves requests until its stdin closes (protocol.py).
It imports torch, the protocol and the clock, nothing else of mishbench: everything it could reach, the
candidate can rewrite.

Nothing here is trusted by the harness for correctness: reference outputs and gradients are computed in the
harness. What the worker reports beyond outputs (input mutation, aliasing, backend flags, timings) feeds the
anti-cheat checks, which catch the usual accidental and deliberate shortcuts, not a candidate that attacks
this file on purpose.
"""
import gc
import importlib.util
import os
import sys
import time
import traceback
from typing import Any, Dict, List, Optional, Tuple

import torch

from mishbench import clock
from mishbench.candidate.protocol import (CANDIDATE_FILE, DTYPES, HEADER, MAX_MESSAGE, decode, encode, grad_mode_calls,
                                         read_exact, train_calls)


# ------------------------------------------------------------------------------------- backend flags
def backend_flags() -> Dict[str, str]:
    """Every global that changes what PyTorch's own kernels compute, as strings. Reading a legacy TF32
    flag after the new fp32_precision API was used raises on torch >= 2.9: that reads as '<unreadable>'."""
    out: Dict[str, str] = {}

    def get(name, fn):
        try:
            out[name] = str(fn())
        except Exception as exc:  # noqa: BLE001
            out[name] = f"<unreadable: {type(exc).__name__}>"

    b = torch.backends
    get("torch.backends.cuda.matmul.allow_tf32", lambda: b.cuda.matmul.allow_tf32)
    get("torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction",
        lambda: b.cuda.matmul.allow_fp16_reduced_precision_reduction)
    get("torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction",
        lambda: b.cuda.matmul.allow_bf16_reduced_precision_reduction)
    get("torch.backends.cudnn.allow_tf32", lambda: b.cudnn.allow_tf32)
    get("torch.backends.cudnn.enabled", lambda: b.cudnn.enabled)
    get("torch.backends.cudnn.benchmark", lambda: b.cudnn.benchmark)
    get("torch.backends.cudnn.deterministic", lambda: b.cudnn.deterministic)
    get("torch.get_float32_matmul_precision()", torch.get_float32_matmul_precision)
    for path in ("fp32_precision", "cuda.matmul.fp32_precision", "cudnn.fp32_precision",
                 "cudnn.conv.fp32_precision", "cudnn.rnn.fp32_precision", "mkldnn.fp32_precision"):
        obj, parts = b, path.split(".")
        try:  # torch 2.0's backends raise AssertionError, not AttributeError, for unknown names
            for part in parts[:-1]:
                obj = getattr(obj, part, None)
            present = obj is not None and hasattr(obj, parts[-1])
        except Exception:  # noqa: BLE001
            present = False
        if present:
            get("torch.backends." + path, lambda o=obj, p=parts[-1]: getattr(o, p))
    get("torch.are_deterministic_algorithms_enabled()", torch.are_deterministic_algorithms_enabled)
    get("torch.get_default_dtype()", torch.get_default_dtype)
    return out


# -------------------------------------------------------------------------------------- observations
def _span(t: torch.Tensor) -> Tuple[int, int]:
    storage = t.untyped_storage()
    start = storage.data_ptr()
    return start, start + storage.nbytes()


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.device != b.device:
        return False
    (a0, a1), (b0, b1) = _span(a), _span(b)
    return a1 > a0 and b1 > b0 and a0 < b1 and b0 < a1


def _module_tensors(model: torch.nn.Module) -> List[Tuple[str, torch.Tensor]]:
    """Parameters, buffers and plain tensor attributes (a persistent output buffer hides there)."""
    out = [(n, p) for n, p in model.named_parameters()] + [(n, b) for n, b in model.named_buffers()]
    for prefix, mod in model.named_modules():
        for attr, value in vars(mod).items():
            if isinstance(value, torch.Tensor) and not attr.startswith("_parameters"):
                out.append(((prefix + "." if prefix else "") + attr, value))
    return out


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():
        return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())
    return bool(torch.equal(a, b))


def _cpu(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A compact CPU copy: torch.save of a view would ship its whole storage."""
    if t is None:
        return None
    return t.detach().to("cpu").clone(memory_format=torch.contiguous_format)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()  # device-wide: work a candidate left on side streams is finished too


def _poison(numel: int, device: torch.device, dtype: torch.dtype) -> None:
    """Fill freed memory of the output's size with NaN, so an output the candidate never wrote (torch.empty
    reusing a freed block: KernelBench's stale-output exploit) reads as NaN. On CUDA the caching allocator
    hands the block straight back; on the CPU small blocks usually come back from malloc's free list."""
    if numel <= 0 or not dtype.is_floating_point:
        return
    for n in (numel, 2 * numel):
        block = torch.empty(n, device=device, dtype=dtype)
        block.fill_(float("nan"))
        del block
    _sync(device)


# ------------------------------------------------------------------------------------------- worker
class Worker:
    def __init__(self):
        self.module = None
        self.model_cls = None
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.builds: List[Dict[str, Any]] = []
        self.flags0: Dict[str, str] = {}
        self.flag_changes: List[str] = []
        self.models: Dict[Any, torch.nn.Module] = {}
        self.states: Dict[Any, Dict[str, torch.Tensor]] = {}
        self.last_output: Optional[torch.Tensor] = None

    # -- flags --------------------------------------------------------------------------------------
    def _note_flags(self, stage: str) -> None:
        now = backend_flags()
        for name, before in self.flags0.items():
            after = now.get(name)
            if after != before:
                line = f"{name}: {before} -> {after} ({stage})"
                if not any(c.startswith(name + ":") for c in self.flag_changes):
                    self.flag_changes.append(line)

    # -- load ---------------------------------------------------------------------------------------
    def _wrap_extension_builders(self) -> None:
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
                self.builds.append(rec)
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

    def op_load(self, req):
        self.device = torch.device(req["device"])
        self.dtype = DTYPES[req["dtype"]]
        self.flags0 = backend_flags()
        self._wrap_extension_builders()
        t0 = time.perf_counter()
        error = ""
        try:
            spec = importlib.util.spec_from_file_location("candidate", os.path.abspath(CANDIDATE_FILE))
            module = importlib.util.module_from_spec(spec)
            sys.modules["candidate"] = module
            spec.loader.exec_module(module)
            self.module = module
            self.model_cls = getattr(module, "ModelNew", None)
            if self.model_cls is None:
                error = "the file defines no ModelNew"
        except BaseException as exc:  # noqa: BLE001 - SystemExit in a candidate is a finding too
            error = f"{type(exc).__name__}: {exc}"
            tb = traceback.extract_tb(exc.__traceback__)
            frames = [f for f in tb if f.filename.endswith(CANDIDATE_FILE)]
            if frames:
                error = f"line {frames[-1].lineno}: {error}"
            if isinstance(exc, SyntaxError) and exc.lineno:
                error = f"line {exc.lineno}: SyntaxError: {exc.msg}"
        self._note_flags("import")
        return {"ok": not error, "load_error": error, "seconds": time.perf_counter() - t0, "builds": self.builds,
                "flag_changes": list(self.flag_changes)}

    # -- models -------------------------------------------------------------------------------------
    def _construct(self, size) -> torch.nn.Module:
        model = self.model_cls(int(size[1]), int(size[2]))
        self._note_flags("construct")
        return model

    def _model(self, size, device, dtype, req) -> torch.nn.Module:
        key = (tuple(size), str(device), str(dtype))
        model = self.models.get(key)
        if model is None:
            model = self._construct(size).to(device, dtype)
            self.models = {key: model}  # one at a time: KernelBench-size modules are 256 MB each
        state = req.get("state")
        skey = req.get("state_key")
        if state is not None:
            state = {k: v.to(device, dtype) for k, v in state.items()}
            self.states = {skey: state} if skey is not None else {}
        else:
            state = self.states[skey]
        model.load_state_dict(state, strict=True)
        model.zero_grad(set_to_none=True)
        return model

    def op_init_state(self, req):
        torch.manual_seed(int(req["seed"]))
        model = self._construct(req["size"])
        return {"state": {k: _cpu(v) for k, v in model.state_dict().items()}}

    def _observe(self, model, x_in, x_sent, params_before, y, observations) -> None:
        if not _equal(x_in.detach(), x_sent):
            n = int((x_in.detach() != x_sent).sum())
            observations.append(f"mutation: forward modified its input x in place ({n} elements changed)")
        for name, before in params_before.items():
            after = dict(model.state_dict()).get(name)
            if after is not None and not _equal(after.detach(), before):
                observations.append(f"mutation: forward modified parameter {name} in place")
        targets = [("input x", x_in)] + _module_tensors(model)
        if self.last_output is not None:
            targets.append(("the previous call's output", self.last_output))
        for name, t in targets:
            if t is y or _overlap(y, t):
                observations.append(f"aliasing: output shares memory with {name}")
                break
        self.last_output = y.detach()

    def _call(self, model, x, grad_y, size, observations):
        """One candidate call on x; returns y and grads. Inputs and parameters are compared after it."""
        x_sent = x.detach().clone()
        params_before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        out_numel = int(x.numel() // max(int(size[1]), 1)) * int(size[2]) if x.dim() else int(size[2])
        _poison(out_numel, self.device, x.dtype)
        grads = None
        if grad_y is None:
            x_in = x
            with torch.no_grad():
                y = model(x_in)
        else:
            x_in = x.detach().clone().requires_grad_()
            y = model(x_in)
            if not isinstance(y, torch.Tensor):
                raise TypeError(f"ModelNew.forward returned {type(y).__name__}, not a Tensor")
            if not y.requires_grad:
                raise RuntimeError("ModelNew's output does not require grad: no backward (autograd graph cut)")
            y.backward(grad_y)
            grads = {"x": x_in.grad}
            grads.update({n: p.grad for n, p in model.named_parameters()})
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"ModelNew.forward returned {type(y).__name__}, not a Tensor")
        _sync(self.device)
        self._observe(model, x_in, x_sent, params_before, y, observations)
        self._note_flags("forward")
        return y, grads

    def op_run(self, req):
        x = req["x"].to(self.device)
        model = self._model(req["size"], self.device, x.dtype, req)
        grad_y = req.get("grad_y")
        grad_y = grad_y.to(self.device) if grad_y is not None else None
        obs: List[str] = []
        y, grads = self._call(model, x, grad_y, req["size"], obs)
        return {"y": _cpu(y), "grads": {k: _cpu(v) for k, v in (grads or {}).items()} if grads is not None else None,
                "observations": obs, "flag_changes": list(self.flag_changes)}

    def op_run_seq(self, req):
        """Several inputs through ONE reused input buffer (same object, same address, new contents): an
        output cached by input identity, address or shape comes back stale."""
        xs = [x.to(self.device) for x in req["xs"]]
        model = self._model(req["size"], self.device, xs[0].dtype, req)
        buf = torch.empty_like(xs[0])
        ys, obs = [], []
        for x in xs:
            with torch.no_grad():
                buf.copy_(x)
            y, _ = self._call(model, buf, None, req["size"], obs)
            ys.append(_cpu(y))
        return {"ys": ys, "observations": obs, "flag_changes": list(self.flag_changes)}

    def op_call_error(self, req):
        size = req["size"]
        model = self._construct(size).to(torch.device(req["param_device"]), DTYPES[req["param_dtype"]])
        x = req["x"].to(torch.device(req["x_device"]))
        try:
            with torch.no_grad():
                model(x)
            _sync(self.device)
        except Exception as exc:  # noqa: BLE001
            return {"error": None, "raised": f"{type(exc).__name__}: {exc}"}
        return {"error": None, "raised": None}

    def op_time(self, req):
        """Per call: CUDA-event time on the current stream and host time around a device-wide synchronize,
        L2 flushed before each, by the one clock (clock.py); on the CPU (the tests) the host clock stands in
        for the events and there is no peak memory."""
        cuda = self.device.type == "cuda"
        x = req["x"].to(self.device)
        model = self._model(req["size"], self.device, x.dtype, req)
        grad_y = req.get("grad_y")
        grad_y = grad_y.to(self.device) if grad_y is not None else None

        def call(xx):
            if grad_y is None:
                with torch.no_grad():
                    return model(xx)
            xx = xx.detach().requires_grad_()
            y = model(xx)
            y.backward(grad_y)
            return y

        iters = int(req.get("iters", 30))
        timer = clock.time_cuda if cuda else clock.time_cpu
        t = timer(call, [x], warmup=int(req.get("warmup", 10)), warmup_ms=1e3 * float(req.get("warmup_s", 0.1)),
                  iters=iters, max_iters=iters, budget_s=None, setup=lambda _: model.zero_grad(set_to_none=True),
                  device=self.device if cuda else None)
        self._note_flags("timed calls")
        return {"event_ms": list(t.samples), "host_ms": list(t.host_samples),
                "peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
                "flag_changes": list(self.flag_changes)}

    def op_release(self, req):
        """Between bench cases this process idles while the harness times its baselines on the same GPU:
        drop the model, states and last output, hand cached device memory back, and start a new peak-memory
        count, so the next case's peak_mem_mb is that case's own."""
        self.models, self.states, self.last_output = {}, {}, None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        return {"flag_changes": list(self.flag_changes)}

    def op_train(self, req):  # protocol.train_calls; the harness judges the losses and the final state
        xs, targets = [x.to(self.device) for x in req["xs"]], [t.to(self.device) for t in req["targets"]]
        model = self._model(req["size"], self.device, xs[0].dtype, req)
        losses = train_calls(model, xs, targets, int(req["steps"]), float(req["lr"]), float(req["momentum"]))
        self._note_flags("training")
        return {"losses": losses, "state": {k: _cpu(v) for k, v in model.state_dict().items()},
                "flag_changes": list(self.flag_changes)}

    def op_grad_mode(self, req):  # protocol.grad_mode_calls; grad_y goes back as the candidate left it
        x, grad_y = req["x"].to(self.device), req.get("grad_y")
        grad_y = grad_y.to(self.device) if grad_y is not None else None
        model = self._model(req["size"], self.device, x.dtype, req)
        y, grads, facts = grad_mode_calls(model, str(req["mode"]), x, grad_y)
        self._note_flags("backward")
        return {"y": _cpu(y), "grads": {k: _cpu(v) for k, v in grads.items()}, "upstream_after": _cpu(grad_y),
                "grad_written": list(facts.get("grad_written") or []), "flag_changes": list(self.flag_changes)}

    def op_flags(self, req):
        self._note_flags("request")
        return {"flag_changes": list(self.flag_changes)}

    def handle(self, req):
        op = req.get("op")
        fn = getattr(self, "op_" + str(op), None)
        if fn is None:
            return {"error": f"unknown op {op!r}"}
        if op != "load" and self.model_cls is None:
            return {"error": "the candidate did not load"}
        return fn(req)


def _format_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith(CANDIDATE_FILE)]
    if frames:
        text = f"candidate line {frames[-1].lineno}: {text}"
    return text[:600]


def main() -> int:
    # The protocol owns private copies of fds 0/1; the candidate's prints go to stderr (the harness's log
    # file) so they cannot corrupt a reply.
    proto_in = os.fdopen(os.dup(0), "rb", buffering=0)
    proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    for stream in (sys.stdout, sys.stderr):  # a crash must not swallow what the candidate printed last
        try:
            stream.reconfigure(line_buffering=True)
        except AttributeError:
            pass
    worker = Worker()
    while True:
        head = read_exact(proto_in, HEADER.size)
        if head is None:
            return 0
        (n,) = HEADER.unpack(head)
        if n > MAX_MESSAGE:
            return 3
        data = read_exact(proto_in, n)
        if data is None:
            return 0
        req = decode(data)
        try:
            reply = worker.handle(req)
        except BaseException as exc:  # noqa: BLE001 - a failing candidate is a finding; keep serving
            reply = {"error": _format_error(exc)}
            sys.stderr.write(traceback.format_exc())
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            payload = encode(reply)
        except Exception as exc:  # noqa: BLE001 - e.g. a tensor subclass that will not pickle
            payload = encode({"error": f"reply not serialisable: {type(exc).__name__}: {exc}"})
        proto_out.write(payload)


if __name__ == "__main__":
    sys.exit(main())
