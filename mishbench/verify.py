"""`mishbench verify`: checks a ModelNew against the reference Model (DESIGN.md, "CLI contract").

Every check compares against a float64 run of the reference on the same inputs and parameters, and holds
the subject to `max(2·e(eager), c·ε)` where e(eager) is eager PyTorch's own error in the same accuracy class
(metrics.error_bar). The subject is reached only through a `Runner`, so the same checks serve our ModelNew
(BuiltinRunner, in this process) and an untrusted candidate (run in its own process by candidate.py).
"""
import random
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import envinfo, ops
from .checks import Check, Report
from .metrics import allclose_kernelbench, error_bar, max_abs_err, mismatch_summary, rel_err
from .model import ModelNew
from .precision import (accuracy_class, dtype_name, eager_matmul_mode, resolve_precision)
from .reference import Model
from .shapes import KERNELBENCH, ODD_SIZES, Size

State = "OrderedDict[str, torch.Tensor]"
GRAD_NAMES = ("x", "linear.weight", "linear.bias")


def _grads(model, x) -> Dict[str, torch.Tensor]:
    """The gradients after a backward, by name (GRAD_NAMES), for our ModelNew and the reference alike."""
    return {"x": x.grad, "linear.weight": model.linear.weight.grad, "linear.bias": model.linear.bias.grad}


class Runner:
    """What the checks need from the subject under test. Tensors cross this boundary, modules do not."""

    subject = "builtin"

    def impl(self, device: torch.device) -> str:
        raise NotImplementedError

    def precision(self, dtype: torch.dtype, device: torch.device) -> str:
        raise NotImplementedError

    def init_state(self, size: Size, seed: int) -> State:
        """The subject's state_dict (CPU, as constructed) right after `torch.manual_seed(seed)`."""
        raise NotImplementedError

    def run(self, size: Size, state: State, x: torch.Tensor, grad_y: Optional[torch.Tensor]
            ) -> Tuple[torch.Tensor, Optional[Dict[str, torch.Tensor]]]:
        """Load `state` (strict) in x's dtype/device, compute y = subject(x); with grad_y, backward too.

        Returns y and the gradients by name ('x', 'linear.weight', 'linear.bias').
        """
        raise NotImplementedError

    def call_error(self, size: Size, x: torch.Tensor, param_device: torch.device,
                   param_dtype: torch.dtype) -> Optional[str]:
        """Call the subject (params on param_device/param_dtype) on a bad input: the error text, or None."""
        raise NotImplementedError

    def gradcheck(self, size: Size, device: torch.device) -> Tuple[bool, str]:
        """torch.autograd.gradcheck of the subject in float64 on `device`."""
        raise NotImplementedError

    # --- compiler / runtime compatibility checks (issue 7) ---------------------------------------------
    def compat(self, mode: str, size: Size, state: State, x: torch.Tensor, grad_y: Optional[torch.Tensor] = None
               ) -> Tuple[torch.Tensor, Optional[Dict[str, torch.Tensor]], Dict[str, object]]:
        """Run the subject (state loaded in x's dtype/device) under one of COMPAT_MODES; y, grads, facts.

        'compile': torch.compile(fullgraph=True), forward (+ backward with grad_y). 'autocast:bf16' /
        'autocast:fp16': fp32 module under torch.autocast(x's device type); y in the autocast dtype.
        'cuda_graph': x is (trials, batch, in): capture the forward once, replay per trial; y stacked.
        'serialization': save/load the state_dict through torch.save/torch.load into a fresh module; facts
        'state_equal', 'outputs_equal'. 'no_grad' / 'inference_mode': forward only; facts 'grad_fn',
        'requires_grad', 'is_inference', 'retained_bytes' (CUDA: allocator growth with y alive), 'y_bytes'.
        Raises NotImplementedError where the subject cannot be run that way (the check then skips).
        """
        raise NotImplementedError
    # --- end compiler / runtime compatibility checks (issue 7) -----------------------------------------


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
        return y.detach(), _grads(model, x)

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

    # --- compiler / runtime compatibility checks (issue 7) ---------------------------------------------
    def _fresh(self, size, state, device, dtype):
        model = ModelNew(size.in_features, size.out_features, self._precision).to(device, dtype)
        model.load_state_dict(state, strict=True)
        return model

    def compat(self, mode, size, state, x, grad_y=None):
        model = self._fresh(size, state, x.device, x.dtype)
        facts = {}  # type: Dict[str, object]
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
            return y.detach(), _grads(model, xx), facts
        if mode == "cuda_graph":
            return self._cuda_graph(model, x) + (facts,)
        if mode == "serialization":
            import io
            buf = io.BytesIO()
            torch.save(model.state_dict(), buf)
            buf.seek(0)
            kwargs = {"weights_only": True} if "weights_only" in _load_params() else {}
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
    # --- end compiler / runtime compatibility checks (issue 7) -----------------------------------------


