"""`--candidate FILE`: load an untrusted ModelNew, run it in its own process, check it (issue 6).

Loading: a `.py` file, or a text/markdown answer from which the ```python block defining `ModelNew` is taken.
Isolation: the candidate runs in `python -m mishbench.candidate_worker`, started in a temporary working
directory with a scrubbed environment, its own session (process group), a memory limit on CPU runs and a
time limit per request (the first request imports the candidate, so it covers the inline build). A crash, a
hang, a CUDA fault or monkey-patching stays in that process; the harness reports it as a check `error`.
Trust boundary: reference outputs and gradients are computed only here; the worker gets inputs and
parameters and returns outputs (candidate_worker.py documents the protocol). `RemoteRunner` is a
`verify.Runner`, so the candidate meets the same Verifier checks as our ModelNew; the static checks are in
candidate_static.py and the anti-cheat checks in candidate_checks.py.
"""
import dataclasses
import hashlib
import math
import os
import re
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from . import candidate_worker as cw
from . import envinfo
from .checks import Check, Report
from .candidate_static import Parsed, kernel_usage, map_compiler_errors, static_checks, uses_cuda
from .precision import dtype_name, resolve_precision
from .shapes import Size
from .verify import Runner, Verifier, new_seed

PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent)
DYNAMIC_CHECKS = ["forward", "backward", "param_count", "init", "state_dict", "gradcheck", "training", "shapes"]
ANTI_CHEAT_CHECKS = ["anti_cheat_input_mutation", "anti_cheat_output_aliasing", "anti_cheat_stale_output",
                     "anti_cheat_backend_flags", "anti_cheat_streams", "anti_cheat_determinism",
                     "anti_cheat_roofline"]
# nvcc needs an arch to compile without a GPU; Hopper is the card this project targets.
DEFAULT_ARCH_NO_GPU = "9.0"


class CandidateUsageError(ValueError):
    """The file cannot be a candidate at all (missing, or no ModelNew): a usage error, exit 2."""


class CandidateError(RuntimeError):
    """The candidate raised, crashed or hung during a request: the check it happened in reports it."""


# ------------------------------------------------------------------------------------------- loading
@dataclasses.dataclass
class Candidate:
    path: Path
    source: str  # the Python code that runs
    sha256: str  # of the whole file as given
    origin: str  # "file" or "block 2 of 3 (lines 12-60)"
    line_offset: int = 0  # candidate-file line of the code's first line, minus 1

    @property
    def parsed(self) -> Parsed:
        return Parsed(self.source, self.line_offset)


_FENCE = re.compile(r"^(?P<fence>```+|~~~+)[ \t]*(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=fence)[ \t]*$",
                    re.MULTILINE | re.DOTALL)
_DEFINES = re.compile(r"^\s*class\s+ModelNew\b|^ModelNew\s*=", re.MULTILINE)


