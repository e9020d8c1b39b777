"""The wire protocol between the harness and the candidate's worker: length-prefixed `torch.save` of a dict
of tensors, strings and numbers, read with `weights_only=True` in both directions (so a reply cannot run
code in the harness). Tensors cross on the CPU. Imports torch only: the worker may import nothing else.
"""
import inspect
import io
import struct
from typing import Any, Callable, Dict, Optional, Tuple

import torch

HEADER = struct.Struct(">Q")
MAX_MESSAGE = 1 << 36  # 64 GiB: far above any tensor we send; a garbled header is caught before allocating
CANDIDATE_FILE = "candidate.py"
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16, "int64": torch.int64}


def encode(message: Dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(message, buf)
    data = buf.getvalue()
    return HEADER.pack(len(data)) + data


def decode(data: bytes) -> Dict[str, Any]:
    """weights_only: plain containers, strings, numbers and tensors only, in both directions."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def read_exact(stream, n: int) -> Optional[bytes]:
    chunks, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def torch_dtype_name(dtype: torch.dtype) -> str:
    """'float32', 'bfloat16', ...: the keys of DTYPES."""
    return str(dtype).replace("torch.", "")


# ------------------------------------------------------------------------------------ what requests mean
# The calls behind the `train` and `grad_mode` requests. The worker runs them on the candidate, the harness
# on our ModelNew and on the reference Model (float64 and eager), so every subject is judged on the same
# calls. Only torch here: the worker imports this module.
GRAD_MODES = ("accumulate", "autograd_grad", "sum", "expanded", "transposed")


def _grads(model: torch.nn.Module, xx: torch.Tensor) -> Dict[str, Optional[torch.Tensor]]:
    """The gradients after a backward, by name: 'x' and the module's parameter names."""
    out = {"x": xx.grad}
    out.update({n: p.grad for n, p in model.named_parameters()})
    return out


def train_calls(model: torch.nn.Module, xs, targets, steps: int, lr: float, momentum: float):
    """`steps` steps of torch.optim.SGD with momentum on ONE module, its parameters updated in place (so a
    cache keyed on storage or call count goes stale), cycling through the batches `xs`/`targets`;
    loss = mean((y − t)²). Returns the loss of each step, taken before its update."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    losses = []
    threads = torch.get_num_threads()
    if xs[0].device.type == "cpu":
        # Small GEMMs on the CPU: intra-op threads add only synchronisation, which on a loaded 2-core
        # machine made these steps ~10x slower than one thread.
        torch.set_num_threads(1)
    try:
        for i in range(int(steps)):
            x, t = xs[i % len(xs)], targets[i % len(targets)]
            opt.zero_grad(set_to_none=True)
            loss = ((model(x) - t) ** 2).mean()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        torch.set_num_threads(threads)
    return losses


def grad_mode_calls(model: torch.nn.Module, mode: str, x: torch.Tensor, grad_y: Optional[torch.Tensor]):
    """Backward calls a plain forward + backward does not make, on `model` (grads zeroed first):
    'accumulate'    y = f(x) twice with grad_y[0] then grad_y[1], nothing zeroed between: .grad holds the sum;
    'autograd_grad' torch.autograd.grad(f(x), (x, *parameters), grad_y): .grad must stay empty;
    'sum'           f(x).sum().backward(): the upstream gradient is one autograd expanded;
    'expanded'      f(x).backward(grad_y.expand(y.shape)), grad_y of shape (1, out_features);
    'transposed'    f(x).backward(grad_y.t()), grad_y of shape (out_features, batch): not contiguous.
    Returns y (the last call's), the gradients by name ('x' and the module's parameter names) and facts:
    'grad_written' (autograd_grad: which .grad were filled anyway). grad_y itself is the caller's to check:
    a backward must leave its upstream gradient as it was."""
    if mode not in GRAD_MODES:
        raise ValueError(f"unknown grad mode {mode!r}: expected one of {', '.join(GRAD_MODES)}")
    model.zero_grad(set_to_none=True)
    params = list(model.named_parameters())
    xx = x.detach().clone().requires_grad_()
    facts: Dict[str, Any] = {}
    if mode == "accumulate":
        for g in grad_y:
            y = model(xx)
            y.backward(g)
    elif mode == "autograd_grad":
        y = model(xx)
        got = torch.autograd.grad(y, [xx] + [p for _, p in params], grad_y, allow_unused=True)
        facts["grad_written"] = (["x"] if xx.grad is not None else []) + [n for n, p in params if p.grad is not None]
        grads = {"x": got[0]}
        grads.update({n: g for (n, _), g in zip(params, got[1:])})
        return y, grads, facts
    else:
        y = model(xx)
        if mode == "sum":
            y.sum().backward()
        elif mode == "expanded":
            y.backward(grad_y.expand(y.shape))
        else:
            y.backward(grad_y.t())
    return y, _grads(model, xx), facts


# The runs behind the compat checks (verify/compat.py): the worker runs them on the candidate, the builtin
# runner on our ModelNew. What they return beside outputs and gradients ("facts") is the subject's own
# account; the harness re-derives what it can from the tensors (RemoteRunner.compat).
COMPAT_MODES = ("compile", "autocast:bf16", "autocast:fp16", "cuda_graph", "serialization", "no_grad",
                "inference_mode")


def load_kwargs() -> Dict[str, Any]:
    """torch.load's safe mode where it exists (weights_only from torch 1.13; its default changed in 2.6)."""
    return {"weights_only": True} if "weights_only" in inspect.signature(torch.load).parameters else {}


def _forward_backward(fn, model, x, grad_y):
    """y = fn(x) (fn: the model or a compiled wrapper of it); with grad_y also the gradients by name."""
    xx = x.detach().clone().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    y = fn(xx)
    if grad_y is None:
        return y.detach(), None
    y.backward(grad_y.to(y.dtype))
    return y.detach(), _grads(model, xx)


def _cuda_graph(model, xs):
    """Capture model(static_x) once (static shapes), replay for each xs[i] copied into static_x."""
    if xs.device.type != "cuda":
        raise NotImplementedError("CUDA graphs need a CUDA device")
    static_x = torch.zeros_like(xs[0])
    with torch.no_grad():
        side = torch.cuda.Stream(xs.device)
        side.wait_stream(torch.cuda.current_stream(xs.device))
        with torch.cuda.stream(side):  # warm-up off the capture stream, as the CUDA graph docs prescribe
            for _ in range(3):
                model(static_x)
        torch.cuda.current_stream(xs.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_y = model(static_x)
        outs = []
        for x in xs:
            static_x.copy_(x)
            graph.replay()
            outs.append(static_y.clone())
    torch.cuda.synchronize(xs.device)
    return torch.stack(outs), None


def compat_calls(model: torch.nn.Module, mode: str, x: torch.Tensor, grad_y: Optional[torch.Tensor],
                 fresh: Callable[[], torch.nn.Module], backend: str = "inductor"
                 ) -> Tuple[torch.Tensor, Optional[Dict[str, Any]], Dict[str, Any]]:
    """`model` (its state loaded, in x's dtype and device) run under one of COMPAT_MODES; y, grads by name, facts.

    'compile'        torch.compile(fullgraph=True, backend=backend), forward (+ backward with grad_y); where
                     fullgraph raises, facts['graph_break'] says why and the graph-breaking compile runs.
    'autocast:bf16|fp16'  the fp32 module under torch.autocast(x's device type); backward outside it.
    'cuda_graph'     x is (trials, batch, in): the forward captured once, replayed per trial; y stacked.
    'serialization'  state_dict through torch.save/torch.load into `fresh()` (another init); y is the loaded
                     module's output, facts['y_before'] the saved one's, 'state_equal', 'outputs_equal'.
    'no_grad' / 'inference_mode'  forward only; facts 'grad_fn', 'requires_grad', 'is_inference',
                     'retained_bytes' (CUDA: allocator growth with y alive), 'y_bytes'.
    """
    facts: Dict[str, Any] = {}
    if mode == "compile":
        from torch import _dynamo as dynamo
        facts["backend"] = backend
        dynamo.reset()  # fresh cache: no recompile limit carried over from another check
        try:
            try:
                return _forward_backward(torch.compile(model, fullgraph=True, backend=backend), model, x,
                                         grad_y) + (facts,)
            except Exception as exc:  # noqa: BLE001 - a graph break is a finding; the default compile runs next
                facts["graph_break"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                dynamo.reset()
                return _forward_backward(torch.compile(model, backend=backend), model, x, grad_y) + (facts,)
        finally:
            dynamo.reset()
    if mode.startswith("autocast:"):
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}[mode.split(":", 1)[1]]
        xx = x.detach().clone().requires_grad_(grad_y is not None)
        with torch.autocast(device_type=x.device.type, dtype=amp):
            y = model(xx)
        if grad_y is None:
            return y.detach(), None, facts
        y.backward(grad_y.to(y.dtype))  # outside the autocast region, as the autocast docs prescribe
        return y.detach(), _grads(model, xx), facts
    if mode == "cuda_graph":
        return _cuda_graph(model, x) + (facts,)
    if mode == "serialization":
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        buf.seek(0)
        loaded = torch.load(buf, map_location=x.device, **load_kwargs())
        other = fresh()
        other.load_state_dict(loaded, strict=True)
        a, b = model.state_dict(), other.state_dict()
        facts["state_equal"] = list(a) == list(b) and all(
            a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)
        with torch.no_grad():
            y, y2 = model(x), other(x)
        facts["outputs_equal"] = y.dtype == y2.dtype and torch.equal(y, y2)
        facts["y_before"] = y
        return y2, None, facts
    if mode in ("no_grad", "inference_mode"):
        ctx = torch.no_grad if mode == "no_grad" else torch.inference_mode
        cuda = x.device.type == "cuda"
        with ctx():
            model(x)  # warm-up: cuBLAS workspace and the like are allocated once, not per call
            if cuda:
                torch.cuda.synchronize(x.device)
                before = torch.cuda.memory_allocated(x.device)
            y = model(x)
            if cuda:
                torch.cuda.synchronize(x.device)
                facts["retained_bytes"] = torch.cuda.memory_allocated(x.device) - before
        facts.update(grad_fn=None if y.grad_fn is None else type(y.grad_fn).__name__,
                     requires_grad=bool(y.requires_grad), is_inference=bool(y.is_inference()),
                     y_bytes=y.numel() * y.element_size())
        return (y.clone() if mode == "inference_mode" else y), None, facts
    raise NotImplementedError(f"unknown compat mode {mode!r}")
