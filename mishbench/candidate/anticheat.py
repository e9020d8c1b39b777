"""Anti-cheat checks for candidates (DESIGN.md check names `anti_cheat_*`).

Each catches a shortcut that fooled KernelBench's evaluator. Outputs are always judged here, in the harness,
against float64 truth on inputs drawn from the run's seed (which the candidate never sees: its process gets
tensors only); the worker reports what it saw around each call (inputs and parameters compared after the
call, output storage overlap, backend flags, timings).
"""
import random
import re
from typing import Callable, List, Optional, Sequence

import torch

from mishbench import clock
from mishbench.schema import Check
from mishbench.shapes import KERNELBENCH, Size
from mishbench.truth import Compared, Judge, guard, reference_run

STALE_TRIALS = 3
ANTI_CHEAT_CHECKS = ["anti_cheat_input_mutation", "anti_cheat_output_aliasing", "anti_cheat_stale_output",
                     "anti_cheat_backend_flags", "anti_cheat_streams", "anti_cheat_determinism",
                     "anti_cheat_roofline"]


def anti_cheat_checks(judge: Judge, sizes: Sequence[Size], runner,
                      progress: Optional[Callable[[str], None]] = None) -> List[Check]:
    """The seven anti_cheat_* rows, in ANTI_CHEAT_CHECKS order. `runner` is a candidate.runner.RemoteRunner;
    inputs come from the judge's generator (the run's seed, which the candidate never sees)."""
    if progress is not None:
        progress("anti-cheat")
    out = [guard("anti_cheat_stale_output", lambda: check_stale_output(judge, sizes, runner)),
           guard("anti_cheat_determinism", lambda: check_determinism(judge, sizes, runner))]
    timing = {}
    out.append(guard("anti_cheat_streams", lambda: check_streams(judge, sizes, runner, timing)))
    out.append(guard("anti_cheat_roofline", lambda: check_roofline(judge, timing)))
    try:
        runner.request({"op": "flags"})
    except Exception:  # noqa: BLE001 - the last known flags are reported below
        pass
    out.append(_observed("anti_cheat_input_mutation", runner, "mutation:",
                         "inputs and parameters unchanged after every call"))
    out.append(_observed("anti_cheat_output_aliasing", runner, "aliasing:",
                         "no output shared memory with its input, the parameters, module tensors or the previous output"))
    out.append(check_backend_flags(runner))
    return sorted(out, key=lambda c: ANTI_CHEAT_CHECKS.index(c.name))


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
    return Check("anti_cheat_backend_flags", "pass", "the whole torch.backends tree, matmul precision, "
                                                     "determinism and the denormal (flush-to-zero) state unchanged "
                                                     "by import, construction and every call (read in the "
                                                     "candidate's process: a second opinion)")


def _small_size(sizes: Sequence[Size]) -> Size:
    return min(sizes, key=lambda s: s.flops)


def check_stale_output(judge: Judge, sizes: Sequence[Size], runner) -> Check:
    """Fresh inputs through one reused input buffer, memory poisoned with NaN before each call."""
    size = _small_size(sizes)
    state = runner.init_state(size, judge.seed)
    xs = [judge.inputs(size, "randn10") for _ in range(STALE_TRIALS)]
    ys = runner.run_seq(size, state, xs)
    for i, (x, y) in enumerate(zip(xs, ys)):
        y64, _ = reference_run(size, state, x, None, torch.float64)
        ye, _ = reference_run(size, state, x, None, judge.dtype, tf32=judge.tf32)
        cmp = Compared("y", y, y64, ye, judge.dtype)
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


def check_determinism(judge: Judge, sizes: Sequence[Size], runner) -> Check:
    size = _small_size(sizes)
    state = runner.init_state(size, judge.seed)
    x = judge.inputs(size, "randn10")
    y1, y2 = runner.run_seq(size, state, [x, x])
    # NaN != NaN on purpose: memory poisoned with NaN before each call is not an output that "repeats".
    if y1.shape == y2.shape and torch.equal(y1, y2):
        return Check("anti_cheat_determinism", "pass", f"two calls on one input gave bit-identical outputs ({size})")
    y64, _ = reference_run(size, state, x, None, torch.float64)
    ye, _ = reference_run(size, state, x, None, judge.dtype, tf32=judge.tf32)
    cmp = Compared("y", y2, y1, ye, judge.dtype)  # the two runs against each other
    diff = (y1.double() - y2.double()).abs().max().item() if y1.shape == y2.shape else float("inf")
    if y1.shape == y2.shape and Compared("y", y2, y64, ye, judge.dtype).ok and \
            Compared("y", y1, y64, ye, judge.dtype).ok:
        return Check("anti_cheat_determinism", "warn", f"two calls on one input differ (max abs {diff:.3g}) but "
                                                      "both meet the bar: non-deterministic reduction order?",
                     cmp.metrics())
    return Check("anti_cheat_determinism", "fail", f"two calls on one input differ (max abs {diff:.3g}): the "
                                                   "output depends on something other than the input and parameters")