# --- compiler / runtime compatibility checks (issue 7) -------------------------------------------------------
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
    return y.detach(), _grads(model, x)


def _load_params():
    import inspect
    return inspect.signature(torch.load).parameters
# --- end compiler / runtime compatibility checks (issue 7) ---------------------------------------------------


# ---------------------------------------------------------------------------------------------------------
# The reference side: float64 truth and eager PyTorch in the subject's accuracy class.
# ---------------------------------------------------------------------------------------------------------
def reference_run(size: Size, state: State, x: torch.Tensor, grad_y: Optional[torch.Tensor],
                  dtype: torch.dtype, tf32: bool = False):
    """The reference Model with `state` in `dtype` on x's device: y and grads (x, weight, bias)."""
    # Convert first, then load: loading a float64 state into fp32 parameters would round it.
    model = Model(size.in_features, size.out_features).to(x.device, dtype)
    model.load_state_dict(state, strict=True)
    xx = x.detach().to(dtype).clone().requires_grad_(grad_y is not None)
    with eager_matmul_mode(tf32):
        if grad_y is None:
            with torch.no_grad():
                return model(xx), None
        y = model(xx)
        y.backward(grad_y.to(dtype))
    return y.detach(), _grads(model, xx)


def make_inputs(size: Size, kind: str, generator: torch.Generator, device, dtype, lead: Sequence[int] = ()):
    """x for a trial: 'rand' (KernelBench's own torch.rand) or 'randn10' (randn·10: both Mish branches and the
    x > 20 threshold are hit). Drawn on the CPU in float64 so every dtype sees the same values."""
    shape = tuple(lead) + (size.batch, size.in_features) if lead else (size.batch, size.in_features)
    if kind == "rand":
        x = torch.rand(shape, generator=generator, dtype=torch.float64)
    else:
        x = torch.randn(shape, generator=generator, dtype=torch.float64) * 10
    return x.to(device=device, dtype=dtype)


class Compared:
    """Errors of one output against float64 truth, with the bar from eager's own error."""

    def __init__(self, name: str, out, ref64, eager, dtype):
        self.name = name
        self.err = rel_err(out, ref64)
        self.eager_err = rel_err(eager, ref64)
        self.bar = error_bar(self.eager_err, dtype)
        self.max_abs = max_abs_err(out, ref64)
        self.allclose = allclose_kernelbench(out, eager)
        self.ok = self.err <= self.bar
        self.summary = "" if self.ok else mismatch_summary(out, ref64, self.bar)

    def metrics(self) -> Dict[str, object]:
        return {"rel_err": self.err, "bar": self.bar, "eager_rel_err": self.eager_err,
                "max_abs_err": self.max_abs, "allclose_kernelbench": self.allclose}


