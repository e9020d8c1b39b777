"""Build and load the mishbench CUDA extension (``csrc/``) with torch.utils.cpp_extension + ninja.

The compiled library is cached in ``$MISHBENCH_CACHE`` (default ``~/.cache/mishbench``) under a key that hashes
the csrc sources, the torch version, the CUDA toolkit version, the Python version and the arch list, so a
cached build is loaded directly (no ninja run, no compiler probe) and any change rebuilds.

Public API: :func:`build` (compile, report errors), :func:`load` (build if needed, never raises for the
expected failures: no nvcc, compile error, load error), :func:`status`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from mishbench.op.toolchain import (cuda_version, default_arch_list, feature_flags, find_toolkit, gencode_flags,
                                    parse_arch_list, parse_errors, point_torch_at, resolve_cuda_home)

EXT_NAME = "mishbench_C"
_SO_NAME = EXT_NAME + ".so"
_STAMP = "build.json"
# Accuracy is part of the contract: no --use_fast_math (DESIGN.md, fp32 bar = 2x eager's error).
_CXX_FLAGS = ["-O3"]
_NVCC_FLAGS = ["-O3", "-lineinfo", "-Xptxas=-v"]  # -v: registers/spills per kernel land in the build log
# Bumped when the flags above change meaning, so old caches are not reused.
_FLAGS_VERSION = "2"  # 2: -DMISHBENCH_SM90A (feature_flags)

_state: Dict[str, object] = {"module": None, "reason": None, "so_path": None}


@dataclasses.dataclass
class BuildResult:
    ok: bool
    module_path: Optional[str]
    cache_dir: str
    log_path: Optional[str]
    seconds: float
    errors: List[str]
    cuda_home: Optional[str]
    arch_list: List[str]
    reason: str = ""


def csrc_dir() -> Path:
    """Sources: ``mishbench/csrc`` in an installed wheel, ``<repo>/csrc`` in a checkout."""
    package = Path(__file__).resolve().parents[1]  # mishbench/
    packaged = package / "csrc"
    return packaged if packaged.is_dir() else package.parent / "csrc"


def _sources(root: Path) -> List[Path]:
    return sorted(p for p in root.iterdir() if p.suffix in (".cpp", ".cu"))


def _hashed_files(root: Path) -> List[Path]:
    return sorted(p for p in root.iterdir() if p.suffix in (".cpp", ".cu", ".cuh", ".h"))


# --------------------------------------------------------------------------------------------- CUDA_HOME
def cache_root() -> Path:
    env = os.environ.get("MISHBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mishbench"


def build_key(archs: List[str], cuda_version: Optional[str]) -> str:
    import torch

    h = hashlib.sha256()
    for p in _hashed_files(csrc_dir()):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    meta = [torch.__version__, str(torch.version.cuda), str(cuda_version), ";".join(archs),
            "py%d.%d" % sys.version_info[:2], _FLAGS_VERSION]
    h.update("|".join(meta).encode())
    return h.hexdigest()[:16]


def loaded_elsewhere(so: Path) -> Optional[str]:
    """The path of a mishbench library this process has already loaded, when that is not `so`.

    A process can register the mishbench ops from one library only: dlopen of a second build (another arch
    list or cache) runs its TORCH_LIBRARY initialiser again, which throws from inside dlopen and aborts the
    process ("Only a single TORCH_LIBRARY can be used to register the namespace mishbench", seen here).
    """
    import torch

    seen = [str(_state["so_path"])] if _state.get("so_path") else []
    seen += [p for p in getattr(torch.ops, "loaded_libraries", ()) if Path(p).name == _SO_NAME]
    target = os.path.realpath(str(so))
    for path in seen:
        if os.path.realpath(path) != target:
            return path
    return None


def _one_library_message(other: str) -> str:
    return (f"this process already loaded the mishbench ops from {other}; a process can register them from "
            "one library only: build or load another arch list or cache in a new process")


def _import_so(so: Path):
    """Load the built library: its static initialisers register torch.ops.mishbench.*."""
    importlib.import_module("torch")  # libtorch must be loaded first: the .so links against it
    other = loaded_elsewhere(so)
    if other is not None:
        raise ImportError(_one_library_message(other))
    spec = importlib.util.spec_from_file_location(EXT_NAME, str(so))
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {so}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    _state["so_path"] = str(so)
    return module


class _Tee:
    """Routes fd 1/2 (ninja and nvcc output) into the log file for the duration of a build, and feeds
    ninja's "[i/n] ..." progress lines to a callback."""

    def __init__(self, log_path: Path, progress: Optional[Callable[[str], None]]):
        self.log_path, self.progress = log_path, progress
        self._stop = threading.Event()

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self._log = open(self.log_path, "w")
        self._saved = (os.dup(1), os.dup(2))
        os.dup2(self._log.fileno(), 1)
        os.dup2(self._log.fileno(), 2)
        if self.progress is not None:
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def _watch(self):
        pos = 0
        while True:
            stopping = self._stop.wait(0.5)
            try:
                with open(self.log_path) as f:
                    f.seek(pos)
                    chunk = f.read()
                    pos = f.tell()
            except OSError:
                chunk = ""
            for line in chunk.splitlines():
                if re.match(r"^\[\d+/\d+\]", line):
                    try:
                        self.progress(line[:160])  # type: ignore[misc]
                    except Exception:
                        pass
            if stopping:
                return

    def __exit__(self, *exc):
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self._log.close()
        self._stop.set()
        if self.progress is not None:
            self._thread.join()
        return False


