"""The CUDA toolchain the extension is built with: which toolkit (nvcc wrappers followed to the real
folder), its version, the arch list and its -gencode flags, and the first compiler errors of a build log."""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable, List, Mapping, Optional


_WRAPPER_EXEC = re.compile(r"""^\s*exec\s+["']?([^\s"']*nvcc)["']?""", re.MULTILINE)


def _follow_wrapper(path: str, depth: int = 0) -> str:
    """If ``path`` is a small shell script that ``exec``s another nvcc, return that nvcc (recursively)."""
    try:
        if depth > 8 or os.path.getsize(path) > 16384:
            return path
        with open(path, "rb") as f:
            head = f.read(16384)
    except OSError:
        return path
    if not head.startswith(b"#!"):
        return path  # a real binary
    m = _WRAPPER_EXEC.search(head.decode("utf-8", "replace"))
    if not m:
        return path
    target = m.group(1)
    if not os.path.isabs(target):
        found = shutil.which(target)
        if not found:
            return path
        target = found
    if os.path.realpath(target) == os.path.realpath(path):
        return path
    return _follow_wrapper(target, depth + 1)


def resolve_cuda_home(environ: Optional[Mapping[str, str]] = None,
                      which: Callable[[str], Optional[str]] = shutil.which) -> Optional[str]:
    """The CUDA toolkit folder: ``CUDA_HOME``/``CUDA_PATH`` when set; else the folder above ``bin/nvcc``
    of the ``nvcc`` on PATH, after following wrapper scripts (``exec /real/bin/nvcc "$@"``) and symlinks;
    else ``/usr/local/cuda`` if it has nvcc. None when nothing is found."""
    env = os.environ if environ is None else environ
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if env.get(var):
            return os.path.realpath(env[var])
    nvcc = which("nvcc")
    if nvcc:
        real = os.path.realpath(_follow_wrapper(nvcc))
        bindir = os.path.dirname(real)
        if os.path.basename(bindir) == "bin":
            return os.path.dirname(bindir)
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return os.path.realpath("/usr/local/cuda")
    return None


