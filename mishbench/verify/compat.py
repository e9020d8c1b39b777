"""Compiler and runtime compatibility checks: torch.compile, autocast, CUDA graphs, serialization,
no_grad / inference_mode. Each asks the subject's runner for a run under that mode (`Runner.compat`) and
judges it with the one judge, like the core checks. `v` is the verify.core.Verifier running them.
"""
from typing import Callable, List, Tuple

import torch

from mishbench.candidate.protocol import load_kwargs
from mishbench.op import ops
from mishbench.op.precision import dtype_name
from mishbench.schema import Check
from mishbench.shapes import Size
from mishbench.truth import GRAD_NAMES, grads_by_name, reference_model, rel_err, verdict

def _size(v) -> Size:
    # Odd and small: torch.compile on a 2-core CPU spends its time compiling, not computing.
    return Size(257, 1000, 777) if v.device.type == "cuda" else Size(33, 20, 12)

def _run(v, name: str, mode: str, size: Size, state, x, grad_y=None):
    """The runner's compat run, or a skip Check when this subject cannot be run that way."""
    try:
        return v.runner.compat(mode, size, state, x, grad_y)
    except NotImplementedError as exc:
        return Check(name, "skip", f"{mode} runs are not supported for subject {v.runner.subject!r}"
                                   + (f": {exc}" if str(exc) else ""))

def check_compile(v) -> Check:
    if not ops.HAS_TORCH_LIBRARY_FAKE and v.runner.impl(v.device) != "candidate":  # torch < 2.4, our op
        return Check("compile", "skip", f"torch {torch.__version__}: the compile check needs torch >= 2.4 "
                                        "(torch.library.register_fake for the extension op)")
    size = _size(v)
    state = v.runner.init_state(size, v.seed)
    x = v.judge.inputs(size, "randn10")
    grad_y = torch.randn(size.batch, size.out_features, generator=v.gen, dtype=torch.float64).to(x)
    got = _run(v, "compile", "compile", size, state, x, grad_y)
    if isinstance(got, Check):
        return got
    y, grads, facts = got
    ye, ge = v.runner.run(size, state, x, grad_y)  # eager ModelNew, for the record
    results = v.judge.against_truth(size, state, x, grad_y, y, grads, v.dtype)
    check = verdict("compile", results)
    diffs = [rel_err(y, ye)] + [rel_err(grads[k], ge[k]) for k in GRAD_NAMES if grads and ge and
                                 grads.get(k) is not None and ge.get(k) is not None]
    check.metrics["max_rel_diff_vs_eager_modelnew"] = max(diffs)
    how = "" if facts.get("backend", "inductor") == "inductor" else f", backend={facts['backend']}"
    check.detail = (f"torch.compile(fullgraph=True{how}) fwd+bwd at {size} on {v.device.type} "
                    f"(impl={v.runner.impl(v.device)}), max rel diff vs eager ModelNew {max(diffs):.3g}; "
                    + check.detail)
    broke = facts.get("graph_break")
    if broke and check.status == "pass":
        # Model compiles as one graph. Our op must too (a break is a regression: fail); a candidate that
        # still computes right under the default compile works there, with the break's cost (warn).
        check.status = "warn" if v.runner.impl(v.device) == "candidate" else "fail"
        check.metrics["graph_break"] = broke
        check.detail = (f"torch.compile(fullgraph=True) raised ({broke[:160]}); with graph breaks allowed, "
                        f"fwd+bwd at {size} is right: " + check.detail.split("; ", 1)[-1])
    return check

