"""Our ModelNew as a verify subject: a `truth.Runner` that runs it in this process."""
import inspect
import io
from typing import Dict, Optional

import torch

from mishbench.candidate.protocol import grad_mode_calls, train_calls
from mishbench.op import ops
from mishbench.op.model import ModelNew
from mishbench.op.precision import resolve_precision
from mishbench.truth import Runner, grads_by_name

class BuiltinRunner(Runner):
    """Our ModelNew, in this process."""

    def __init__(self, precision: Optional[str] = None):
        self._precision = precision
        self._modules = {}

    def impl(self, device):
        return ModelNew(1, 1, self._precision).implementation(device)

    def precision(self, dtype, device):
        return resolve_precision(self._precision, dtype, device)

    def init_state(self, size, seed):
        torch.manual_seed(seed)
        return ModelNew(size.in_features, size.out_features, self._precision).state_dict()

    def _module(self, size, state, device, dtype):
        # One module per (size, device, dtype), refilled from `state` on every call: constructing an
        # 8192×8192 nn.Linear costs ~0.5 s of CPU init, refilling it a copy.
        key = (size, str(device), dtype)
        model = self._modules.get(key)
        if model is None:
            model = ModelNew(size.in_features, size.out_features, self._precision).to(device, dtype)
            self._modules = {key: model}  # keep one: KernelBench-size modules are 256 MB each
        model.load_state_dict(state, strict=True)
        model.zero_grad(set_to_none=True)
        return model

    def run(self, size, state, x, grad_y):
        model = self._module(size, state, x.device, x.dtype)
        x = x.detach().clone().requires_grad_(grad_y is not None)
        if grad_y is None:
            with torch.no_grad():
                return model(x), None
        y = model(x)
        y.backward(grad_y)
        return y.detach(), grads_by_name(model, x)

    def train(self, size, state, xs, targets, steps, lr, momentum):
        model = self._fresh(size, state, xs[0].device, xs[0].dtype)
        losses = train_calls(model, list(xs), list(targets), steps, lr, momentum)
        return losses, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def grad_mode(self, mode, size, state, x, grad_y):
        model = self._fresh(size, state, x.device, x.dtype)
        sent = None if grad_y is None else grad_y.detach().clone()  # the subject's copy: the judge keeps grad_y
        y, grads, facts = grad_mode_calls(model, mode, x, sent)
        facts["upstream_after"] = sent
        return y.detach(), grads, facts

    def call_error(self, size, x, param_device, param_dtype):
        model = ModelNew(size.in_features, size.out_features, self._precision).to(param_device, param_dtype)
        try:
            with torch.no_grad():
                model(x)
        except Exception as exc:  # noqa: BLE001 - the point is to see what the subject raises
            return f"{type(exc).__name__}: {exc}"
        return None

    def gradcheck(self, size, device):
        gen = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(shape, generator=gen, dtype=torch.float64).to(device).requires_grad_()
                   for shape in ((size.batch, size.in_features), (size.out_features, size.in_features),
                                 (size.out_features,)))
        precision = resolve_precision(self._precision, torch.float64, device)
        try:
            ok = torch.autograd.gradcheck(lambda *a: ops.linear_mish_mish(*a, precision), (x, w, b),
                                          eps=1e-6, atol=1e-6, rtol=1e-5, raise_exception=True)
        except Exception as exc:  # noqa: BLE001 - gradcheck reports through its exception
            return False, " ".join(str(exc).split())[:300]
        return bool(ok), ""

    # -- compiler / runtime compatibility runs (the checks are in compat.py) --
    def _fresh(self, size, state, device, dtype):
        model = ModelNew(size.in_features, size.out_features, self._precision).to(device, dtype)
        model.load_state_dict(state, strict=True)
        return model

    def compat(self, mode, size, state, x, grad_y=None):
        model = self._fresh(size, state, x.device, x.dtype)
        facts: Dict[str, object] = {}
        if mode == "compile":
            from torch import _dynamo as dynamo
            dynamo.reset()  # fresh cache: no recompile limit carried over from another check
            try:
                return _forward_backward(torch.compile(model, fullgraph=True), model, x, grad_y) + (facts,)
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
            return y.detach(), grads_by_name(model, xx), facts
        if mode == "cuda_graph":
            return self._cuda_graph(model, x) + (facts,)
        if mode == "serialization":
            buf = io.BytesIO()
            torch.save(model.state_dict(), buf)
            buf.seek(0)
            kwargs = {"weights_only": True} if "weights_only" in load_params() else {}
            loaded = torch.load(buf, map_location=x.device, **kwargs)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(12345)  # a different init, so only the load can make them equal
                other = ModelNew(size.in_features, size.out_features, self._precision).to(x.device, x.dtype)
            other.load_state_dict(loaded, strict=True)
            a, b = model.state_dict(), other.state_dict()
            facts["state_equal"] = list(a) == list(b) and all(
                a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)
            with torch.no_grad():
                y, y2 = model(x), other(x)
            facts["outputs_equal"] = y.dtype == y2.dtype and torch.equal(y, y2)
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
                         requires_grad=y.requires_grad, is_inference=y.is_inference(),
                         y_bytes=y.numel() * y.element_size())
            return y.clone() if mode == "inference_mode" else y, None, facts
        raise NotImplementedError(f"unknown compat mode {mode!r}")

    @staticmethod
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


COMPAT_MODES = ("compile", "autocast:bf16", "autocast:fp16", "cuda_graph", "serialization", "no_grad",
                "inference_mode")


def _forward_backward(fn, model, x, grad_y):
    """y = fn(x) (fn: model or a compiled wrapper of it); with grad_y also the gradients by name."""
    x = x.detach().clone().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    y = fn(x)
    if grad_y is None:
        return y, None
    y.backward(grad_y.to(y.dtype))
    return y.detach(), grads_by_name(model, x)


def load_params():
    """torch.load's parameters (weights_only exists from torch 1.13; its default changed in 2.6)."""
    return inspect.signature(torch.load).parameters
