"""The harness's side of a candidate: `RemoteRunner`, a `truth.Runner` over the candidate's process, and the
`build` row.

Trust boundary: reference outputs and gradients are computed only in the harness (truth.py); the worker
gets inputs and parameters and returns outputs (protocol.py and worker.py document the exchange). Because
`RemoteRunner` is a `truth.Runner`, the candidate meets the same verify checks as our ModelNew; the static
checks are in static.py and the anti-cheat checks in anticheat.py.
"""
import hashlib
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from mishbench import clock
from mishbench.candidate.process import DEFAULT_ARCH_NO_GPU, CandidateError, Limits, WorkerProcess
from mishbench.candidate.protocol import COMPAT_MODES, torch_dtype_name
from mishbench.candidate.source import Candidate
from mishbench.candidate.static import kernel_usage, map_compiler_errors
from mishbench.op.reference import Model
from mishbench.op.precision import resolve_precision
from mishbench.schema import Check
from mishbench.shapes import Size
from mishbench.truth import Runner


COMPILE_S = 240.0  # the least time a compile request gets, whatever the per-call limit


def compile_backend(device: torch.device) -> str:
    """torch.compile's backend for a candidate: inductor on a GPU; on the CPU aot_eager -- dynamo's tracing
    and AOTAutograd, the parts a candidate's Python meets -- since inductor's C++ codegen took 11-17 s per
    candidate in a fresh worker on the 2-core machine (warm cache) and 26 s cold."""
    return "inductor" if device.type == "cuda" else "aot_eager"