def build(arch: Optional[str] = None, force: bool = False, verbose: bool = False,
          progress: Optional[Callable[[str], None]] = None) -> BuildResult:
    """Compile csrc/ into the cache (a cached build is reused unless ``force``). Builds without a GPU when
    ``arch`` or ``TORCH_CUDA_ARCH_LIST`` names the targets. Never raises for expected failures."""
    t0 = time.perf_counter()
    cuda_home = find_toolkit()
    root = cache_root()

    def fail(reason: str, archs: List[str], cache: Path = root, log: Optional[Path] = None,
             errors: Optional[List[str]] = None) -> BuildResult:
        _state["reason"] = reason
        return BuildResult(False, None, str(cache), str(log) if log else None, time.perf_counter() - t0,
                           errors or [], cuda_home, archs, reason)

    try:
        archs = default_arch_list(arch)
    except ValueError as e:
        return fail(str(e), [])
    if cuda_home is None:
        return fail("nvcc not found: install the CUDA toolkit or set CUDA_HOME", archs)
    key = build_key(archs, cuda_version(cuda_home))
    cache = root / key
    so, log_path = cache / _SO_NAME, cache / "build.log"
    if so.exists() and (cache / _STAMP).exists() and not force:
        return BuildResult(True, str(so), str(cache), str(log_path), time.perf_counter() - t0, [], cuda_home,
                           archs)
    # torch's JIT build loads what it compiled into this process: refuse rather than abort (loaded_elsewhere).
    other = loaded_elsewhere(so)
    if other is not None:
        return fail(_one_library_message(other), archs)
    cache.mkdir(parents=True, exist_ok=True)
    # A failed rebuild must not leave an older .so that looks like success: drop both before compiling.
    for stale in (cache / _STAMP, so):
        if stale.exists():
            stale.unlink()

    point_torch_at(cuda_home)
    import torch.utils.cpp_extension as cpp

    # Our -gencode flags mention 'arch', so torch adds none; keep TORCH_CUDA_ARCH_LIST parseable by old
    # torch parsers anyway ('9.0a' -> '9.0') while we build, and restore it after.
    saved_list = os.environ.get("TORCH_CUDA_ARCH_LIST")
    os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(a.rstrip("af").replace("a+", "+") for a in archs)
    srcs = [str(p) for p in _sources(csrc_dir())]
    err: Optional[BaseException] = None
    try:
        with _Tee(log_path, progress):
            print(f"mishbench build: cuda_home={cuda_home} archs={archs} sources={srcs}", flush=True)
            try:
                # is_python_module=False: torch builds and then loads the .so with torch.ops.load_library.
                cpp.load(name=EXT_NAME, sources=srcs, extra_cflags=_CXX_FLAGS,
                         extra_cuda_cflags=_NVCC_FLAGS + gencode_flags(archs) + feature_flags(archs), extra_include_paths=[
                             str(csrc_dir())], build_directory=str(cache), verbose=True, with_cuda=True,
                         is_python_module=False)
            except BaseException as e:  # noqa: BLE001 (compile errors, load errors without a driver, ...)
                err = e
                print(f"mishbench build: {type(e).__name__}: {e}", flush=True)
    finally:
        if saved_list is None:
            os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = saved_list
    log = log_path.read_text(errors="replace") if log_path.exists() else ""
    if verbose:
        sys.stdout.write(log)
    if not so.exists():
        errors = parse_errors(log, limit=20) or ([f"{type(err).__name__}: {err}".splitlines()[0]] if err else [])
        return fail(f"compile failed (see {log_path})", archs, cache, log_path, errors)
    (cache / _STAMP).write_text(json.dumps({"archs": archs, "cuda_home": cuda_home, "key": key}))
    if err is not None:
        # Compiled, but torch could not load it here (e.g. no driver): still a successful build.
        _state["reason"] = f"built, but loading failed: {type(err).__name__}: {str(err).splitlines()[0]}"
    return BuildResult(True, str(so), str(cache), str(log_path), time.perf_counter() - t0, [], cuda_home, archs)


def load(arch: Optional[str] = None):
    """The extension module (building it first if needed), or None with the reason kept for status().
    Registers torch.ops.mishbench.* as a side effect. Never raises for no nvcc / compile / load failures."""
    if _state["module"] is not None:
        return _state["module"]
    try:
        import torch

        if arch is None and not torch.cuda.is_available():
            _state["reason"] = "no CUDA GPU visible"
            return None
        res = build(arch=arch)
        if not res.ok:
            _state["reason"] = res.reason + ("; " + res.errors[0] if res.errors else "")
            return None
        # Importing a .so that build() already loaded through torch is cheap: dlopen returns the same handle
        # and the op registrations do not run twice.
        module = _import_so(Path(res.module_path))  # type: ignore[arg-type]
        _state.update(module=module, reason=None)
        return module
    except Exception as e:  # noqa: BLE001
        _state["reason"] = f"{type(e).__name__}: {e}"
        return None


def status() -> dict:
    """Whether the extension is built for the current key, where, and why the last attempt failed."""
    info: dict = {"cache_root": str(cache_root()), "loaded": _state["module"] is not None,
                  "reason": _state["reason"], "csrc": str(csrc_dir())}
    home = resolve_cuda_home()
    info["cuda_home"] = home
    try:
        archs = default_arch_list(None)
    except ValueError as e:
        info.update(built=False, arch_list=[], reason=info["reason"] or str(e))
        return info
    except Exception as e:  # noqa: BLE001 (torch missing or broken)
        info.update(built=False, arch_list=[], reason=f"{type(e).__name__}: {e}")
        return info
    info["arch_list"] = archs
    if home is None:
        info.update(built=False, reason=info["reason"] or "nvcc not found")
        return info
    cache = cache_root() / build_key(archs, cuda_version(home))
    info["cache_dir"] = str(cache)
    info["built"] = (cache / _SO_NAME).exists() and (cache / _STAMP).exists()
    return info