class Verifier:
    """Runs the checks for one subject, dtype and device into a Report."""

    def __init__(self, runner: Runner, device: torch.device, dtype: torch.dtype, seed: int,
                 sizes: Optional[List[Size]] = None, main_size: Optional[Size] = None,
                 progress: Optional[Callable[[str], None]] = None):
        self.runner, self.device, self.dtype, self.seed = runner, device, dtype, seed
        self.precision = runner.precision(dtype, device)
        self.klass = accuracy_class(self.precision, dtype)
        self.tf32 = self.klass == "tf32"
        if main_size is None:
            main_size = KERNELBENCH if device.type == "cuda" else Size(129, 123, 77)
        self.sizes = sizes or [main_size]
        self.progress = progress or (lambda msg: None)
        self.gen = torch.Generator().manual_seed(seed)

    # -- helpers -------------------------------------------------------------------------------------
    def _compare(self, size: Size, x: torch.Tensor, with_grad: bool, state: Optional[State] = None):
        """Run subject, float64 reference and eager on one input. Returns a list of Compared."""
        if state is None:
            state = self.runner.init_state(size, self.seed)
        grad_y = None
        if with_grad:
            out_shape = tuple(x.shape[:-1]) + (size.out_features,)
            grad_y = torch.randn(out_shape, generator=self.gen, dtype=torch.float64).to(self.device, self.dtype)
        y, grads = self.runner.run(size, state, x, grad_y)
        y64, g64 = reference_run(size, state, x, grad_y, torch.float64)
        ye, ge = reference_run(size, state, x, grad_y, self.dtype, tf32=self.tf32)
        out = [Compared("y", y, y64, ye, self.dtype)]
        if with_grad:
            for name in GRAD_NAMES:
                got = (grads or {}).get(name)
                if got is None:
                    got = torch.full_like(g64[name], float("nan"))
                label = {"x": "dx", "linear.weight": "dW", "linear.bias": "db"}[name]
                out.append(Compared(label, got, g64[name], ge[name], self.dtype))
        return out

    @staticmethod
    def _verdict(name: str, results: List[Tuple[str, "Compared"]]) -> Check:
        worst = max(results, key=lambda r: r[1].err / r[1].bar if r[1].bar else float("inf"))
        label, cmp = worst
        metrics = dict(cmp.metrics())
        metrics["worst"] = f"{label} {cmp.name}"
        bad = [(lbl, c) for lbl, c in results if not c.ok]
        if bad:
            lbl, c = bad[0]
            return Check(name, "fail", f"{lbl} {c.name}: rel_err {c.err:.3g} > bar {c.bar:.3g} "
                                       f"(eager {c.eager_err:.3g}); {c.summary}"
                         + (f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""), metrics)
        return Check(name, "pass", f"worst {label} {cmp.name}: rel_err {cmp.err:.3g} <= bar {cmp.bar:.3g} "
                                   f"(eager {cmp.eager_err:.3g}, max_abs {cmp.max_abs:.3g})", metrics)

    def _guard(self, name: str, fn: Callable[[], Check]) -> Check:
        self.progress(name)
        try:
            return fn()
        except torch.cuda.OutOfMemoryError as exc:  # a size too large for this card
            return Check(name, "skip", f"out of memory: {str(exc).splitlines()[0]}")
        except Exception as exc:  # noqa: BLE001 - a crashing subject is a finding, not a traceback
            return Check(name, "error", f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")

    # -- checks --------------------------------------------------------------------------------------
    def check_build(self) -> Check:
        impl = self.runner.impl(self.device)
        if self.device.type != "cuda":
            return Check("build", "warn", f"CUDA kernels not exercised: impl={impl} on {self.device.type} "
                                          "(run on a CUDA GPU to verify the kernels)")
        if impl == "cuda":
            return Check("build", "pass", "fused CUDA extension built and loaded")
        return Check("build", "fail", f"CUDA extension unavailable, running impl={impl}: "
                                      f"{ops.extension_reason() or 'unknown reason'}")

    def check_forward(self) -> Check:
        results = []
        for size in self.sizes:
            for kind in ("rand", "randn10"):
                x = make_inputs(size, kind, self.gen, self.device, self.dtype)
                results += [(f"{size} {kind}", c) for c in self._compare(size, x, with_grad=False)]
        return self._verdict("forward", results)

    def check_backward(self) -> Check:
        results = []
        for size in self.sizes:
            x = make_inputs(size, "randn10", self.gen, self.device, self.dtype)
            results += [(f"{size}", c) for c in self._compare(size, x, with_grad=True)]
        return self._verdict("backward", results)

    def check_param_count(self) -> Check:
        size = self.sizes[0]
        ref = Model(size.in_features, size.out_features)
        want = OrderedDict((k, tuple(v.shape)) for k, v in ref.state_dict().items())
        got = OrderedDict((k, tuple(v.shape)) for k, v in self.runner.init_state(size, self.seed).items())
        n_want = sum(p.numel() for p in ref.parameters())
        n_got = sum(int(torch.Size(s).numel()) for s in got.values())
        metrics = {"expected": n_want, "got": n_got}
        if got != want:
            extra = sorted(set(got) - set(want))
            missing = sorted(set(want) - set(got))
            shapes = [k for k in want if k in got and got[k] != want[k]]
            why = "; ".join(filter(None, [extra and f"extra {extra}", missing and f"missing {missing}",
                                          shapes and f"shape differs for {shapes}"]))
            return Check("param_count", "fail", f"state differs from Model's: {why} "
                                                f"({n_got} vs {n_want} elements)", metrics)
        return Check("param_count", "pass", f"{n_got} parameters in {list(got)}, as in Model", metrics)

    def check_init(self) -> Check:
        size = Size(7, 13, 5) if self.sizes[0].in_features * self.sizes[0].out_features > 2**24 else self.sizes[0]
        torch.manual_seed(self.seed)
        want = Model(size.in_features, size.out_features).state_dict()
        got = self.runner.init_state(size, self.seed)
        diffs = [k for k in want if k not in got or got[k].shape != want[k].shape or not torch.equal(got[k], want[k])]
        if diffs:
            return Check("init", "fail", f"under the same seed, {diffs} differ from Model's initial values "
                                         "(draw the RNG as nn.Linear does)")
        return Check("init", "pass", "same seed gives bit-identical initial parameters to Model")

    def check_state_dict(self) -> Check:
        size = Size(7, 13, 5)
        torch.manual_seed(self.seed + 1)
        ref_state = Model(size.in_features, size.out_features).state_dict()
        x = make_inputs(size, "randn10", self.gen, self.device, self.dtype)
        # Model -> subject: the subject must accept Model's state strictly and compute with it.
        cmp = self._compare(size, x, with_grad=False, state=ref_state)[0]
        if not cmp.ok:
            return Check("state_dict", "fail", f"with Model's state loaded, y rel_err {cmp.err:.3g} > bar {cmp.bar:.3g}")
        # subject -> Model: Model must accept the subject's state strictly.
        try:
            Model(size.in_features, size.out_features).load_state_dict(self.runner.init_state(size, self.seed), strict=True)
        except RuntimeError as exc:
            return Check("state_dict", "fail", f"Model cannot load the subject's state_dict: {str(exc).splitlines()[0]}")
        return Check("state_dict", "pass", "state_dict loads strictly both ways and gives Model's outputs", cmp.metrics())

    def check_gradcheck(self) -> Check:
        size = Size(3, 5, 4)
        ok, why = self.runner.gradcheck(size, self.device)
        if not ok:
            return Check("gradcheck", "fail", f"float64 gradcheck at {size} failed: {why}")
        return Check("gradcheck", "pass", f"float64 gradcheck at {size} on {self.device.type} "
                                          f"(impl={self.runner.impl(self.device)})")

    def check_training(self, steps: int = 20, lr: float = 0.1) -> Check:
        size = Size(64, 32, 16)
        state = self.runner.init_state(size, self.seed)
        x = make_inputs(size, "randn10", self.gen, self.device, self.dtype) / 10
        target = torch.randn(size.batch, size.out_features, generator=self.gen, dtype=torch.float64)

        def train(run: Callable, dtype: torch.dtype):
            params = OrderedDict((k, v.detach().to(self.device, dtype).clone()) for k, v in state.items())
            tgt = target.to(self.device, dtype)
            losses = []
            for _ in range(steps):
                y, grads = run(params, x.to(dtype))
                # loss = mean((y − t)²); dL/dy = 2(y − t)/numel, handed to the subject as its upstream grad.
                losses.append(float(((y.double() - tgt.double()) ** 2).mean()))
                grad_y = (2 * (y.detach() - tgt) / y.numel()).to(dtype)
                _, grads = run(params, x.to(dtype), grad_y)
                for k in params:
                    params[k] = params[k] - lr * grads[k].to(dtype)
            return losses, params

        def subject(params, xx, grad_y=None):
            return self.runner.run(size, params, xx, grad_y)

        def eager(dtype):
            def fn(params, xx, grad_y=None):
                return reference_run(size, params, xx, grad_y, dtype, tf32=self.tf32)
            return fn

        losses, params = train(subject, self.dtype)
        l64, p64 = train(eager(torch.float64), torch.float64)
        le, pe = train(eager(self.dtype), self.dtype)
        results = [("final", Compared(k, params[k], p64[k], pe[k], self.dtype)) for k in params]
        results.append(("losses", Compared("loss", torch.tensor(losses), torch.tensor(l64), torch.tensor(le), self.dtype)))
        check = self._verdict("training", results)
        check.metrics.update({"loss_first": losses[0], "loss_last": losses[-1], "steps": steps})
        if check.status == "pass" and not losses[-1] < losses[0]:
            return Check("training", "fail", f"loss did not decrease over {steps} SGD steps "
                                             f"({losses[0]:.4g} -> {losses[-1]:.4g})", check.metrics)
        if check.status == "pass":
            check.detail = f"{steps} SGD steps track float64 Model: loss {losses[0]:.4g} -> {losses[-1]:.4g}; " + check.detail
        return check

    def check_shapes(self) -> Check:
        sizes = list(ODD_SIZES)
        if self.device.type == "cuda" and KERNELBENCH not in self.sizes:
            sizes.append(KERNELBENCH)
        results = []
        for size in sizes:
            x = make_inputs(size, "randn10", self.gen, self.device, self.dtype)
            results += [(str(size), c) for c in self._compare(size, x, with_grad=True)]
        # Leading batch dims and a 1-D input, as nn.Linear accepts them.
        size = Size(5, 13, 7)
        x = make_inputs(size, "randn10", self.gen, self.device, self.dtype, lead=(2, 3))
        results += [("2x3x5x13x7", c) for c in self._compare(size, x, with_grad=True)]
        x1 = make_inputs(Size(1, 13, 7), "randn10", self.gen, self.device, self.dtype)[0]
        results += [("1-D (13,)->(7,)", c) for c in self._compare(Size(1, 13, 7), x1, with_grad=True)]
        check = self._verdict("shapes", results)
        check.detail = f"{len(sizes) + 2} shapes: " + check.detail
        return check

    def check_bad_inputs(self) -> Check:
        size = Size(4, 6, 3)
        dev, dt = self.device, self.dtype
        cases = [
            ("wrong in_features", torch.randn(4, 7, device=dev, dtype=dt), dev, dt, ("in_features", "7", "shape")),
            ("0-dim input", torch.tensor(1.0, device=dev, dtype=dt), dev, dt, ("dim", "0D", "1D", "scalar")),
            ("integer dtype", torch.ones(4, 6, device=dev, dtype=torch.int64), dev, dt, ("dtype", "Long", "int")),
            ("dtype mismatch", torch.randn(4, 6, device=dev, dtype=torch.float64 if dt != torch.float64 else torch.float32),
             dev, dt, ("dtype", "Double", "Float")),
        ]
        other = torch.device("cpu") if dev.type == "cuda" else (torch.device("cuda") if torch.cuda.is_available() else None)
        skipped = []
        if other is not None:
            cases.append(("device mismatch", torch.randn(4, 6, device=other, dtype=dt), dev, dt, ("device", "cuda", "cpu")))
        else:
            skipped.append("device mismatch (needs a CUDA device)")
        problems = []
        for label, x, pdev, pdt, words in cases:
            msg = self.runner.call_error(size, x, pdev, pdt)
            if msg is None:
                problems.append(f"{label}: no error raised")
            elif not any(w.lower() in msg.lower() for w in words):
                problems.append(f"{label}: error does not name the problem ({msg[:120]!r})")
        # NaN / ±inf inputs propagate exactly as in the reference.
        x = make_inputs(Size(16, 6, 3), "randn10", self.gen, dev, dt)
        x[0, 0], x[1, 1], x[2, 2] = float("nan"), float("inf"), -float("inf")
        state = self.runner.init_state(Size(16, 6, 3), self.seed)
        y, _ = self.runner.run(Size(16, 6, 3), state, x, None)
        ye, _ = reference_run(Size(16, 6, 3), state, x, None, dt, tf32=self.tf32)
        if not torch.equal(torch.isnan(y), torch.isnan(ye)) or not torch.equal(torch.isinf(y), torch.isinf(ye)):
            problems.append(f"NaN/inf inputs: {int((torch.isnan(y) != torch.isnan(ye)).sum())} NaN and "
                            f"{int((torch.isinf(y) != torch.isinf(ye)).sum())} inf positions differ from Model's")
        if problems:
            return Check("bad_inputs", "fail", "; ".join(problems))
        detail = f"{len(cases)} bad inputs each raise an error naming the problem; NaN/inf propagate as in Model"
        if skipped:
            detail += f" (not tried: {', '.join(skipped)})"
        return Check("bad_inputs", "pass", detail)

    # --- compiler / runtime compatibility checks (issue 7) ---------------------------------------------
    def _compat_size(self) -> Size:
        # Odd and small: torch.compile on a 2-core CPU spends its time compiling, not computing.
        return Size(257, 1000, 777) if self.device.type == "cuda" else Size(33, 20, 12)

    def _compat(self, name: str, mode: str, size: Size, state: State, x, grad_y=None):
        """The runner's compat run, or a skip Check when this subject cannot be run that way."""
        try:
            return self.runner.compat(mode, size, state, x, grad_y)
        except NotImplementedError as exc:
            return Check(name, "skip", f"{mode} runs are not supported for subject {self.runner.subject!r}"
                                       + (f": {exc}" if str(exc) else ""))

    def _truth_vs(self, size, state, x, grad_y, got_y, got_grads, dtype, eager_ctx=None) -> List[Tuple[str, "Compared"]]:
        """Compare y (and grads) with float64 Model, the bar from eager Model in `dtype` (under eager_ctx)."""
        y64, g64 = reference_run(size, state, x, grad_y, torch.float64)
        if eager_ctx is None:
            ye, ge = reference_run(size, state, x, grad_y, dtype, tf32=self.tf32)
        else:
            ye, ge = eager_ctx()
        out = [("y", Compared("y", got_y, y64, ye, dtype))]
        for name in (GRAD_NAMES if grad_y is not None else ()):
            got = (got_grads or {}).get(name)
            got = torch.full_like(g64[name], float("nan")) if got is None else got
            label = {"x": "dx", "linear.weight": "dW", "linear.bias": "db"}[name]
            out.append((label, Compared(label, got, g64[name], ge[name], dtype)))
        return out

    def check_compile(self) -> Check:
        if not ops.HAS_TORCH_LIBRARY_FAKE:  # torch < 2.4
            return Check("compile", "skip", f"torch {torch.__version__}: the compile check needs torch >= 2.4 "
                                            "(torch.library.register_fake for the extension op)")
        size = self._compat_size()
        state = self.runner.init_state(size, self.seed)
        x = make_inputs(size, "randn10", self.gen, self.device, self.dtype)
        grad_y = torch.randn(size.batch, size.out_features, generator=self.gen, dtype=torch.float64).to(x)
        got = self._compat("compile", "compile", size, state, x, grad_y)
        if isinstance(got, Check):
            return got
        y, grads, _ = got
        ye, ge = self.runner.run(size, state, x, grad_y)  # eager ModelNew, for the record
        results = self._truth_vs(size, state, x, grad_y, y, grads, self.dtype)
        check = self._verdict("compile", results)
        diffs = [rel_err(y, ye)] + [rel_err(grads[k], ge[k]) for k in GRAD_NAMES if grads and ge and
                                     grads.get(k) is not None and ge.get(k) is not None]
        check.metrics["max_rel_diff_vs_eager_modelnew"] = max(diffs)
        check.detail = (f"torch.compile(fullgraph=True) fwd+bwd at {size} on {self.device.type} "
                        f"(impl={self.runner.impl(self.device)}), max rel diff vs eager ModelNew {max(diffs):.3g}; "
                        + check.detail)
        return check

    def check_autocast(self) -> Check:
        size = self._compat_size()
        state = self.runner.init_state(size, self.seed)
        amps = [("bf16", torch.bfloat16)] + ([("fp16", torch.float16)] if self.device.type == "cuda" else [])
        # Autocast acts on fp32 models and inputs, whatever --dtype says.
        x = make_inputs(size, "randn10", self.gen, self.device, torch.float32) / 10
        grad_y = torch.randn(size.batch, size.out_features, generator=self.gen, dtype=torch.float64).to(x)
        results, dtypes = [], []
        for name, amp in amps:
            got = self._compat("autocast", "autocast:" + name, size, state, x, grad_y)
            if isinstance(got, Check):
                return got
            y, grads, _ = got

            def eager_ctx(amp=amp):
                ref = Model(size.in_features, size.out_features)
                ref.load_state_dict(state, strict=True)
                ref = ref.to(self.device, torch.float32)
                xx = x.detach().clone().requires_grad_(True)
                with torch.autocast(device_type=self.device.type, dtype=amp):
                    ye = ref(xx)
                ye.backward(grad_y.to(ye.dtype))
                return ye.detach(), _grads(ref, xx)

            ye, _ = eager_ctx()
            if y.dtype != ye.dtype:
                return Check("autocast", "fail", f"under torch.autocast({self.device.type}, {name}) ModelNew returns "
                                                 f"{y.dtype} but Model returns {ye.dtype}")
            dtypes.append(f"{name}->{dtype_name(y.dtype)}")
            results += [(f"{name} {lbl}", c) for lbl, c in
                        self._truth_vs(size, state, x, grad_y, y, grads, amp, eager_ctx=eager_ctx)]
        check = self._verdict("autocast", results)
        check.detail = (f"torch.autocast({self.device.type}) at {size}: output dtype as Model's "
                        f"({', '.join(dtypes)}); " + check.detail)
        return check

    def check_cuda_graph(self) -> Check:
        if self.device.type != "cuda":
            return Check("cuda_graph", "skip", "CUDA graph capture needs a CUDA GPU")
        size = self._compat_size()
        state = self.runner.init_state(size, self.seed)
        xs = make_inputs(size, "randn10", self.gen, self.device, self.dtype, lead=(3,))
        got = self._compat("cuda_graph", "cuda_graph", size, state, xs)
        if isinstance(got, Check):
            return got
        ys, _, _ = got
        results, identical = [], 0
        for i in range(xs.shape[0]):
            ye, _ = self.runner.run(size, state, xs[i], None)
            identical += int(torch.equal(ys[i], ye))
            results += [(f"replay {i}", c) for _, c in self._truth_vs(size, state, xs[i], None, ys[i], None, self.dtype)]
        check = self._verdict("cuda_graph", results)
        check.metrics["replays_identical_to_eager"] = identical
        check.detail = (f"forward captured once at {size}, replayed on {xs.shape[0]} new inputs "
                        f"({identical}/{xs.shape[0]} bit-identical to eager ModelNew); " + check.detail)
        return check

    def check_serialization(self) -> Check:
        size = self._compat_size()
        state = self.runner.init_state(size, self.seed)
        x = make_inputs(size, "randn10", self.gen, self.device, self.dtype)
        got = self._compat("serialization", "serialization", size, state, x)
        if isinstance(got, Check):
            return got
        _, _, facts = got
        how = "torch.save -> torch.load" + ("(weights_only=True)" if "weights_only" in _load_params() else "")
        if not facts.get("state_equal"):
            return Check("serialization", "fail", f"state_dict through {how} does not round-trip exactly "
                                                  "(keys, dtypes, shapes or values differ)", facts)
        if not facts.get("outputs_equal"):
            return Check("serialization", "fail", f"a module loaded through {how} gives different outputs "
                                                  "from the one saved", facts)
        return Check("serialization", "pass", f"state_dict round-trips exactly through {how}; the loaded "
                                              "module's outputs are bit-identical", facts)

    def check_inference_mode(self) -> Check:
        size = Size(1024, 512, 1024) if self.device.type == "cuda" else self._compat_size()
        state = self.runner.init_state(size, self.seed)
        x = make_inputs(size, "randn10", self.gen, self.device, self.dtype)
        problems, results, notes = [], [], []
        for mode in ("no_grad", "inference_mode"):
            got = self._compat("inference_mode", mode, size, state, x)
            if isinstance(got, Check):
                return got
            y, _, facts = got
            if facts.get("grad_fn") is not None or facts.get("requires_grad"):
                problems.append(f"{mode}: the output has an autograd graph ({facts.get('grad_fn')}), so z is kept")
            if mode == "inference_mode" and not facts.get("is_inference"):
                problems.append("inference_mode: the output is not an inference tensor")
            retained, y_bytes = facts.get("retained_bytes"), int(facts.get("y_bytes") or 0)
            if retained is not None:
                # z has y's shape and dtype: keeping it would at least double what stays allocated.
                if retained >= 2 * y_bytes:
                    problems.append(f"{mode}: {retained} bytes stay allocated after the forward, y is {y_bytes} "
                                    "(z kept?)")
                notes.append(f"{mode} keeps {retained} B (y {y_bytes} B)")
            results += [(mode, c) for _, c in self._truth_vs(size, state, x, None, y, None, self.dtype)]
        check = self._verdict("inference_mode", results)
        if problems:
            return Check("inference_mode", "fail", "; ".join(problems), check.metrics)
        if check.status != "pass":
            return check
        memory = "; ".join(notes) if notes else "allocator growth is measured on CUDA only"
        check.detail = (f"no_grad and inference_mode at {size}: no autograd graph (grad_fn None), so nothing "
                        f"holds z after the call; {memory}; " + check.detail)
        return check

    def _compat_checks(self) -> List[Tuple[str, Callable[[], Check]]]:
        return [("compile", self.check_compile), ("autocast", self.check_autocast),
                ("cuda_graph", self.check_cuda_graph), ("serialization", self.check_serialization),
                ("inference_mode", self.check_inference_mode)]
    # --- end compiler / runtime compatibility checks (issue 7) -----------------------------------------

    def run_all(self, report: Report) -> Report:
        for name, fn in [("build", self.check_build), ("forward", self.check_forward),
                         ("backward", self.check_backward), ("param_count", self.check_param_count),
                         ("init", self.check_init), ("state_dict", self.check_state_dict),
                         ("gradcheck", self.check_gradcheck), ("training", self.check_training),
                         ("shapes", self.check_shapes), ("bad_inputs", self.check_bad_inputs)
                         ] + self._compat_checks():  # issue 7
            report.add(self._guard(name, fn))
        return report


def new_seed() -> int:
    """A per-run seed nobody can predict; recorded in the report so `--seed` reproduces a failure."""
    return random.SystemRandom().randrange(2**31)


def resolve_device(name: str) -> torch.device:
    """'auto' | 'cpu' | 'cuda' (or 'cuda:N'); ValueError naming the value when it cannot be had."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}: expected auto, cpu or cuda") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}: expected auto, cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but no CUDA GPU is visible")
    return device


def verify(device: torch.device, dtype: torch.dtype, precision: Optional[str] = None, seed: Optional[int] = None,
           sizes: Optional[List[Size]] = None, runner: Optional[Runner] = None,
           progress: Optional[Callable[[str], None]] = None) -> Report:
    """Run every check for one subject (our ModelNew unless `runner` says otherwise)."""
    seed = new_seed() if seed is None else seed
    runner = runner or BuiltinRunner(precision)
    verifier = Verifier(runner, device, dtype, seed, sizes=sizes, progress=progress)
    report = Report(device=device.type, dtype=dtype_name(dtype), precision=verifier.precision,
                    impl=runner.impl(device), seed=seed, subject=runner.subject,
                    gpu=envinfo.gpu_name(device) if device.type == "cuda" else "", env=envinfo.versions())
    return verifier.run_all(report)
