"""`mishbench verify --candidate FILE`: every check for an untrusted candidate -- static, build, the core
verify checks through a RemoteRunner, anti-cheat -- into one Report."""
from typing import Callable, List, Optional

import torch

from mishbench import envinfo
from mishbench.candidate.anticheat import ANTI_CHEAT_CHECKS, anti_cheat_checks
from mishbench.candidate.contract import check_output_contract
from mishbench.candidate.process import CandidateError, Limits
from mishbench.candidate.runner import RemoteRunner, build_check
from mishbench.candidate.source import load_candidate
from mishbench.candidate.static import static_checks, uses_cuda
from mishbench.op.precision import dtype_name, resolve_precision
from mishbench.schema import Check, Report
from mishbench.shapes import Size
from mishbench.truth import guard, new_seed
from mishbench.verify import compat
from mishbench.verify.core import Verifier

DYNAMIC_CHECKS = ["forward", "backward", "param_count", "init", "state_dict", "gradcheck", "training", "autograd", "shapes"]
# After the timing checks, so torch.compile has not touched the process they time. cuda_graph is not asked
# of candidates yet: its row says so (no GPU run has judged captures of candidates' kernels).
COMPAT_CHECKS = ["compile", "autocast", "cuda_graph", "serialization", "inference_mode"]
NOT_ASKED = {"cuda_graph": "not run for candidates: CUDA graph capture is checked for mishbench's own op only"}


def verify_candidate(path, device: torch.device, dtype: torch.dtype, precision: Optional[str] = None,
                     seed: Optional[int] = None, sizes: Optional[List[Size]] = None,
                     progress: Optional[Callable[[str], None]] = None, limits: Optional[Limits] = None) -> Report:
    """Every check for a candidate file: static, build, the Verifier's, anti-cheat. Raises
    CandidateUsageError (exit 2) when the file cannot be a candidate; everything else is in the Report."""
    candidate = load_candidate(path)
    seed = new_seed() if seed is None else seed
    progress = progress or (lambda msg: None)
    report = Report(device=device.type, dtype=dtype_name(dtype), precision=resolve_precision(precision, dtype, device),
                    impl="candidate", seed=seed, subject=str(path), candidate_sha256=candidate.sha256,
                    gpu=envinfo.gpu_name(device) if device.type == "cuda" else "", env=envinfo.versions())
    parsed = candidate.parsed
    for check in static_checks(parsed):
        report.add(check)
    names = DYNAMIC_CHECKS + ANTI_CHEAT_CHECKS + ["output_contract"] + COMPAT_CHECKS + ["bad_inputs"]
    if parsed.tree is None:
        report.add(build_check(candidate, None, "", device))
        for name in names:
            report.add(Check(name, "skip", "not run: the candidate does not parse (see build)"))
        return report
    with RemoteRunner(candidate, device, dtype, precision, limits) as runner:
        progress("build")
        try:
            reply, error = runner.load(), ""
            error = "" if reply.get("ok") else str(reply.get("load_error"))
        except CandidateError as exc:
            reply, error = None, str(exc)
        report.add(build_check(candidate, reply, error, device))
        cuda_only = uses_cuda(parsed) or any(b.get("cuda") for b in (reply or {}).get("builds") or [])
        if error:
            for name in names:
                report.add(Check(name, "skip", "not run: the candidate did not load (see build)"))
            return report
        if cuda_only and device.type != "cuda":
            why = "needs a CUDA GPU: the candidate's kernels are CUDA (its build was checked); run with --device cuda"
            for name in names:
                report.add(Check(name, "skip", why))
            return report
        verifier = Verifier(runner, device, dtype, seed, sizes=sizes, progress=progress)
        for name in DYNAMIC_CHECKS:
            check = report.add(guard(name, getattr(verifier, "check_" + name), progress))
            if name == "state_dict":
                _names_row(check, runner)
        for check in anti_cheat_checks(verifier.judge, verifier.sizes, runner, progress):
            report.add(check)
        report.add(guard("output_contract", lambda: check_output_contract(verifier.judge, verifier.sizes, runner),
                         progress))
        for name, fn in compat.checks(verifier):
            report.add(Check(name, "skip", NOT_ASKED[name]) if name in NOT_ASKED else guard(name, fn, progress))
        # Last: a bad input may legitimately kill a CUDA kernel's process (device-side assert).
        report.add(guard("bad_inputs", verifier.check_bad_inputs, progress))
        _runtime_deprecations(report, runner)
    return report


def _names_row(check: Check, runner: RemoteRunner) -> None:
    """Numbers were judged with the candidate's parameters paired to Model's by shape and creation order;
    the names themselves are this row's business: a drop-in loads Model's state_dict as it is."""
    renamed = {k: v for k, v in runner.name_map.items() if k != v}
    if not renamed or check.status in ("fail", "error"):
        return
    pairs = ", ".join(f"{v} (Model: {k})" for k, v in renamed.items())
    check.status = "fail"
    check.detail = (f"parameter names differ from Model's: {pairs}; Model's state_dict does not load strictly "
                    "(the numbers were judged with the parameters paired by shape and creation order)")


def _runtime_deprecations(report: Report, runner: RemoteRunner) -> None:
    """A DeprecationWarning/FutureWarning of the running torch raised at import, construction or a call
    fails `static_deprecated` beside what the source shows: so this row may differ between torch versions."""
    seen = [w for w in runner.warnings if w.get("deprecation")]
    row = next((c for c in report.checks if c.name == "static_deprecated"), None)
    if not seen or row is None:
        return
    said = "; ".join(f"at {w.get('stage')}: {w.get('category')}: {str(w.get('message'))[:140]} ({w.get('where')})"
                     for w in seen[:3])
    text = f"torch {torch.__version__} warned {said}" + (f" (+{len(seen) - 3} more)" if len(seen) > 3 else "")
    if row.status == "fail":
        row.detail += "; " + text
    else:
        row.status, row.detail = "fail", "deprecated PyTorch API in use: " + text
    row.metrics["runtime_warnings"] = [dict(w) for w in seen[:10]]
