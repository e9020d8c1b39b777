"""Our ModelNew as a verify subject: a `truth.Runner` that runs it in this process."""
from typing import Optional

import torch

from mishbench.candidate.protocol import compat_calls, grad_mode_calls, train_calls
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

        def other():
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(12345)  # a different init, so only the load can make them equal
                return ModelNew(size.in_features, size.out_features, self._precision).to(x.device, x.dtype)

        y, grads, facts = compat_calls(model, mode, x, grad_y, other)
        facts.pop("y_before", None)
        return y, grads, facts
