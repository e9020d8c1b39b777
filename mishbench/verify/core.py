"""`mishbench verify`: the checks of one subject against the reference Model (DESIGN.md, "CLI contract").

Every check goes through the one judge (truth.py): a float64 run of the reference on the same inputs and
parameters is the truth, and the subject is held to `max(2·e_eager, floor)` where e_eager is eager
PyTorch's own error in the same accuracy class. The subject is reached only through a `truth.Runner`, so
the same checks serve our ModelNew (builtin.BuiltinRunner, in this process) and an untrusted candidate
(candidate.runner.RemoteRunner, in its own process). Compiler and runtime compatibility checks are in
compat.py, training and the autograd contract in training.py.
"""
from collections import OrderedDict
from typing import Callable, List, Optional

import torch

from mishbench import envinfo
from mishbench.op import ops
from mishbench.op.precision import dtype_name
from mishbench.op.reference import Model
from mishbench.schema import Check, Report
from mishbench.shapes import KERNELBENCH, ODD_SIZES, Size
from mishbench.truth import Judge, Runner, guard, new_seed, reference_run, verdict
from mishbench.verify import compat, training
from mishbench.verify.builtin import BuiltinRunner

class Verifier:
    """Runs the checks for one subject, dtype and device into a Report."""

    def __init__(self, runner: Runner, device: torch.device, dtype: torch.dtype, seed: int,
                 sizes: Optional[List[Size]] = None, main_size: Optional[Size] = None,
                 progress: Optional[Callable[[str], None]] = None):
        self.runner, self.device, self.dtype, self.seed = runner, device, dtype, seed
        self.precision = runner.precision(dtype, device)
        if main_size is None:
            main_size = KERNELBENCH if device.type == "cuda" else Size(129, 123, 77)
        self.sizes = sizes or [main_size]
        self.progress = progress or (lambda msg: None)
        self.judge = Judge(device, dtype, seed, self.precision)
        self.gen = self.judge.gen
        self.accuracy, self.tf32 = self.judge.accuracy, self.judge.tf32

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

    def _trial(self, size: Size, kind: str, with_grad: bool, lead=()):
        """One input of `kind` (the 'mixed' extremes solved for the subject's initial state) and its verdicts."""
        state = self.runner.init_state(size, self.seed)
        x = self.judge.inputs(size, kind, lead=lead, state=state)
        return self.judge.compare(self.runner, size, x, with_grad=with_grad, state=state)

    def check_forward(self) -> Check:
        results = []
        for size in self.sizes:
            for kind in ("rand", "randn10", "mixed"):
                results += [(f"{size} {kind}", c) for c in self._trial(size, kind, with_grad=False)]
        return verdict("forward", results)

    def check_backward(self) -> Check:
        results = []
        for size in self.sizes:
            for kind in ("randn10", "mixed"):
                results += [(f"{size} {kind}", c) for c in self._trial(size, kind, with_grad=True)]
        return verdict("backward", results)

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
        torch.manual_seed(self.runner.construction_seed(self.seed))
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
        x = self.judge.inputs(size, "randn10")
        # Model -> subject: the subject must accept Model's state strictly and compute with it.
        cmp = self.judge.compare(self.runner, size, x, with_grad=False, state=ref_state)[0]
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

    def check_training(self) -> Check:
        return training.check_training(self)

    def check_autograd(self) -> Check:
        return training.check_autograd(self)

    def check_shapes(self) -> Check:
        sizes = list(ODD_SIZES)
        if self.device.type == "cuda" and KERNELBENCH not in self.sizes:
            sizes.append(KERNELBENCH)
        results = []
        for size in sizes:
            results += [(str(size), c) for c in self._trial(size, "mixed", with_grad=True)]
        # Leading batch dims and a 1-D input, as nn.Linear accepts them.
        results += [("2x3x5x13x7", c) for c in self._trial(Size(5, 13, 7), "mixed", with_grad=True, lead=(2, 3))]
        x1 = self.judge.inputs(Size(1, 13, 7), "randn10")[0]
        results += [("1-D (13,)->(7,)", c) for c in self.judge.compare(self.runner, Size(1, 13, 7), x1, with_grad=True)]
        check = verdict("shapes", results)
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
        x = self.judge.inputs(Size(16, 6, 3), "randn10")
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

    def run_all(self, report: Report) -> Report:
        for name, fn in [("build", self.check_build), ("forward", self.check_forward),
                         ("backward", self.check_backward), ("param_count", self.check_param_count),
                         ("init", self.check_init), ("state_dict", self.check_state_dict),
                         ("gradcheck", self.check_gradcheck), ("training", self.check_training),
                         ("autograd", self.check_autograd),
                         ("shapes", self.check_shapes), ("bad_inputs", self.check_bad_inputs)
                         ] + compat.checks(self):
            report.add(guard(name, fn, self.progress))
        return report


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
