"""Build tests: compile csrc/ with nvcc (no GPU needed), and unit tests of the build helpers (no nvcc needed).

The compile test takes minutes; it is marked ``build``. Archs come from ``MISHBENCH_TEST_ARCHS``
(default "8.0;9.0a"; use one arch on the torch 2.0 leg).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mishbench.op import build as mb


# ---------------------------------------------------------------------------------------- CUDA_HOME
def _fake_toolkit(root: Path) -> Path:
    nvcc = root / "cuda-99.9" / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_bytes(b"\x7fELF fake binary")
    return nvcc


def _wrapper(path: Path, target: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\nexec {target} "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_cuda_home_env_wins(tmp_path):
    assert mb.resolve_cuda_home({"CUDA_HOME": str(tmp_path)}, which=lambda _: None) == os.path.realpath(tmp_path)
    assert mb.resolve_cuda_home({"CUDA_PATH": str(tmp_path)}, which=lambda _: None) == os.path.realpath(tmp_path)


def test_cuda_home_follows_wrapper_script(tmp_path):
    real = _fake_toolkit(tmp_path)
    wrapper = _wrapper(tmp_path / "usr" / "bin" / "nvcc", real)
    home = mb.resolve_cuda_home({}, which=lambda name: str(wrapper) if name == "nvcc" else None)
    assert home == os.path.realpath(tmp_path / "cuda-99.9")


def test_cuda_home_follows_chained_wrappers_and_symlinks(tmp_path):
    real = _fake_toolkit(tmp_path)
    link = tmp_path / "cuda" / "bin" / "nvcc"
    link.parent.mkdir(parents=True)
    link.symlink_to(real)
    inner = _wrapper(tmp_path / "w1" / "nvcc", link)
    outer = _wrapper(tmp_path / "w2" / "nvcc", inner)
    home = mb.resolve_cuda_home({}, which=lambda name: str(outer) if name == "nvcc" else None)
    assert home == os.path.realpath(tmp_path / "cuda-99.9")


def test_cuda_home_plain_binary(tmp_path):
    real = _fake_toolkit(tmp_path)
    assert mb.resolve_cuda_home({}, which=lambda _: str(real)) == os.path.realpath(tmp_path / "cuda-99.9")


# ---------------------------------------------------------------------------------------- arches, errors
def test_arch_parsing_and_gencode():
    assert mb.parse_arch_list("8.0;9.0a") == ["8.0", "9.0a"]
    assert mb.parse_arch_list("80 90a,8.6+PTX") == ["8.0", "9.0a", "8.6+PTX"]
    assert mb.gencode_flags(["8.0", "9.0a", "8.6+PTX"]) == [
        "-gencode=arch=compute_80,code=sm_80",
        "-gencode=arch=compute_90a,code=sm_90a",
        "-gencode=arch=compute_86,code=sm_86",
        "-gencode=arch=compute_86,code=compute_86",
    ]
    with pytest.raises(ValueError, match="bad CUDA arch"):
        mb.parse_arch_list("hopper")


def test_wgmma_only_with_an_sm90a_image():
    # The host launches the wgmma kernels only when an sm_90a image exists (their bodies are empty elsewhere).
    assert mb.feature_flags(["8.0", "9.0a"]) == ["-DMISHBENCH_SM90A=1"]
    assert mb.feature_flags(["9.0a+PTX"]) == ["-DMISHBENCH_SM90A=1"]
    assert mb.feature_flags(["8.0", "9.0"]) == []


def test_error_parsing():
    log = "\n".join([
        "[1/5] nvcc ... gemm_simt.cu",
        "/work/csrc/gemm_simt.cu(42): error: identifier \"foo\" is undefined",
        "/work/csrc/gemm_simt.cu(42): error: identifier \"foo\" is undefined",
        "/work/csrc/mishbench.cpp:17:3: error: 'bar' was not declared in this scope",
        "/work/csrc/x.cpp:5:10: fatal error: missing.h: No such file or directory",
        "/usr/bin/ld: cannot find -lcudart: No such file or directory",
        "ptxas info    : Used 40 registers",
        "warning: something harmless",
    ])
    assert mb.parse_errors(log) == [
        '/work/csrc/gemm_simt.cu:42: identifier "foo" is undefined',
        "/work/csrc/mishbench.cpp:17: 'bar' was not declared in this scope",
        "/work/csrc/x.cpp:5: missing.h: No such file or directory",
        "ld: cannot find -lcudart: No such file or directory",
    ]
    assert mb.parse_errors("all good\n") == []


def test_csrc_found():
    root = mb.csrc_dir()
    assert (root / "mishbench.cpp").exists() and (root / "gemm.h").exists()


def test_a_second_library_is_refused_not_loaded(tmp_path, monkeypatch):
    """Loading a second mishbench build into a process aborts it (TORCH_LIBRARY registers the namespace
    once, and throws from inside dlopen): _import_so and build() refuse with a message instead."""
    import torch
    import torch.utils.cpp_extension as cpp

    other, target = tmp_path / "a" / "mishbench_C.so", tmp_path / "cache" / "mishbench_C.so"
    monkeypatch.setattr(torch.ops, "loaded_libraries", set())
    monkeypatch.setitem(mb._state, "so_path", str(other))
    assert mb.loaded_elsewhere(target) == str(other)
    assert mb.loaded_elsewhere(other) is None
    with pytest.raises(ImportError, match="one library only"):
        mb._import_so(target)

    monkeypatch.setenv("MISHBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(mb, "find_toolkit", lambda: str(tmp_path / "cuda"))
    monkeypatch.setattr(mb, "cuda_version", lambda home: "12.0")
    monkeypatch.setattr(cpp, "load", lambda *a, **k: pytest.fail("compiled and loaded a second library"))
    res = mb.build(arch="8.0", force=True)
    assert not res.ok and "one library only" in res.reason and str(other) in res.reason


# ---------------------------------------------------------------------------------------- the compile
@pytest.mark.build
def test_compile_csrc(built_extension, monkeypatch):
    res = built_extension.res
    assert res.ok, f"build failed: {res.reason}\n" + "\n".join(res.errors) + f"\nlog: {res.log_path}"
    assert res.module_path and Path(res.module_path).exists()
    assert res.arch_list == built_extension.archs

    # A second build with the same key is a cache hit: no compiler run.
    monkeypatch.setenv("MISHBENCH_CACHE", str(built_extension.cache))
    again = mb.build(arch=";".join(built_extension.archs))
    assert again.ok and again.module_path == res.module_path and again.seconds < 5

    # The schemas, where this machine can load the library.
    import torch

    if built_extension.module is None:
        pytest.skip(f"built, but the library cannot be loaded here: {built_extension.load_error}")
    schema = str(torch.ops.mishbench.linear_mish_mish.default._schema)
    assert schema == "mishbench::linear_mish_mish(Tensor x, Tensor weight, Tensor bias, str precision) -> Tensor"
    assert "bool[3] output_mask" in str(torch.ops.mishbench.linear_mish_mish_bwd.default._schema)