class RemoteRunner(Runner):
    """verify.Runner over a WorkerProcess. Also collects what the worker observed for the anti-cheat checks."""

    def __init__(self, candidate: Candidate, device: torch.device, dtype: torch.dtype,
                 precision: Optional[str] = None, limits: Optional[Limits] = None):
        self.candidate, self.device, self.dtype = candidate, device, dtype
        self._precision = precision
        self.limits = limits or Limits.from_env()
        self.subject = str(candidate.path)
        self.proc: Optional[WorkerProcess] = None
        self.fatal: List[str] = []
        self.load_reply: Optional[Dict[str, Any]] = None
        self.observations: List[str] = []
        self.flag_changes: List[str] = []
        self.warnings: List[Dict[str, Any]] = []
        # Model's parameter name -> the candidate's, where they differ but pair up by shape (state_dict row).
        self.name_map: Dict[str, str] = {}
        # What the harness itself saw wrong in the outputs it got back, by kind (output_contract).
        self.contract_seen: Dict[str, Dict[str, Any]] = {}
        self.calls = 0
        self._init_cache: Dict[Tuple[Size, int], Dict[str, torch.Tensor]] = {}
        self._sent_state: Optional[Tuple[Any, ...]] = None
        self._state_serial = 0

    # -- process --------------------------------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self, kill: bool = False) -> None:
        """End the worker: gracefully between requests, or (kill) at once, e.g. on Ctrl-C mid-request."""
        if self.proc is not None:
            proc, self.proc = self.proc, None
            proc.close(graceful=not kill)

    def load(self) -> Dict[str, Any]:
        """Start the worker and import the candidate (builds included). The reply: ok, error, builds."""
        self.proc = WorkerProcess(self.candidate, self.device, self.limits)
        self._sent_state = None
        reply = self.proc.request({"op": "load", "device": str(self.device), "dtype": torch_dtype_name(self.dtype),
                                   "ref_layout": reference_layout()}, self.limits.load_s)
        self._note_env(reply)
        if self.load_reply is None:
            self.load_reply = reply
        return reply

    def request(self, message: Dict[str, Any], timeout: Optional[float] = None) -> Dict[str, Any]:
        if len(self.fatal) >= self.limits.max_fatal:
            raise CandidateError(f"not run: the candidate process failed {len(self.fatal)} times "
                                 f"(first: {self.fatal[0]})")
        if self.proc is None or self.proc.proc.poll() is not None:
            if self.proc is not None:
                self.proc.close()
            try:
                reply = self.load()
            except CandidateError as exc:  # a restart that crashes or hangs counts too: no restart loop
                self.fatal.append(str(exc))
                raise
            if not reply.get("ok"):
                raise CandidateError(f"candidate did not load: {reply.get('load_error')}")
        try:
            reply = self.proc.request(message, timeout or self.limits.call_s)  # type: ignore[union-attr]
        except CandidateError as exc:
            if self.proc is not None and self.proc.proc.poll() is not None:  # died or was killed
                self.fatal.append(str(exc))
                self._sent_state = None
            raise
        self.observations += [o for o in reply.get("observations") or [] if o not in self.observations]
        self._note_env(reply)
        return reply

    def _note_env(self, reply: Dict[str, Any]) -> None:
        """Flag changes and warnings the worker reports are cumulative; a restarted worker starts over, so
        what an earlier one reported is kept."""
        for line in reply.get("flag_changes") or []:
            if line not in self.flag_changes:
                self.flag_changes.append(line)
        for w in reply.get("warnings") or []:
            if isinstance(w, dict) and w not in self.warnings:
                self.warnings.append(w)

    def release(self) -> None:
        """Between bench cases, while the harness times its baselines: the worker drops its models, states and
        cached device memory and starts a new peak-memory count. A dead worker is not restarted for this."""
        if self.proc is None or self.proc.proc.poll() is not None:
            return
        self._sent_state = None  # the worker forgot the state: send it again next time
        self.request({"op": "release"})

    def _state_fields(self, state) -> Dict[str, Any]:
        """Send the state only when it changed since the last request (KernelBench's is 256 MB)."""
        fp = (id(state),) + tuple((k, v.data_ptr(), v._version, tuple(v.shape), str(v.dtype), str(v.device))
                                  for k, v in state.items())
        if self._sent_state is not None and self._sent_state[0] == fp:
            return {"state": None, "state_key": self._sent_state[1]}
        self._state_serial += 1
        self._sent_state = (fp, self._state_serial, state)  # keeps `state` alive so its ids are not reused
        return {"state": {k: v.detach().cpu() for k, v in state.items()}, "state_key": self._state_serial}

    # -- Runner interface -------------------------------------------------------------------------------
    def impl(self, device):
        return "candidate"

    def precision(self, dtype, device):
        return resolve_precision(self._precision, dtype, device)

    def construction_seed(self, seed: int) -> int:
        """The seed the candidate's process constructs its module under: derived from the run's seed (so
        `--seed` reproduces it) but never that seed, from which the inputs are drawn; a slow keyed hash, so
        the run's seed cannot be searched for from it."""
        key = hashlib.pbkdf2_hmac("sha256", str(int(seed)).encode(), b"mishbench construction seed", 20000)
        return int.from_bytes(key[:4], "big") & 0x7FFFFFFF

    def init_state(self, size, seed):
        key = (Size(*size), int(seed))
        if key not in self._init_cache:
            reply = self.request({"op": "init_state", "size": tuple(size), "seed": self.construction_seed(seed)})
            names = reply.get("names") or {}
            if isinstance(names, dict) and names:
                self.name_map = {str(k): str(v) for k, v in names.items()}
            self._init_cache = {key: reply["state"]}
        return self._init_cache[key]

    def _check_output(self, y, x: torch.Tensor, size) -> torch.Tensor:
        """What the harness checks itself on an output it got back: a tensor, x's dtype, Model's shape."""
        self.calls += 1
        if not isinstance(y, torch.Tensor):
            self._seen("type", f"the output is {type(y).__name__}, not a torch.Tensor")
            raise CandidateError(f"the candidate's output is {type(y).__name__}, not a Tensor")
        want = tuple(x.shape[:-1]) + (int(size[2]),)
        if y.dtype != x.dtype:
            self._seen("dtype", f"output dtype {y.dtype} for a {x.dtype} input (Model returns {x.dtype})")
        if tuple(y.shape) != want:
            self._seen("shape", f"output shape {tuple(y.shape)} for input {tuple(x.shape)} (Model: {want})")
        return y.to(x.device)

    def _seen(self, kind: str, text: str) -> None:
        f = self.contract_seen.setdefault(kind, {"count": 0, "first": text, "call": self.calls})
        f["count"] += 1

    def run(self, size, state, x, grad_y):
        msg = {"op": "run", "size": tuple(size), "x": x.detach().cpu(),
               "grad_y": grad_y.detach().cpu() if grad_y is not None else None}
        msg.update(self._state_fields(state))
        reply = self.request(msg)
        y = self._check_output(reply.get("y"), x, size)
        grads = reply.get("grads")
        if grads is not None:
            grads = {k: v.to(x.device) for k, v in grads.items() if isinstance(v, torch.Tensor)}
        return y, grads

    def run_seq(self, size, state, xs: List[torch.Tensor], keep: bool = False) -> List[torch.Tensor]:
        """xs through one reused input buffer; `keep`: every output held until the last call, then copied."""
        msg = {"op": "run_seq", "size": tuple(size), "xs": [x.detach().cpu() for x in xs], "keep": bool(keep)}
        msg.update(self._state_fields(state))
        reply = self.request(msg)
        return [self._check_output(y, x, size) for x, y in zip(xs, reply["ys"])]

    def contract(self) -> Dict[str, Any]:
        """The worker's own account of the outputs it saw (a second opinion): calls, findings by kind."""
        return self.request({"op": "contract"})

    def time_batches(self, size, state, xs: List[torch.Tensor], grad_y=None, rng: Optional[random.Random] = None,
                     batches: int = 5, target_ms: float = 50.0, check: int = 3) -> Dict[str, Any]:
        """The harness's clock: batches of calls on `xs` (rotated), timed here around each request (clock.py
        subtracts the round trip); after each batch, the outputs of `check` calls the harness picks only
        then (from `rng`, which the candidate cannot see) come back for judging. Returns the harness's
        per-call Timing, the worker's own per-call claims (host, and CUDA events), and the checked outputs
        as (call index, output)."""
        msg = {"op": "batch_setup", "size": tuple(size), "xs": [x.detach().cpu() for x in xs],
               "grad_y": grad_y.detach().cpu() if grad_y is not None else None}
        msg.update(self._state_fields(state))
        self.request(msg)
        rng = rng or random.Random()
        checked: List[Tuple[int, torch.Tensor]] = []
        peak: Dict[str, Any] = {}

        def after(reply):
            n = int(reply["n"])
            picks = sorted(rng.sample(range(n), min(check, n)))
            got = self.request({"op": "batch_outputs", "indices": picks})
            peak["mb"] = got.get("peak_mem_mb")
            peak["inputs_changed"] = peak.get("inputs_changed") or bool(got.get("inputs_changed"))
            for i, y in zip(picks, got["ys"]):
                checked.append((i, self._check_output(y, xs[i % len(xs)], size)))

        res = clock.time_batches(lambda n: self.request({"op": "batch", "n": int(n)}),
                                 lambda: self.request({"op": "ping"}), batches=batches, target_ms=target_ms,
                                 flush_device=self.device if self.device.type == "cuda" else None, after=after)
        host = [float(r["host_ms"]) / res.n for r in res.replies]
        event = [float(r["event_ms"]) / res.n for r in res.replies if r.get("event_ms") is not None]
        return {"timing": res.timing, "n": res.n, "round_trip_ms": res.round_trip_ms,
                "worker_host": clock.summarize(host), "worker_event": clock.summarize(event) if event else None,
                "checked": checked, "peak_mem_mb": peak.get("mb"), "inputs_changed": bool(peak.get("inputs_changed"))}

    def train(self, size, state, xs, targets, steps, lr, momentum):
        msg = {"op": "train", "size": tuple(size), "xs": [x.detach().cpu() for x in xs],
               "targets": [t.detach().cpu() for t in targets], "steps": int(steps), "lr": float(lr),
               "momentum": float(momentum)}
        msg.update(self._state_fields(state))
        reply = self.request(msg)
        losses = [float(v) for v in reply.get("losses") or []]
        final = {k: v for k, v in (reply.get("state") or {}).items()}
        odd = [k for k, v in final.items() if not isinstance(v, torch.Tensor)]
        if odd:
            raise CandidateError(f"the candidate's final parameter {odd[0]} is not a Tensor")
        return losses, final

    def grad_mode(self, mode, size, state, x, grad_y):
        msg = {"op": "grad_mode", "mode": str(mode), "size": tuple(size), "x": x.detach().cpu(),
               "grad_y": grad_y.detach().cpu() if grad_y is not None else None}
        msg.update(self._state_fields(state))
        reply = self.request(msg)
        y = self._check_output(reply.get("y"), x, size)
        grads = {k: v.to(x.device) for k, v in (reply.get("grads") or {}).items() if isinstance(v, torch.Tensor)}
        after = reply.get("upstream_after")
        facts = {"upstream_after": after.to(x.device) if isinstance(after, torch.Tensor) else None,
                 "grad_written": [str(n) for n in reply.get("grad_written") or []]}
        return y, grads, facts

    def call_error(self, size, x, param_device, param_dtype):
        reply = self.request({"op": "call_error", "size": tuple(size), "x": x.detach().cpu(),
                              "x_device": str(x.device), "param_device": str(param_device),
                              "param_dtype": torch_dtype_name(param_dtype)})
        return reply.get("raised")

    def compat(self, mode, size, state, x, grad_y=None):
        """The candidate under torch.compile, autocast, a CUDA graph, a save/load round trip or no_grad /
        inference_mode (protocol.compat_calls in its process); outputs and gradients are judged here. The
        serialization facts are re-derived here from tensors: the saved module's state_dict against the
        state sent, the loaded module's output (constructed under another seed) against the saved one's."""
        if mode not in COMPAT_MODES:
            raise NotImplementedError(f"unknown compat mode {mode!r}")
        msg = {"op": "compat", "mode": mode, "size": tuple(size), "x": x.detach().cpu(),
               "grad_y": grad_y.detach().cpu() if grad_y is not None else None,
               "fresh_seed": self.construction_seed(12345), "backend": compile_backend(self.device)}
        msg.update(self._state_fields(state))
        # torch.compile in a fresh process: inductor's codegen (GPU runs) can outlast a short per-call limit.
        reply = self.request(msg, max(self.limits.call_s, COMPILE_S) if mode == "compile" else None)
        y = reply.get("y")
        if mode.startswith("autocast:") and isinstance(y, torch.Tensor):
            y = y.to(x.device)  # autocast's own dtype: the check compares it with Model's
        else:
            y = self._check_output(y, x, size)
        if not isinstance(y, torch.Tensor):
            raise CandidateError(f"the candidate's output under {mode} is {type(y).__name__}, not a Tensor")
        grads = reply.get("grads")
        if grads is not None:
            grads = {k: v.to(x.device) for k, v in grads.items() if isinstance(v, torch.Tensor)}
        facts = dict(reply.get("facts") or {})
        if mode == "serialization":
            before, saved = reply.get("y_before"), reply.get("state") or {}
            facts["outputs_equal"] = (isinstance(before, torch.Tensor) and before.dtype == y.dtype
                                      and before.shape == y.shape and torch.equal(before.to(y.device), y))
            facts["state_equal"] = set(saved) == set(state) and all(
                isinstance(saved[k], torch.Tensor) and saved[k].dtype == x.dtype and saved[k].shape == v.shape
                and torch.equal(saved[k], v.detach().cpu().to(x.dtype)) for k, v in state.items())
        return y, grads, facts

    def gradcheck(self, size, device):
        """torch.autograd.gradcheck run HERE, through an autograd Function whose forward and backward are
        requests to the worker: a candidate that patches gradcheck in its own process gains nothing."""
        gen = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(shape, generator=gen, dtype=torch.float64).to(device).requires_grad_()
                   for shape in ((size.batch, size.in_features), (size.out_features, size.in_features),
                                 (size.out_features,)))
        runner = self

        class Remote(torch.autograd.Function):
            @staticmethod
            def forward(ctx, xx, ww, bb):
                ctx.save_for_backward(xx, ww, bb)
                y, _ = runner.run(size, {"linear.weight": ww.detach(), "linear.bias": bb.detach()}, xx, None)
                return y

            @staticmethod
            def backward(ctx, gy):
                xx, ww, bb = ctx.saved_tensors
                _, g = runner.run(size, {"linear.weight": ww.detach(), "linear.bias": bb.detach()}, xx, gy)
                g = g or {}
                return g.get("x"), g.get("linear.weight"), g.get("linear.bias")

        try:
            ok = torch.autograd.gradcheck(Remote.apply, (x, w, b), eps=1e-6, atol=1e-6, rtol=1e-5,
                                          raise_exception=True)
        except CandidateError:
            raise
        except Exception as exc:  # noqa: BLE001 - gradcheck reports through its exception
            return False, " ".join(str(exc).split())[:300]
        return bool(ok), ""


