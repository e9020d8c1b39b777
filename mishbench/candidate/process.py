"""The candidate's process: `python -m mishbench.candidate.worker` in a temporary working directory with a
scrubbed environment, its own session (process group), a memory limit on CPU runs and a deadline per
request (the first request imports the candidate, so it covers the inline build). A crash, a hang, a CUDA
fault or monkey-patching stays in that process; the harness sees a CandidateError.
"""
import dataclasses
import hashlib
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
from typing import Any, Dict

import torch

from mishbench.candidate import protocol
from mishbench.candidate.source import Candidate, CandidateUsageError

# The folder that holds the mishbench package: the worker imports it from there.
PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])
# nvcc needs an arch to compile without a GPU; Hopper is the card this project targets.
DEFAULT_ARCH_NO_GPU = "9.0"


class CandidateError(RuntimeError):
    """The candidate raised, crashed or hung during a request: the check it happened in reports it."""


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
    from mishbench.op.build import resolve_cuda_home
    env = {"HOME": tmp, "TMPDIR": tmp, "PYTHONPATH": PACKAGE_PARENT, "PYTHONDONTWRITEBYTECODE": "1",
           "TORCH_EXTENSIONS_DIR": str(ext_dir), "TORCH_CUDA_ARCH_LIST": arch, "LANG": "C.UTF-8",
           # The interpreter's bin/ first: ninja lives beside python in a virtual environment.
           "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "/usr/bin:/bin")])}
    # torch.compile's caches outlive the run, shared by candidates (not with the harness): with a fresh HOME
    # and TMPDIR inductor rebuilt its runtime every time, 26 s of a 32 s CPU compile check (2 cores).
    shared = ext_dir.parent / "compile-cache"
    env["TORCHINDUCTOR_CACHE_DIR"] = str(shared / "inductor")
    env["TRITON_CACHE_DIR"] = str(shared / "triton")
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
        (Path(self.tmp) / protocol.CANDIDATE_FILE).write_text("\n" * candidate.line_offset + candidate.source)
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
        self.proc = subprocess.Popen([sys.executable, "-m", "mishbench.candidate.worker"], cwd=self.tmp,
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
        data = protocol.encode(message)
        try:
            self._write(data, deadline)
            head = self._read(protocol.HEADER.size, deadline)
            (n,) = protocol.HEADER.unpack(head)
            if n > protocol.MAX_MESSAGE:
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
            reply = protocol.decode(body)
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