def load_candidate(path) -> Candidate:
    """Read FILE: a .py is the code; anything else is an answer whose ```python block defining ModelNew is
    taken (the last such block: answers refine their code). CandidateUsageError where none does."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CandidateUsageError(f"cannot read {str(path)!r}: {exc.strerror}") from None
    sha = hashlib.sha256(raw).hexdigest()
    text = raw.decode("utf-8", errors="replace")
    if path.suffix == ".py":
        if not _DEFINES.search(text):
            raise CandidateUsageError(f"{path} defines no class ModelNew")
        return Candidate(path, text, sha, "file")
    blocks = [m for m in _FENCE.finditer(text) if m.group("lang").lower() in ("python", "py", "python3")]
    picks = [(i, m) for i, m in enumerate(blocks) if _DEFINES.search(m.group("body"))]
    if not picks:
        raise CandidateUsageError(f"{path}: none of its {len(blocks)} ```python block(s) defines class ModelNew")
    i, m = picks[-1]
    first = text.count("\n", 0, m.start("body")) + 1
    last = first + m.group("body").count("\n") - 1
    return Candidate(path, m.group("body"), sha, f"```python block {i + 1} of {len(blocks)} (lines {first}-{last})",
                     first - 1)


# ----------------------------------------------------------------------------------------- isolation
@dataclasses.dataclass
class Limits:
    """call_s: per request; load_s: importing the candidate, its inline builds included; mem_gb: RLIMIT_AS
    of the worker on CPU runs (CUDA maps far more virtual address space than it uses, so GPU runs get no
    address-space limit — the card's own memory bounds them). Environment overrides:
    MISHBENCH_CANDIDATE_TIMEOUT, MISHBENCH_CANDIDATE_BUILD_TIMEOUT, MISHBENCH_CANDIDATE_MEM_GB."""
    call_s: float = 300.0
    load_s: float = 1200.0
    mem_gb: float = 32.0
    max_fatal: int = 2  # crashes/timeouts before the runner stops restarting the worker

    @classmethod
    def from_env(cls) -> "Limits":
        """CandidateUsageError (exit 2) naming the variable and its value when one is not a positive number."""
        def positive(var: str, default: float) -> float:
            raw = os.environ.get(var)
            if raw is None or raw.strip() == "":
                return default
            try:
                value = float(raw)
            except ValueError:
                value = float("nan")
            if not value > 0 or value == float("inf"):
                raise CandidateUsageError(f"{var}: expected a positive number, got {raw!r}")
            return value

        return cls(call_s=positive("MISHBENCH_CANDIDATE_TIMEOUT", cls.call_s),
                   load_s=positive("MISHBENCH_CANDIDATE_BUILD_TIMEOUT", cls.load_s),
                   mem_gb=positive("MISHBENCH_CANDIDATE_MEM_GB", cls.mem_gb))


def extension_cache(candidate: Candidate, arch: str) -> Path:
    """Inline builds are cached per candidate hash, torch and arch list (rebuilding costs ~1 min)."""
    root = Path(os.environ.get("MISHBENCH_CACHE", "") or Path.home() / ".cache" / "mishbench").expanduser()
    key = hashlib.sha256(f"{candidate.sha256}|{torch.__version__}|{arch}|{sys.version_info[:2]}".encode())
    return root / "candidates" / key.hexdigest()[:16]


def worker_env(tmp: str, device: torch.device, arch: str, ext_dir: Path) -> Dict[str, str]:
    """Only what a build and a run need; tokens, keys and the rest of the user's environment stay out."""
    from .build import resolve_cuda_home
    env = {"HOME": tmp, "TMPDIR": tmp, "PYTHONPATH": PACKAGE_PARENT, "PYTHONDONTWRITEBYTECODE": "1",
           "TORCH_EXTENSIONS_DIR": str(ext_dir), "TORCH_CUDA_ARCH_LIST": arch, "LANG": "C.UTF-8",
           # The interpreter's bin/ first: ninja lives beside python in a virtual environment.
           "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "/usr/bin:/bin")])}
    home = resolve_cuda_home()
    if home:
        env["CUDA_HOME"] = home
    # LD_LIBRARY_PATH: on some installs the CUDA driver/toolkit libraries are found only through it.
    for var in ("CUDA_VISIBLE_DEVICES", "LD_LIBRARY_PATH", "OMP_NUM_THREADS"):
        if os.environ.get(var):
            env[var] = os.environ[var]
    if device.type != "cuda":
        env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU run of a candidate never touches a GPU
    return env


_TORCH_LOG = re.compile(r"^[WIEF]\d{4} \d\d:\d\d:")  # torch's own glog-style lines are not the candidate's


class WorkerProcess:
    """One long-lived worker: request/response over pipes, a deadline per request, killpg on timeout."""

    def __init__(self, candidate: Candidate, device: torch.device, limits: Limits):
        self.candidate, self.device, self.limits = candidate, device, limits
        self.tmp = tempfile.mkdtemp(prefix="mishbench-candidate-")
        self.log_path = Path(self.tmp) / "worker.log"
        # Blank lines in front of a markdown answer's code block: the worker's tracebacks and line numbers
        # are then lines of the answer file, as the static findings' are.
        (Path(self.tmp) / cw.CANDIDATE_FILE).write_text("\n" * candidate.line_offset + candidate.source)
        if torch.cuda.is_available() and device.type == "cuda":
            major, minor = torch.cuda.get_device_capability(device)
            self.arch = os.environ.get("TORCH_CUDA_ARCH_LIST") or f"{major}.{minor}"
        else:
            self.arch = os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_ARCH_NO_GPU
        self.ext_dir = extension_cache(candidate, self.arch)
        self.ext_dir.mkdir(parents=True, exist_ok=True)
        mem = int(limits.mem_gb * 2**30) if device.type != "cuda" else None

        def preexec():  # in the child, before exec
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a segfaulting candidate leaves no core file
            if mem:
                resource.setrlimit(resource.RLIMIT_AS, (mem, mem))

        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "mishbench.candidate_worker"], cwd=self.tmp,
                                     env=worker_env(self.tmp, device, self.arch, self.ext_dir),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     start_new_session=True, preexec_fn=preexec, close_fds=True)

    def last_output(self) -> str:
        try:
            lines = [ln.strip() for ln in self.log_path.read_text(errors="replace").splitlines()
                     if ln.strip() and not _TORCH_LOG.match(ln)]
        except OSError:
            return ""
        return lines[-1][:200] if lines else ""

    def kill(self) -> None:
        # The whole group, also when the worker itself has already exited: nvcc, ninja, anything the
        # candidate started (a candidate that spawned `sleep` and then raised left 13 of them running).
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # the group is gone
        self.proc.wait()

    def close(self, graceful: bool = True) -> None:
        """graceful: EOF on its stdin and up to 10 s to exit between requests. Otherwise (Ctrl-C or an error
        mid-request, when the worker may be busy or half-way through a reply) SIGKILL to its group at once;
        the kill, the pipes and the temporary directory are dealt with even if the wait is interrupted."""
        try:
            if graceful and self.proc.poll() is None:
                try:
                    self.proc.stdin.close()
                    self.proc.wait(timeout=10)
                except (OSError, subprocess.TimeoutExpired):
                    pass
        finally:
            self.kill()
            for f in (self.proc.stdin, self.proc.stdout, self._log):
                try:
                    f.close()
                except OSError:
                    pass
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _died(self, what: str) -> CandidateError:
        rc = self.proc.wait()
        how = f"exit code {rc}"
        if rc < 0:
            try:
                how = f"killed by {signal.Signals(-rc).name}"
            except ValueError:
                pass
        last = self.last_output()
        return CandidateError(f"candidate process died ({how}) during {what}" + (f"; last output: {last!r}" if last else ""))

    def request(self, message: Dict[str, Any], timeout: float) -> Dict[str, Any]:
        what = str(message.get("op"))
        deadline = time.monotonic() + timeout
        data = cw.encode(message)
        try:
            self._write(data, deadline)
            head = self._read(cw.HEADER.size, deadline)
            (n,) = cw.HEADER.unpack(head)
            if n > cw.MAX_MESSAGE:
                raise CandidateError(f"garbled reply to {what} ({n} bytes announced)")
            body = self._read(n, deadline)
        except TimeoutError:
            self.kill()
            last = self.last_output()
            raise CandidateError(f"candidate timed out after {timeout:.0f} s during {what}"
                                 + (f"; last output: {last!r}" if last else "")) from None
        except (BrokenPipeError, EOFError):
            raise self._died(what) from None
        try:
            reply = cw.decode(body)
        except Exception as exc:  # noqa: BLE001 - e.g. weights_only refusing a pickled class
            raise CandidateError(f"garbled reply to {what}: {type(exc).__name__}: "
                                 f"{' '.join(str(exc).split())[:200]}") from None
        if not isinstance(reply, dict):
            raise CandidateError(f"garbled reply to {what}")
        if reply.get("error"):
            raise CandidateError(str(reply["error"]))
        return reply

    def _write(self, data: bytes, deadline: float) -> None:
        fd = self.proc.stdin.fileno()
        os.set_blocking(fd, False)
        view = memoryview(data)
        while view:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            _, w, _ = select.select([], [fd], [], min(left, 1.0))
            if not w:
                if self.proc.poll() is not None:
                    raise BrokenPipeError
                continue
            try:
                n = os.write(fd, view[:1 << 20])
            except BlockingIOError:
                continue
            view = view[n:]

    def _read(self, n: int, deadline: float) -> bytes:
        fd = self.proc.stdout.fileno()
        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            r, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not r:
                continue
            chunk = os.read(fd, min(n - len(buf), 1 << 22))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)


