"""The wire protocol between the harness and the candidate's worker: length-prefixed `torch.save` of a dict
of tensors, strings and numbers, read with `weights_only=True` in both directions (so a reply cannot run
code in the harness). Tensors cross on the CPU. Imports torch only: the worker may import nothing else.
"""
import io
import struct
from typing import Any, Dict, Optional

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
    grads = {"x": xx.grad}
    grads.update({n: p.grad for n, p in params})
    return y, grads, facts