def check_autocast(v) -> Check:
    size = _size(v)
    state = v.runner.init_state(size, v.seed)
    amps = [("bf16", torch.bfloat16)] + ([("fp16", torch.float16)] if v.device.type == "cuda" else [])
    # Autocast acts on fp32 models and inputs, whatever --dtype says.
    x = v.judge.inputs(size, "randn10", dtype=torch.float32) / 10
    grad_y = torch.randn(size.batch, size.out_features, generator=v.gen, dtype=torch.float64).to(x)
    results, dtypes, odd = [], [], []
    for name, amp in amps:
        got = _run(v, "autocast", "autocast:" + name, size, state, x, grad_y)
        if isinstance(got, Check):
            return got
        y, grads, _ = got

        def eager_ctx(amp=amp):
            ref = reference_model(size, state, v.device, torch.float32)
            xx = x.detach().clone().requires_grad_(True)
            with torch.autocast(device_type=v.device.type, dtype=amp):
                ye = ref(xx)
            ye.backward(grad_y.to(ye.dtype))
            return ye.detach(), grads_by_name(ref, xx)

        ye, _ = eager_ctx()
        if y.dtype != ye.dtype:
            if v.runner.impl(v.device) != "candidate":
                return Check("autocast", "fail", f"under torch.autocast({v.device.type}, {name}) ModelNew returns "
                                                 f"{y.dtype} but Model returns {ye.dtype}")
            # A candidate's own kernel need not follow autocast (a fused fp32 kernel returns fp32): what
            # follows it sees another dtype than Model's (warn); its accuracy is still judged.
            odd.append(f"{name}: returns {y.dtype}, Model {ye.dtype}")
        dtypes.append(f"{name}->{dtype_name(y.dtype)}")
        results += [(f"{name} {lbl}", c) for lbl, c in
                    v.judge.against_truth(size, state, x, grad_y, y, grads, amp, eager=eager_ctx)]
    check = verdict("autocast", results)
    if odd:
        check.detail = (f"torch.autocast({v.device.type}) at {size}: output dtype differs from Model's "
                        f"({'; '.join(odd)}); " + check.detail)
        check.status = "warn" if check.status == "pass" else check.status
        return check
    check.detail = (f"torch.autocast({v.device.type}) at {size}: output dtype as Model's "
                    f"({', '.join(dtypes)}); " + check.detail)
    return check

def check_cuda_graph(v) -> Check:
    if v.device.type != "cuda":
        return Check("cuda_graph", "skip", "CUDA graph capture needs a CUDA GPU")
    size = _size(v)
    state = v.runner.init_state(size, v.seed)
    xs = v.judge.inputs(size, "randn10", lead=(3,))
    got = _run(v, "cuda_graph", "cuda_graph", size, state, xs)
    if isinstance(got, Check):
        return got
    ys, _, _ = got
    results, identical = [], 0
    for i in range(xs.shape[0]):
        ye, _ = v.runner.run(size, state, xs[i], None)
        identical += int(torch.equal(ys[i], ye))
        results += [(f"replay {i}", c) for _, c in v.judge.against_truth(size, state, xs[i], None, ys[i], None, v.dtype)]
    check = verdict("cuda_graph", results)
    check.metrics["replays_identical_to_eager"] = identical
    check.detail = (f"forward captured once at {size}, replayed on {xs.shape[0]} new inputs "
                    f"({identical}/{xs.shape[0]} bit-identical to eager ModelNew); " + check.detail)
    return check

def check_serialization(v) -> Check:
    size = _size(v)
    state = v.runner.init_state(size, v.seed)
    x = v.judge.inputs(size, "randn10")
    got = _run(v, "serialization", "serialization", size, state, x)
    if isinstance(got, Check):
        return got
    _, _, facts = got
    how = "torch.save -> torch.load" + ("(weights_only=True)" if load_kwargs() else "")
    if not facts.get("state_equal"):
        return Check("serialization", "fail", f"state_dict through {how} does not round-trip exactly "
                                              "(keys, dtypes, shapes or values differ)", facts)
    if not facts.get("outputs_equal"):
        return Check("serialization", "fail", f"a module loaded through {how} gives different outputs "
                                              "from the one saved", facts)
    return Check("serialization", "pass", f"state_dict round-trips exactly through {how}; the loaded "
                                          "module's outputs are bit-identical", facts)

def check_inference_mode(v) -> Check:
    size = Size(1024, 512, 1024) if v.device.type == "cuda" else _size(v)
    state = v.runner.init_state(size, v.seed)
    x = v.judge.inputs(size, "randn10")
    problems, results, notes = [], [], []
    for mode in ("no_grad", "inference_mode"):
        got = _run(v, "inference_mode", mode, size, state, x)
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
        results += [(mode, c) for _, c in v.judge.against_truth(size, state, x, None, y, None, v.dtype)]
    check = verdict("inference_mode", results)
    if problems:
        return Check("inference_mode", "fail", "; ".join(problems), check.metrics)
    if check.status != "pass":
        return check
    memory = "; ".join(notes) if notes else "allocator growth is measured on CUDA only"
    check.detail = (f"no_grad and inference_mode at {size}: no autograd graph (grad_fn None), so nothing "
                    f"holds z after the call; {memory}; " + check.detail)
    return check

def checks(v) -> List[Tuple[str, Callable[[], Check]]]:
    return [("compile", lambda: check_compile(v)), ("autocast", lambda: check_autocast(v)),
            ("cuda_graph", lambda: check_cuda_graph(v)), ("serialization", lambda: check_serialization(v)),
            ("inference_mode", lambda: check_inference_mode(v))]