# ------------------------------------------------------------------------------------------- runner
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
        reply = self.proc.request({"op": "load", "device": str(self.device), "dtype": dtype_name_full(self.dtype)},
                                  self.limits.load_s)
        self.flag_changes = list(reply.get("flag_changes") or self.flag_changes)
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
        self.flag_changes = list(reply.get("flag_changes") or self.flag_changes)
        return reply

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

    def init_state(self, size, seed):
        key = (Size(*size), int(seed))
        if key not in self._init_cache:
            reply = self.request({"op": "init_state", "size": tuple(size), "seed": int(seed)})
            self._init_cache = {key: reply["state"]}
        return self._init_cache[key]

    def run(self, size, state, x, grad_y):
        msg = {"op": "run", "size": tuple(size), "x": x.detach().cpu(),
               "grad_y": grad_y.detach().cpu() if grad_y is not None else None}
        msg.update(self._state_fields(state))
        reply = self.request(msg)
        y = _tensor(reply.get("y"), "output").to(x.device)
        grads = reply.get("grads")
        if grads is not None:
            grads = {k: v.to(x.device) for k, v in grads.items() if isinstance(v, torch.Tensor)}
        return y, grads

    def run_seq(self, size, state, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        msg = {"op": "run_seq", "size": tuple(size), "xs": [x.detach().cpu() for x in xs]}
        msg.update(self._state_fields(state))
        reply = self.request(msg)
        return [_tensor(y, "output").to(xs[0].device) for y in reply["ys"]]

    def time(self, size, state, x, grad_y=None, warmup: int = 10, iters: int = 30, flush_bytes: int = 0,
             warmup_s: float = 0.1) -> Dict[str, Any]:
        msg = {"op": "time", "size": tuple(size), "x": x.detach().cpu(), "warmup": warmup, "iters": iters,
               "grad_y": grad_y.detach().cpu() if grad_y is not None else None, "flush_bytes": flush_bytes,
               "warmup_s": warmup_s}
        msg.update(self._state_fields(state))
        return self.request(msg, self.limits.call_s)

    def call_error(self, size, x, param_device, param_dtype):
        reply = self.request({"op": "call_error", "size": tuple(size), "x": x.detach().cpu(),
                              "x_device": str(x.device), "param_device": str(param_device),
                              "param_dtype": dtype_name_full(param_dtype)})
        return reply.get("raised")

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


def dtype_name_full(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _tensor(value, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise CandidateError(f"the candidate's {what} is {type(value).__name__}, not a Tensor")
    return value


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
        from .build import parse_errors
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


# ----------------------------------------------------------------------------------------- verify
def verify_candidate(path, device: torch.device, dtype: torch.dtype, precision: Optional[str] = None,
                     seed: Optional[int] = None, sizes: Optional[List[Size]] = None,
                     progress: Optional[Callable[[str], None]] = None, limits: Optional[Limits] = None) -> Report:
    """Every check for a candidate file: static, build, the Verifier's, anti-cheat. Raises
    CandidateUsageError (exit 2) when the file cannot be a candidate; everything else is in the Report."""
    from . import candidate_checks
    candidate = load_candidate(path)
    seed = new_seed() if seed is None else seed
    progress = progress or (lambda msg: None)
    report = Report(device=device.type, dtype=dtype_name(dtype), precision=resolve_precision(precision, dtype, device),
                    impl="candidate", seed=seed, subject=str(path), candidate_sha256=candidate.sha256,
                    gpu=envinfo.gpu_name(device) if device.type == "cuda" else "", env=envinfo.versions())
    parsed = candidate.parsed
    for check in static_checks(parsed):
        report.add(check)
    names = DYNAMIC_CHECKS + ANTI_CHEAT_CHECKS + ["bad_inputs"]
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
            report.add(verifier._guard(name, getattr(verifier, "check_" + name)))
        for check in candidate_checks.anti_cheat_checks(verifier, runner):
            report.add(check)
        # Last: a bad input may legitimately kill a CUDA kernel's process (device-side assert).
        report.add(verifier._guard("bad_inputs", verifier.check_bad_inputs))
    return report


# ------------------------------------------------------------------------------------------- bench
# CUDA errors after which the process's context is unusable: every later request would fail the same way.
_STICKY_CUDA = re.compile(r"illegal memory access|device-side assert|misaligned address|unspecified launch failure"
                          r"|illegal instruction", re.IGNORECASE)


class CandidateBench:
    """One candidate worker kept open for a whole bench run: bench alternates, case by case, its baselines
    (timed in the harness's own process, which the candidate never runs in) with `measure` here, without
    starting a process and importing (building) the candidate again for every case.

    `open()` starts the worker and loads the candidate; a candidate that does not load is no exception:
    `load_error` says why and every `measure` returns an 'error' row with it. A crash or timeout mid-run
    fails that case's row; the next `measure` restarts the worker, up to `Limits.max_fatal` failures, after
    which rows are 'error' at once; a sticky CUDA error (illegal address, device-side assert) counts as a
    crash, since the worker's CUDA context cannot run another case. `close()` ends the worker; as a context manager it is killed at once
    when an exception (Ctrl-C included) leaves the block."""

    def __init__(self, path, device: torch.device, dtype: torch.dtype, precision: Optional[str] = None,
                 seed: Optional[int] = None, limits: Optional[Limits] = None):
        self.candidate = load_candidate(path)  # CandidateUsageError here, before any process starts
        self.seed = new_seed() if seed is None else seed
        self.runner = RemoteRunner(self.candidate, device, dtype, precision, limits)
        self.device, self.dtype = device, dtype
        self.load_error: Optional[str] = None

    def open(self) -> "CandidateBench":
        if self.runner.proc is not None:
            return self  # already open
        try:
            reply = self.runner.load()
            self.load_error = None if reply.get("ok") else f"candidate did not load: {reply.get('load_error')}"
        except CandidateError as exc:
            self.load_error = str(exc)
        except Exception as exc:  # noqa: BLE001 - e.g. the process could not be started
            self.load_error = f"the candidate process did not start: {type(exc).__name__}: {exc}"
        except BaseException:
            self.runner.close(kill=True)
            raise
        if self.load_error:
            self.load_error = " ".join(self.load_error.split())
            self.runner.close()
        return self

    def close(self, kill: bool = False) -> None:
        self.runner.close(kill=kill)

    def __enter__(self):
        return self.open()

    def __exit__(self, exc_type, *exc):
        self.close(kill=exc_type is not None)
        return False

    def _row(self, size: Size, mode: str) -> Dict[str, Any]:
        return {"impl": "candidate", "mode": mode, "batch": size.batch, "in_features": size.in_features,
                "out_features": size.out_features, "candidate_sha256": self.candidate.sha256, "seed": self.seed}

    def error_row(self, size: Size, mode: str, detail: str) -> Dict[str, Any]:
        row = self._row(size, mode)
        row.update(status="error", detail=" ".join(detail.split()))
        return row

    def measure(self, size: Size, mode: str, warmup: int = 10, iters: int = 30) -> Dict[str, Any]:
        """Check one shape against float64 truth, then time it. Returns the candidate's part of a result
        row: median/p20/p80 ms (CUDA events), host_median_ms, rel_err, bar, status ok|mismatch|oom|error,
        detail (one line), peak_mem_mb, iters. Then the worker releases its device memory for the baselines
        of the next case. Only Ctrl-C and errors of the harness itself propagate (the worker is left as it
        is: close it with kill=True)."""
        if self.load_error:
            return self.error_row(size, mode, self.load_error)
        row = self._measure(size, mode, warmup, iters)
        if row.get("status") == "error" and _STICKY_CUDA.search(str(row.get("detail"))):
            self.runner.fatal.append(str(row["detail"]))
            self.runner.close(kill=True)  # the next measure starts a fresh worker (within Limits.max_fatal)
            return row
        try:
            self.runner.release()
        except CandidateError:
            pass  # a worker that died here is restarted by the next measure
        return row

    def _measure(self, size: Size, mode: str, warmup: int, iters: int) -> Dict[str, Any]:
        from .verify import make_inputs
        row = self._row(size, mode)
        gen = torch.Generator().manual_seed(self.seed)  # per case: a row does not depend on the cases before
        try:
            verifier = Verifier(self.runner, self.device, self.dtype, self.seed, sizes=[size])
            x = make_inputs(size, "rand", gen, self.device, self.dtype)
            cmps = verifier._compare(size, x, with_grad=(mode == "fwd_bwd"))
            worst = max(cmps, key=lambda c: c.err / c.bar if c.bar else math.inf)
            row.update(rel_err=worst.err, bar=worst.bar, precision=verifier.precision)
            state = self.runner.init_state(size, self.seed)
            grad_y = None
            if mode == "fwd_bwd":
                grad_y = torch.randn(size.batch, size.out_features, generator=gen,
                                     dtype=torch.float64).to(self.dtype)
            flush = 2 * torch.cuda.get_device_properties(self.device).L2_cache_size if self.device.type == "cuda" else 0
            t = self.runner.time(size, state, x, grad_y, warmup=warmup, iters=max(iters, 30), flush_bytes=flush)
        except CandidateError as exc:
            msg = " ".join(str(exc).split())
            row.update(status="oom" if "out of memory" in msg.lower() else "error", detail=msg)
            return row
        ev = sorted(t["event_ms"])
        row.update(median_ms=_quantile(ev, 0.5), p20_ms=_quantile(ev, 0.2), p80_ms=_quantile(ev, 0.8),
                   host_median_ms=_quantile(sorted(t["host_ms"]), 0.5), iters=len(ev),
                   peak_mem_mb=t.get("peak_mem_mb"),
                   status="ok" if all(c.ok for c in cmps) else "mismatch",
                   detail="" if all(c.ok for c in cmps) else f"rel_err {worst.err:.3g} > bar {worst.bar:.3g}")
        return row


def _quantile(values: List[float], q: float) -> float:
    if not values:
        return math.nan
    pos = q * (len(values) - 1)
    lo, hi = int(math.floor(pos)), int(math.ceil(pos))
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def bench_candidate_rows(path, sizes: List[Size], dtype: torch.dtype, precision: Optional[str], modes: List[str],
                         warmup: int = 10, iters: int = 30, seed: Optional[int] = None,
                         device: Optional[torch.device] = None,
                         progress: Optional[Callable[[str], None]] = None,
                         limits: Optional[Limits] = None) -> List[Dict[str, Any]]:
    """One row dict per (size, mode), in the order given, all from ONE worker (see CandidateBench.measure
    for the keys). Raises CandidateUsageError for a file that cannot be a candidate; a candidate that does
    not load gives rows with status 'error'."""
    device = device or torch.device("cuda")
    rows: List[Dict[str, Any]] = []
    with CandidateBench(path, device, dtype, precision, seed, limits) as cb:
        for size in sizes:
            for mode in modes:
                if progress:
                    progress(f"candidate {size} {mode}")
                rows.append(cb.measure(size, mode, warmup, iters))
    return rows
