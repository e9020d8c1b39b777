"""Training and the autograd contract: what a drop-in module must do beyond one forward and one backward.

`training`: hundreds of calls on ONE instance with in-place optimizer steps (torch.optim.SGD with momentum),
so a cache keyed on storage or call count goes stale; judged against the same training of the reference
Model in float64 (the truth) and in eager (the bar). `autograd`: gradients accumulate in `.grad` over two
backward calls, are visible to `torch.autograd.grad` (which must not fill `.grad`), and the upstream
gradient -- dense, expanded by autograd (`y.sum().backward()`), expanded by the caller, transposed -- is
left as the caller passed it. The calls are candidate.protocol's, run the same way on every subject and
on the reference; the judge is truth.py's. `v` is the verify.core.Verifier running them.
"""
from typing import Dict, List, Optional, Tuple

import torch

from mishbench.candidate.protocol import GRAD_MODES, grad_mode_calls, train_calls
from mishbench.op.precision import eager_matmul_mode
from mishbench.schema import Check
from mishbench.shapes import Size
from mishbench.inputs import linear_params
from mishbench.truth import GRAD_LABELS, GRAD_NAMES, Compared, floors, reference_model, verdict

TRAIN_SIZE = Size(64, 32, 16)
TRAIN_STEPS = 200
TRAIN_BATCHES = 4  # cycled: the same x tensors come back with new weights
TRAIN_LR, TRAIN_MOMENTUM = 0.05, 0.9
AUTOGRAD_SIZE = Size(37, 21, 11)


def reference_train(size: Size, state, xs, targets, steps: int, lr: float, momentum: float,
                    dtype: torch.dtype, tf32: bool = False) -> Tuple[List[float], Dict[str, torch.Tensor]]:
    """The subject's training (protocol.train_calls) run on the reference Model in `dtype`."""
    model = reference_model(size, state, xs[0].device, dtype)
    with eager_matmul_mode(tf32):
        losses = train_calls(model, [x.to(dtype) for x in xs], [t.to(dtype) for t in targets], steps, lr, momentum)
    return losses, {k: v.detach() for k, v in model.state_dict().items()}


def reference_grad_mode(mode: str, size: Size, state, x: torch.Tensor, grad_y: Optional[torch.Tensor],
                        dtype: torch.dtype, tf32: bool = False):
    """The subject's backward calls of one grad mode (protocol.grad_mode_calls) on the reference Model."""
    model = reference_model(size, state, x.device, dtype)
    with eager_matmul_mode(tf32):
        y, grads, _ = grad_mode_calls(model, mode, x.to(dtype), None if grad_y is None else grad_y.to(dtype))
    return y.detach(), grads


def check_training(v) -> Check:
    size = TRAIN_SIZE
    state = v.runner.init_state(size, v.seed)
    xs = [v.judge.inputs(size, "randn10") / 10 for _ in range(TRAIN_BATCHES)]
    targets = [v.judge.upstream((size.batch, size.out_features)) for _ in range(TRAIN_BATCHES)]
    args = (TRAIN_STEPS, TRAIN_LR, TRAIN_MOMENTUM)
    losses, final = v.runner.train(size, state, xs, targets, *args)
    l64, p64 = reference_train(size, state, xs, targets, *args, torch.float64)
    le, pe = reference_train(size, state, xs, targets, *args, v.dtype, tf32=v.tf32)
    if len(losses) != TRAIN_STEPS:
        return Check("training", "fail", f"{len(losses)} losses reported for {TRAIN_STEPS} steps")
    # Final parameters found by shape, so a subject's own parameter names do not matter here.
    got, want, eager = (linear_params(p, size, dtype=None) for p in (final, p64, pe))
    results = [("final", Compared(name, g, w, e, v.dtype))
               for name, g, w, e in zip(("linear.weight", "linear.bias"), got, want, eager)]
    results.append(("losses", Compared("loss", torch.tensor(losses, dtype=torch.float64),
                                       torch.tensor(l64, dtype=torch.float64), torch.tensor(le, dtype=torch.float64),
                                       v.dtype)))
    check = verdict("training", results)
    # The loss over one pass through the batches, first and last.
    first, last = sum(losses[:TRAIN_BATCHES]) / TRAIN_BATCHES, sum(losses[-TRAIN_BATCHES:]) / TRAIN_BATCHES
    check.metrics.update({"loss_first": first, "loss_last": last, "steps": TRAIN_STEPS})
    what = f"{TRAIN_STEPS} in-place SGD steps (momentum {TRAIN_MOMENTUM}) on one module"
    if check.status == "pass" and not last < first:
        return Check("training", "fail", f"loss did not decrease over {what} ({first:.4g} -> {last:.4g})",
                     check.metrics)
    check.detail = f"{what}, judged against float64 Model's: loss {first:.4g} -> {last:.4g}; " + check.detail
    return check