def cuda_version(cuda_home: str) -> Optional[str]:
    vj = Path(cuda_home) / "version.json"
    try:
        return json.loads(vj.read_text())["cuda"]["version"]
    except (OSError, ValueError, KeyError):
        pass
    try:
        out = subprocess.run([str(Path(cuda_home) / "bin" / "nvcc"), "--version"], capture_output=True,
                             text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release ([\d.]+)", out)
    return m.group(1) if m else None


# ------------------------------------------------------------------------------------------------ arches
def parse_arch_list(spec: str) -> List[str]:
    """``"8.0;9.0a"``, ``"8.0 9.0a"``, ``"80,90a"`` or ``"8.0+PTX"`` -> normalised ``["8.0", "9.0a"]``."""
    out: List[str] = []
    for tok in re.split(r"[;,\s]+", spec.strip()):
        if not tok:
            continue
        m = re.fullmatch(r"(?:sm_)?(\d+)\.?(\d)([af]?)(\+PTX)?", tok, flags=re.IGNORECASE)
        if not m:
            raise ValueError(f"bad CUDA arch {tok!r} (expected e.g. 8.0, 9.0a, 8.6+PTX)")
        arch = f"{m.group(1)}.{m.group(2)}{m.group(3).lower()}" + ("+PTX" if m.group(4) else "")
        if arch not in out:
            out.append(arch)
    if not out:
        raise ValueError(f"empty CUDA arch list {spec!r}")
    return out


def gencode_flags(archs: List[str]) -> List[str]:
    """Our own -gencode flags: torch 2.0's parser rejects '9.0a', and passing flags that mention 'arch'
    makes torch (2.0 and 2.14 alike) add none of its own."""
    flags = []
    for a in archs:
        ptx = a.endswith("+PTX")
        num = a.replace("+PTX", "").replace(".", "")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    return flags


def feature_flags(archs: List[str]) -> List[str]:
    """Host-visible macros for what the device images contain: MISHBENCH_SM90A when an sm_90a image is
    built, so the host launches the wgmma kernels (their bodies are empty in every other image)."""
    return ["-DMISHBENCH_SM90A=1"] if any(a.replace("+PTX", "") == "9.0a" for a in archs) else []


def default_arch_list(arch: Optional[str] = None) -> List[str]:
    """``arch`` if given; else the visible GPU (9.0 -> 9.0a so the Hopper code builds); else
    ``TORCH_CUDA_ARCH_LIST``. Raises ValueError when none applies."""
    if arch:
        return parse_arch_list(arch)
    import torch

    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return [f"{major}.{minor}" + ("a" if (major, minor) == (9, 0) else "")]
    env = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if env:
        return parse_arch_list(env)
    raise ValueError("no CUDA GPU visible and no arch given: pass --arch or set TORCH_CUDA_ARCH_LIST")


# ------------------------------------------------------------------------------------------------ errors
_ERR_PATTERNS = [
    re.compile(r"^(?P<file>[^\s:()][^:()]*)\((?P<line>\d+)\): (?:catastrophic )?error(?: #[\w-]+)?: (?P<msg>.*)$"),
    re.compile(r"^(?P<file>[^\s:][^:]*):(?P<line>\d+):(?:\d+:)? (?:fatal )?error: (?P<msg>.*)$"),
]
_OTHER_ERR = re.compile(r"^(?:ptxas|nvlink|/usr/bin/ld|ld|collect2)[^:]*:?\s*(?:fatal )?error\s*:?\s*(?P<msg>.*)$",
                        re.IGNORECASE)
_LD_ERR = re.compile(r"^(?:/usr/bin/)?ld: (?P<msg>.*)$")


def parse_errors(log: str, limit: int = 5) -> List[str]:
    """First compiler errors of a build log as ``"file:line: message"`` (nvcc ``f(12): error: m``, gcc
    ``f:12:3: error: m``), then linker/ptxas errors as ``"tool: message"``; duplicates dropped."""
    errors: List[str] = []
    for raw in log.splitlines():
        line = raw.strip()
        item = None
        for pat in _ERR_PATTERNS:
            m = pat.match(line)
            if m:
                item = f"{m.group('file')}:{m.group('line')}: {m.group('msg').strip()}"
                break
        if item is None:
            m = _OTHER_ERR.match(line) or _LD_ERR.match(line)
            if m and ("error" in line.lower() or "cannot find" in line or "undefined reference" in line):
                item = f"{line.split(':', 1)[0].split('/')[-1]}: {m.group('msg').strip()}"
        if item and item not in errors:
            errors.append(item)
            if len(errors) >= limit:
                break
    return errors


# ------------------------------------------------------------------------------------------------- cache


def find_toolkit() -> Optional[str]:
    home = resolve_cuda_home()
    if home is None or not (Path(home) / "bin" / "nvcc").exists():
        return None
    return home


def export_cuda_home() -> Optional[str]:
    """Put the toolkit `info` shows into CUDA_HOME before torch.utils.cpp_extension (imported by
    torch.compile's Inductor too) looks for one: it otherwise takes the folder above the first `nvcc` on
    PATH -- a wrapper script's folder here -- and warns "No CUDA runtime is found, using CUDA_HOME=..." with
    a path that contradicts `info`. Leaves a CUDA_HOME the user set alone; does nothing without a toolkit."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    home = find_toolkit()
    if home is not None:
        os.environ["CUDA_HOME"] = home
    return home


def point_torch_at(home: str) -> None:
    # torch computes CUDA_HOME once, at import of cpp_extension, from `which nvcc`; a wrapper script makes
    # that the wrong folder (then linking fails on -lcudart). Set the environment first (so a first import
    # finds it) and the module global too (for an earlier import).
    os.environ["CUDA_HOME"] = home
    import torch.utils.cpp_extension as cpp  # ~0.3 s to import: only when we really compile

    cpp.CUDA_HOME = home
