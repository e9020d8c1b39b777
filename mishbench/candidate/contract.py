"""`output_contract`: what a drop-in returns (DESIGN.md, "Candidates: where the judge stands"): exactly
`torch.Tensor`, Model's dtype, shape and device, contiguous as eager's output is, and fresh storage on every
call -- not shared with the input, the parameters or ANY earlier output.

The harness's own evidence comes first: the dtype and shape of every output it got back (RemoteRunner
records them on each call), and a probe here whose outputs are all read only after the last call returned,
so outputs that share a ring of buffers come back overwritten and fail against float64 truth. What the
worker saw (the exact type before the reply was serialised, the device, strides, storages) is a second
opinion that can only add findings.
"""
from typing import Any, Dict, List, Sequence

import torch

from mishbench.candidate.process import CandidateError
from mishbench.schema import Check
from mishbench.shapes import Size
from mishbench.truth import Judge, reference_run

PROBE_CALLS = 4
NAME = "output_contract"
ORDER = ("type", "dtype", "shape", "device", "contiguous", "storage")


def check_output_contract(judge: Judge, sizes: Sequence[Size], runner) -> Check:
    """`runner` is a candidate.runner.RemoteRunner; call it after the other dynamic checks, so that the
    outputs of all their calls are part of the verdict."""
    size = min(sizes, key=lambda s: s.flops)
    state = runner.init_state(size, judge.seed)
    xs = [judge.inputs(size, "randn10") for _ in range(PROBE_CALLS)]
    # Each output copied as soon as its call returns, then the same calls with every output kept: an output
    # right when copied at once but wrong when read after the last call was overwritten by a later call.
    # (Wrong either way is the accuracy checks' business, not the contract's.)
    at_once = runner.run_seq(size, state, xs)
    ys = runner.run_seq(size, state, xs, keep=True)
    problems: List[str] = []
    for i, (x, y) in enumerate(zip(xs, ys)):
        truth = judge.truth(size, state, x)
        cmp = truth.judge(y)[0][1]
        if not cmp.ok and truth.judge(at_once[i])[0][1].ok:
            later = [j + 1 for j in range(i + 1, len(ys)) if y.shape == ys[j].shape and torch.equal(y, ys[j])]
            why = f" (it equals call {later[0]}'s: one buffer reused)" if later else ""
            problems.append(f"storage: with all {len(xs)} outputs kept, call {i + 1}'s output read after the last "
                            f"call is wrong (rel_err {cmp.err:.3g} > bar {cmp.bar:.3g}){why}: later calls "
                            "overwrote it")
            break
    # An input with leading batch dimensions: Model's output has them too, contiguous like eager's.
    lead = Size(5, size.in_features, size.out_features)
    state_lead = runner.init_state(lead, judge.seed)
    x_lead = judge.inputs(lead, "randn10", lead=(2, 3))
    runner.run(lead, state_lead, x_lead, None)
    eager, _ = reference_run(lead, state_lead, x_lead, None, judge.dtype, tf32=judge.tf32)
    findings: Dict[str, Dict[str, Any]] = {k: dict(v) for k, v in runner.contract_seen.items()}
    try:
        worker = runner.contract()
    except CandidateError as exc:
        worker = {"calls": 0, "findings": {}}
        problems.append(f"the candidate's process did not report its outputs ({str(exc)[:120]})")
    for kind, f in (worker.get("findings") or {}).items():
        if kind == "contiguous" and not eager.is_contiguous():
            continue  # eager's output would not be contiguous either
        findings.setdefault(str(kind), dict(f))
    for kind in sorted(findings, key=lambda k: ORDER.index(k) if k in ORDER else len(ORDER)):
        f = findings[kind]
        problems.append(f"{kind}: {f.get('first')} ({f.get('count')} call(s))")
    metrics = {"harness_calls": runner.calls, "worker_calls": int(worker.get("calls") or 0),
               "findings": sorted(findings)}
    if problems:
        return Check(NAME, "fail", "; ".join(problems[:4]) + (f" (+{len(problems) - 4} more)" if len(problems) > 4
                                                              else ""), metrics)
    return Check(NAME, "pass", f"{runner.calls} outputs: exactly torch.Tensor, {judge.dtype}, Model's shape "
                               f"(also for a {tuple(x_lead.shape)} input), on {judge.device.type}, contiguous as "
                               f"eager's, fresh storage ({len(xs)} outputs kept alive, each still right after "
                               "the last call)", metrics)