def _upstreams(v, size: Size) -> Dict[str, Optional[torch.Tensor]]:
    b, n = size.batch, size.out_features
    shapes = {"accumulate": (2, b, n), "autograd_grad": (b, n), "sum": None, "expanded": (1, n),
              "transposed": (n, b)}
    return {mode: None if shapes[mode] is None else v.judge.upstream(shapes[mode]) for mode in GRAD_MODES}


def _total_upstream(mode: str, grad_y: Optional[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """The upstream gradient a mode's gradients answer to, as one (batch, out) tensor, for the floors: the
    gradients are linear in it, so two accumulated backwards answer to the sum of their upstreams."""
    if mode == "accumulate":
        return grad_y[0] + grad_y[1]
    if mode == "sum":
        return torch.ones_like(y)
    if mode == "expanded":
        return grad_y.expand(y.shape)
    if mode == "transposed":
        return grad_y.t()
    return grad_y


def check_autograd(v) -> Check:
    size = AUTOGRAD_SIZE
    state = v.runner.init_state(size, v.seed)
    x = v.judge.inputs(size, "mixed", state=state)
    results, problems = [], []
    for mode, grad_y in _upstreams(v, size).items():
        try:
            y, grads, facts = v.runner.grad_mode(mode, size, state, x, grad_y)
        except Exception as exc:  # noqa: BLE001 - a mode the subject cannot take is a finding; try the rest
            problems.append(f"{mode}: {type(exc).__name__}: {' '.join(str(exc).split())[:160]}")
            continue
        y64, g64 = reference_grad_mode(mode, size, state, x, grad_y, torch.float64)
        ye, ge = reference_grad_mode(mode, size, state, x, grad_y, v.dtype, tf32=v.tf32)
        fl = floors(state, x, _total_upstream(mode, grad_y, y64), v.dtype, dict(g64, y=y64))
        results.append((mode, Compared("y", y, y64, ye, v.dtype, *fl["y"])))
        for name in GRAD_NAMES:
            g = (grads or {}).get(name)
            g = torch.full_like(g64[name], float("nan")) if g is None else g  # a missing gradient fails
            results.append((mode, Compared(GRAD_LABELS[name], g, g64[name], ge[name], v.dtype, *fl[name])))
        after = facts.get("upstream_after")
        if grad_y is not None and (after is None or after.shape != grad_y.shape
                                   or not torch.equal(after.to(grad_y), grad_y)):
            problems.append(f"{mode}: the backward changed the upstream gradient it was given")
        if facts.get("grad_written"):
            problems.append(f"{mode}: torch.autograd.grad also filled .grad of {facts['grad_written']}")
    check = verdict("autograd", results) if results else Check("autograd", "fail", "no mode ran")
    what = f"{len(GRAD_MODES)} backward modes at {size} ({', '.join(GRAD_MODES)})"
    if problems:
        detail = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
        if results:
            detail += f"; numbers of the modes that ran: {check.detail}"
        return Check("autograd", "fail", detail, check.metrics)
    check.detail = f"{what}; upstream gradients left as passed; " + check.detail
    return check