def _timing_size(sizes: Sequence[Size]) -> Size:
    return max(list(sizes) + [KERNELBENCH], key=lambda s: s.flops)


def check_streams(judge: Judge, sizes: Sequence[Size], runner, timing: dict) -> Check:
    """The harness's clock against the candidate's: batches of calls timed here, around the request (the
    candidate's process cannot reach this clock), and a random few of each batch's outputs judged; what
    the worker measured itself (host clock; CUDA events on the current stream) is a second opinion that
    must agree. Work left on a side stream, a rewritten clock or work skipped while timed shows here."""
    name = "anti_cheat_streams"
    cuda = judge.device.type == "cuda"
    size = _timing_size(sizes) if cuda else _small_size(sizes)
    state = runner.init_state(size, judge.seed)
    xs = [judge.inputs(size, "rand") for _ in range(3)]
    # The same inputs one call at a time first: a timed output is held to truth where the untimed one meets
    # it (an output wrong either way is the accuracy checks' finding, not a timing one).
    truths = [judge.truth(size, state, x) for x in xs]  # once per input: a batch's picks reuse them
    untimed = [t.judge(y)[0][1].ok for t, y in zip(truths, runner.run_seq(size, state, xs))]
    pick = random.Random(int(torch.randint(0, 2**31 - 1, (1,), generator=judge.gen)))
    res = runner.time_batches(size, state, xs, None, rng=pick)
    for i, y in res["checked"] if not res["inputs_changed"] else []:  # changed inputs: input_mutation's row
        cmp = truths[i % len(xs)].judge(y)[0][1]
        if not cmp.ok and untimed[i % len(xs)]:
            return Check(name, "fail", f"timed call {i + 1} of a batch of {res['n']} (picked after the batch) "
                                       f"returned a wrong output: rel_err {cmp.err:.3g} > bar {cmp.bar:.3g}; work "
                                       "skipped while timed, or a buffer a later call overwrote", cmp.metrics())
    harness = res["timing"].median_ms
    claims = [("host clock", res["worker_host"])]
    if res["worker_event"] is not None:
        claims.append(("CUDA events on the current stream", res["worker_event"]))
    timing.update(size=size, host_ms=harness, event_ms=claims[-1][1].median_ms)
    metrics = {"harness_ms": harness, "n_per_batch": res["n"], "round_trip_ms": res["round_trip_ms"],
               "size": str(size), **{k: v.median_ms for k, v in claims}}
    # Batch by batch, the harness's per-call time (round trip subtracted) against the candidate's claim for
    # the same batch; the closest batch counts. A loaded machine delays the harness's wake-up and inflates
    # some batches (measured up to 1.7x on a busy 2-core CPU), never all of them; a slowed clock or work on
    # a side stream is off in every batch, by far more than 2x.
    for what, claim in claims:
        ratios = [(h - 4.0 * res["round_trip_ms"] / res["n"]) / c if c > 0 else float("inf")
                  for h, c in zip(res["timing"].samples, claim.samples)]
        if ratios and min(ratios) > 2.0:
            why = "work is left on another stream" if what.startswith("CUDA") else \
                "the clocks in its process run slow or are rewritten"
            return Check(name, "fail", f"the harness's clock says {harness:.4f} ms per call ({res['n']} calls "
                                       f"a batch) but the candidate's {what} says {claim.median_ms:.4f} ms at "
                                       f"{size} (at least {min(ratios):.1f}x apart in every batch): {why}", metrics)
    claims = [(what, c.median_ms) for what, c in claims]
    said = ", ".join(f"{what} {claim:.4f} ms" for what, claim in claims)
    return Check(name, "pass", f"harness clock {harness:.4f} ms per call ({res['n']} calls a batch, "
                               f"{len(res['checked'])} outputs picked afterwards, none wrong where the untimed call was "
                               "right) agrees with the "
                               f"candidate's own ({said}) at {size}", metrics)


def check_roofline(judge: Judge, timing: dict) -> Check:
    name = "anti_cheat_roofline"
    if judge.device.type != "cuda":
        return Check(name, "skip", "needs a CUDA GPU (the card's measured bf16 peak bounds every time)")
    if not timing:
        return Check(name, "skip", "no candidate timing (anti_cheat_streams did not run)")
    size = timing["size"]
    peak = clock.peak_tflops(judge.device, "bf16")  # measured here, in the harness, by the one clock
    floor_ms = size.flops / (peak * 1e12) * 1e3
    got = max(timing["event_ms"], timing["host_ms"])
    metrics = {"time_ms": got, "floor_ms": floor_ms, "bf16_peak_tflops": peak}
    if got < floor_ms:
        return Check(name, "fail", f"{got:.4f} ms at {size} is below {floor_ms:.4f} ms, the least the GEMM's "
                                   f"{size.flops:.3g} FLOPs take at the card's measured bf16 peak ({peak:.0f} TFLOP/s): "
                                   "physically impossible, so the work was not done", metrics)
    return Check(name, "pass", f"{got:.3f} ms at {size} >= {floor_ms:.3f} ms (2·B·K·N at the measured bf16 peak "
                               f"{peak:.0f} TFLOP/s)", metrics)
