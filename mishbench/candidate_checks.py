"""Anti-cheat checks for candidates (issue 6, DESIGN.md check names `anti_cheat_*`).

Each catches a shortcut that fooled KernelBench's evaluator. Outputs are always judged here, in the harness,
against float64 truth on inputs drawn from the run's seed (which the candidate never sees: its process gets
tensors only); the worker reports what it saw around each call (inputs and parameters compared after the
call, output storage overlap, backend flags, timings).
"""
import functools
import re
from typing import Callable, List

import torch

from .checks import Check
from .shapes import KERNELBENCH, Size
from .verify import Compared, Verifier, make_inputs, reference_run

STALE_TRIALS = 3


def _guard(name: str, fn: Callable[[], Check]) -> Check:
    try:
        return fn()
    except torch.cuda.OutOfMemoryError as exc:
        return Check(name, "skip", f"out of memory: {str(exc).splitlines()[0]}")
    except Exception as exc:  # noqa: BLE001 - a crashing candidate is a finding
        return Check(name, "error", f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")


def anti_cheat_checks(verifier: Verifier, runner) -> List[Check]:
    """The seven anti_cheat_* rows. `runner` is a candidate.RemoteRunner."""
    verifier.progress("anti-cheat")
    out = [_guard("anti_cheat_stale_output", lambda: check_stale_output(verifier, runner)),
           _guard("anti_cheat_determinism", lambda: check_determinism(verifier, runner))]
    timing = {}
    out.append(_guard("anti_cheat_streams", lambda: check_streams(verifier, runner, timing)))
    out.append(_guard("anti_cheat_roofline", lambda: check_roofline(verifier, timing)))
    try:
        runner.request({"op": "flags"})
    except Exception:  # noqa: BLE001 - the last known flags are reported below
        pass
    out.append(_observed("anti_cheat_input_mutation", runner, "mutation:",
                         "inputs and parameters unchanged after every call"))
    out.append(_observed("anti_cheat_output_aliasing", runner, "aliasing:",
                         "no output shared memory with its input, the parameters, module tensors or the previous output"))
    out.append(check_backend_flags(runner))
    order = ["anti_cheat_input_mutation", "anti_cheat_output_aliasing", "anti_cheat_stale_output",
             "anti_cheat_backend_flags", "anti_cheat_streams", "anti_cheat_determinism", "anti_cheat_roofline"]
    return sorted(out, key=lambda c: order.index(c.name))


def _observed(name: str, runner, prefix: str, ok_detail: str) -> Check:
    seen = [o[len(prefix):].strip() for o in runner.observations if o.startswith(prefix)]
    if seen:
        kinds = []
        for s in seen:  # one line: each distinct finding once, counts dropped
            k = re.sub(r"\s*\(\d+ elements changed\)", "", s)
            if k not in kinds:
                kinds.append(k)
        return Check(name, "fail", "; ".join(kinds[:3]) + f" (in {len(seen)} call(s))")
    return Check(name, "pass", ok_detail)


def check_backend_flags(runner) -> Check:
    if runner.flag_changes:
        return Check("anti_cheat_backend_flags", "fail",
                     "the candidate changed global PyTorch settings: " + "; ".join(runner.flag_changes[:4])
                     + " (a kernel must not change how other code computes; pass options explicitly)")
    return Check("anti_cheat_backend_flags", "pass", "torch.backends / float32 matmul precision unchanged by "
                                                     "import, construction and every call")


def _small_size(verifier: Verifier) -> Size:
    return min(verifier.sizes, key=lambda s: s.flops)


def check_stale_output(verifier: Verifier, runner) -> Check:
    """Fresh inputs through one reused input buffer, memory poisoned with NaN before each call."""
    size = _small_size(verifier)
    state = runner.init_state(size, verifier.seed)
    xs = [make_inputs(size, "randn10", verifier.gen, verifier.device, verifier.dtype) for _ in range(STALE_TRIALS)]
    ys = runner.run_seq(size, state, xs)
    for i, (x, y) in enumerate(zip(xs, ys)):
        y64, _ = reference_run(size, state, x, None, torch.float64)
        ye, _ = reference_run(size, state, x, None, verifier.dtype, tf32=verifier.tf32)
        cmp = Compared("y", y, y64, ye, verifier.dtype)
        if cmp.ok:
            continue
        if i and y.shape == ys[i - 1].shape and torch.equal(y, ys[i - 1]):
            return Check("anti_cheat_stale_output", "fail",
                         f"input {i + 1} of {STALE_TRIALS} (same buffer, new values) got input {i}'s output back: "
                         "outputs cached by input identity/address/shape", cmp.metrics())
        nan = int((torch.isnan(y) & ~torch.isnan(y64)).sum()) if y.shape == y64.shape else 0
        if nan:
            return Check("anti_cheat_stale_output", "fail",
                         f"input {i + 1}: {nan}/{y.numel()} outputs are NaN from memory poisoned before the call: "
                         "the output is not fully written (torch.empty without a kernel writing it?)", cmp.metrics())
        return Check("anti_cheat_stale_output", "fail",
                     f"input {i + 1} of {STALE_TRIALS}: rel_err {cmp.err:.3g} > bar {cmp.bar:.3g}; {cmp.summary}",
                     cmp.metrics())
    return Check("anti_cheat_stale_output", "pass",
                 f"{STALE_TRIALS} fresh inputs from the run's seed through one reused buffer, memory poisoned "
                 f"before each call: every output matches its own input ({size})")


def check_determinism(verifier: Verifier, runner) -> Check:
    size = _small_size(verifier)
    state = runner.init_state(size, verifier.seed)
    x = make_inputs(size, "randn10", verifier.gen, verifier.device, verifier.dtype)
    y1, y2 = runner.run_seq(size, state, [x, x])
    # NaN != NaN on purpose: memory poisoned with NaN before each call is not an output that "repeats".
    if y1.shape == y2.shape and torch.equal(y1, y2):
        return Check("anti_cheat_determinism", "pass", f"two calls on one input gave bit-identical outputs ({size})")
    y64, _ = reference_run(size, state, x, None, torch.float64)
    ye, _ = reference_run(size, state, x, None, verifier.dtype, tf32=verifier.tf32)
    cmp = Compared("y", y2, y1, ye, verifier.dtype)  # the two runs against each other
    diff = (y1.double() - y2.double()).abs().max().item() if y1.shape == y2.shape else float("inf")
    if y1.shape == y2.shape and Compared("y", y2, y64, ye, verifier.dtype).ok and \
            Compared("y", y1, y64, ye, verifier.dtype).ok:
        return Check("anti_cheat_determinism", "warn", f"two calls on one input differ (max abs {diff:.3g}) but "
                                                      "both meet the bar: non-deterministic reduction order?",
                     cmp.metrics())
    return Check("anti_cheat_determinism", "fail", f"two calls on one input differ (max abs {diff:.3g}): the "
                                                   "output depends on something other than the input and parameters")


def _timing_size(verifier: Verifier) -> Size:
    return max(verifier.sizes + [KERNELBENCH], key=lambda s: s.flops)


def check_streams(verifier: Verifier, runner, timing: dict) -> Check:
    name = "anti_cheat_streams"
    if verifier.device.type != "cuda":
        return Check(name, "skip", "needs a CUDA GPU (CUDA-event vs device-synchronize timing)")
    size = _timing_size(verifier)
    state = runner.init_state(size, verifier.seed)
    x = make_inputs(size, "rand", verifier.gen, verifier.device, verifier.dtype)
    flush = 2 * torch.cuda.get_device_properties(verifier.device).L2_cache_size
    t = runner.time(size, state, x, None, warmup=5, iters=30, flush_bytes=flush)
    ev, host = sorted(t["event_ms"]), sorted(t["host_ms"])
    ev_med, host_med = ev[len(ev) // 2], host[len(host) // 2]
    timing.update(size=size, event_ms=ev_med, host_ms=host_med)
    # Host time = event time + a synchronize round trip (~10-50 us) + launch overhead before the start event.
    # Side-stream work shows up only in host time; a gap of 0.1 ms plus a quarter of the host time is far
    # beyond that noise at the KernelBench shape (2.7 ms eager fp32 on an H100).
    gap = host_med - ev_med
    metrics = {"event_ms": ev_med, "host_ms": host_med, "size": str(size)}
    if gap > 0.1 + 0.25 * host_med:
        return Check(name, "fail", f"CUDA events on the current stream say {ev_med:.3f} ms but a device-wide "
                                   f"synchronize takes {host_med:.3f} ms at {size}: work is left on another stream",
                     metrics)
    return Check(name, "pass", f"event time {ev_med:.3f} ms agrees with synchronized host time {host_med:.3f} ms "
                               f"at {size}", metrics)


@functools.lru_cache(maxsize=None)
def measured_bf16_peak_tflops(index: int) -> float:
    """The card's bf16 tensor-core rate, measured here (in the harness) on an 8192^3 GEMM, best of 10."""
    n = 8192
    a = torch.randn(n, n, device=f"cuda:{index}", dtype=torch.bfloat16)
    b = torch.randn(n, n, device=f"cuda:{index}", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
        e.record()
        torch.cuda.synchronize()
        best = min(best, s.elapsed_time(e))
    return 2 * n ** 3 / (best * 1e-3) / 1e12


def check_roofline(verifier: Verifier, timing: dict) -> Check:
    name = "anti_cheat_roofline"
    if verifier.device.type != "cuda":
        return Check(name, "skip", "needs a CUDA GPU (the card's measured bf16 peak bounds every time)")
    if not timing:
        return Check(name, "skip", "no candidate timing (anti_cheat_streams did not run)")
    size = timing["size"]
    index = verifier.device.index if verifier.device.index is not None else torch.cuda.current_device()
    peak = measured_bf16_peak_tflops(index)
    floor_ms = size.flops / (peak * 1e12) * 1e3
    got = max(timing["event_ms"], timing["host_ms"])
    metrics = {"time_ms": got, "floor_ms": floor_ms, "bf16_peak_tflops": peak}
    if got < floor_ms:
        return Check(name, "fail", f"{got:.4f} ms at {size} is below {floor_ms:.4f} ms, the least the GEMM's "
                                   f"{size.flops:.3g} FLOPs take at the card's measured bf16 peak ({peak:.0f} TFLOP/s): "
                                   "physically impossible, so the work was not done", metrics)
    return Check(name, "pass", f"{got:.3f} ms at {size} >= {floor_ms:.3f} ms (2·B·K·N at the measured bf16 peak "
                               f"{peak:.0f} TFLOP/s)", metrics)