def reference_layout() -> List[Tuple[str, List[str]]]:
    """Model's state_dict entries in creation order, each dimension named 'in' or 'out' (read off a Model
    of 2 in and 3 out features), for the worker to pair a candidate's differently named parameters with."""
    names = {2: "in", 3: "out"}
    return [(k, [names.get(int(d), "?") for d in v.shape]) for k, v in Model(2, 3).state_dict().items()]


# --------------------------------------------------------------------------------------------- build
def build_check(candidate: Candidate, reply: Optional[Dict[str, Any]], error: str, device: torch.device) -> Check:
    """The `build` row: inline extensions compiled (errors mapped to candidate lines), or why not."""
    parsed = candidate.parsed
    origin = "" if candidate.origin == "file" else f"from {candidate.origin}: "
    metrics: Dict[str, Any] = {"source": candidate.origin}
    if parsed.tree is None:
        line = int(re.search(r"line (\d+)", parsed.syntax_error).group(1)) \
            if re.search(r"line (\d+)", parsed.syntax_error) else 0
        return Check("build", "fail", f"{origin}the code does not parse: candidate line {line}: "
                                      f"{parsed.syntax_error.split(': ', 1)[-1]}", metrics)
    builds = (reply or {}).get("builds") or []
    metrics["extensions"] = [b.get("name") for b in builds]
    failed = [b for b in builds if not b.get("ok")]
    if failed:
        from mishbench.op.build import parse_errors
        b = failed[0]
        log = str(b.get("error", ""))
        log_path = Path(b.get("build_dir") or tempfile.gettempdir()) / "mishbench_build.log"
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.write_text(log)
        except OSError:
            log_path = Path("(not written)")
        errors = map_compiler_errors(parse_errors(log), b.get("sources") or {}, b.get("build_dir", ""), parsed)
        first = "; ".join(errors[:3]) if errors else " ".join(log.split())[:300]
        return Check("build", "fail", f"{origin}inline extension {b.get('name')!r} failed to build: {first}; "
                                      f"full log: {log_path}", metrics)
    if error:
        if builds and device.type != "cuda" and "cuda" in error.lower():
            return Check("build", "pass", f"{origin}{len(builds)} inline extension(s) compiled for sm "
                                          f"{os.environ.get('TORCH_CUDA_ARCH_LIST') or DEFAULT_ARCH_NO_GPU}; "
                                          f"not loadable without a GPU ({error[:150]})", metrics)
        return Check("build", "fail", f"{origin}importing the candidate failed: {error}", metrics)
    usage = kernel_usage(parsed)
    if builds:
        secs = sum(float(b.get("seconds", 0.0)) for b in builds)
        return Check("build", "pass", f"{origin}{len(builds)} inline extension(s) built and loaded "
                                      f"({', '.join(str(b.get('name')) for b in builds)}; {secs:.1f} s incl. cache)",
                     metrics)
    if not usage:
        return Check("build", "warn", f"{origin}no custom kernel: plain PyTorch (nothing to build)", metrics)
    return Check("build", "pass", f"{origin}nothing to build; custom kernels via {', '.join(usage)}", metrics)
