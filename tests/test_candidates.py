"""`verify --candidate`: every file in tests/candidates/ gets exactly the failing checks its header names.

Header lines (first lines of the file; `<!-- ... -->` in markdown):
  expect: fail=a,b      checks that must fail or error on the CPU (and on the GPU unless expect-cuda says)
  expect: usage         the file is not a candidate at all (CandidateUsageError, exit 2)
  expect-cuda: fail=…   the failing checks on a GPU
  expect-cpu: skip-dynamic   a CUDA-kernel candidate: on the CPU only its build runs
  expect-warn: a,b      checks that must say warn
  expect-timeout: N     per-call time limit (hang candidates)
"""
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mishbench import candidate as cand
from mishbench.candidate_static import Parsed, check_deprecated, check_fallback, check_imports
from mishbench.cli import app
from mishbench.shapes import Size

HERE = Path(__file__).resolve().parent / "candidates"
SIZE = [Size(33, 17, 9)]  # small: the whole CPU suite must stay well under 3 minutes on 2 cores
SEED = 1234
CUDA_FILES = {"cuda_fused_ok.py", "broken_compile.py"}


def header(path: Path) -> dict:
    out = {}
    for line in path.read_text().splitlines()[:6]:
        m = re.match(r"^(?:#|<!--)\s*(expect(?:-\w+)?):\s*(.*?)\s*(?:-->)?$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def names(spec: str, prefix: str = "fail=") -> set:
    spec = spec[len(prefix):] if spec.startswith(prefix) else spec
    return {s.strip() for s in spec.split(",") if s.strip()}


def failing(report) -> set:
    bad = set()
    for c in report.checks:
        if c.status not in ("fail", "error"):
            continue
        # Known gap in verify.check_bad_inputs (reported to the lead): F.linear's own 0-dim message ("need to
        # be at least 1D, but they are 0D") does not contain the word "dim", so plain PyTorch — the reference
        # itself — fails it. Tolerated here only when that is the sole bad_inputs finding.
        if c.name == "bad_inputs" and re.fullmatch(r"0-dim input: error does not name the problem \('RuntimeError: "
                                                   r"both arguments to (?:linear|matmul) need to be at least 1D.*?'\)", c.detail):
            continue
        bad.add(c.name)
    return bad


def limits(h: dict) -> cand.Limits:
    return cand.Limits(call_s=float(h.get("expect-timeout", 60)), load_s=600)


CPU_FILES = sorted(p.name for p in HERE.iterdir()
                   if p.name not in CUDA_FILES and header(p).get("expect", "").startswith("fail="))


@pytest.mark.parametrize("name", CPU_FILES)
def test_candidate_on_cpu(name):
    path = HERE / name
    h = header(path)
    report = cand.verify_candidate(path, torch.device("cpu"), torch.float32, seed=SEED, sizes=SIZE, limits=limits(h))
    details = {c.name: f"{c.status}: {c.detail}" for c in report.checks}
    assert failing(report) == names(h["expect"]), details
    for w in names(h.get("expect-warn", "")):
        assert details[w].startswith("warn"), details[w]
    if names(h["expect"]):
        assert not report.ok  # the CLI exits 1
    d = report.to_dict()
    assert d["impl"] == "candidate" and d["subject"] == str(path) and d["seed"] == SEED
    assert len(d["candidate_sha256"]) == 64
    assert {"anti_cheat_streams", "anti_cheat_roofline"} <= set(details)
    assert details["anti_cheat_streams"].startswith("skip") or failing(report)


def test_answer_says_which_block_was_taken():
    report = cand.verify_candidate(HERE / "answer.md", torch.device("cpu"), torch.float32, seed=SEED, sizes=SIZE)
    build = next(c for c in report.checks if c.name == "build")
    assert "block 2 of 2 (lines 13-24)" in build.detail, build.detail


@pytest.mark.parametrize("text,why", [
    ("no code at all", "none of its 0"),
    ("```python\ndef forward(x):\n    return x\n```\n", "none of its 1"),
])
def test_answers_without_modelnew_are_usage_errors(tmp_path, text, why):
    f = tmp_path / "answer.md"
    f.write_text(text)
    with pytest.raises(cand.CandidateUsageError, match=why):
        cand.load_candidate(f)
    with pytest.raises(cand.CandidateUsageError, match="defines no class ModelNew"):
        (tmp_path / "x.py").write_text("import torch\n")
        cand.load_candidate(tmp_path / "x.py")
    with pytest.raises(cand.CandidateUsageError, match="cannot read"):
        cand.load_candidate(tmp_path / "missing.py")


def test_cli_exit_codes():
    runner = CliRunner()
    bad = runner.invoke(app, ["verify", "--device", "cpu", "--sizes", "33x17x9", "--seed", "3",
                              "--candidate", str(HERE / "cheat_tf32.py")])
    assert bad.exit_code == 1, bad.output
    usage = runner.invoke(app, ["verify", "--device", "cpu", "--candidate", str(HERE / "answer_without_model.md")])
    assert usage.exit_code == 2, usage.output


def test_worker_environment_is_scrubbed(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    env = cand.worker_env(str(tmp_path), torch.device("cuda"), "9.0", tmp_path / "ext")
    assert "AWS_SECRET_ACCESS_KEY" not in env and env["HOME"] == str(tmp_path)
    assert env["CUDA_VISIBLE_DEVICES"] == "0" and env["TORCH_CUDA_ARCH_LIST"] == "9.0"
    assert set(env) <= {"HOME", "TMPDIR", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "TORCH_EXTENSIONS_DIR",
                        "TORCH_CUDA_ARCH_LIST", "LANG", "PATH", "CUDA_HOME", "CUDA_VISIBLE_DEVICES",
                        "LD_LIBRARY_PATH", "OMP_NUM_THREADS"}


def test_static_deprecated_finds_cpp_and_python_apis():
    src = ('import torch\nfrom torch.cuda.amp import custom_fwd\nsrc = """\n#include <torch/extension.h>\n'
           'void f(torch::Tensor x) {\n  AT_DISPATCH_FLOATING_TYPES(x.type(), "f", [&] {});\n'
           '  AT_CHECK(x.is_cuda(), "x");\n  float* p = x.data<float>();\n}\n"""\n'
           'torch.testing.assert_allclose(1, 1)\n')
    check = check_deprecated(Parsed(src))
    assert check.status == "fail"
    for what in ("line 2: torch.cuda.amp.custom_fwd", "line 6: Tensor::type()", "line 7: AT_CHECK",
                 "line 8: Tensor::data<T>()", "line 11: torch.testing.assert_allclose"):
        assert what in check.detail, check.detail


def test_static_imports_and_fallback():
    assert check_imports(Parsed("import os, math\nimport torch.nn as nn\nfrom typing import List\n")).status == "pass"
    bad = check_imports(Parsed("import triton\nimport triton.language as tl\nfrom . import x\n"))
    assert bad.status == "fail" and "triton (line 1)" in bad.detail
    fb = ("from torch.utils.cpp_extension import load_inline\nk = load_inline('k', '', functions=['f'])\n"
          "def f(x):\n    try:\n        return k.f(x)\n    except RuntimeError:\n        return x.relu()\n")
    assert check_fallback(Parsed(fb)).status == "warn"
    honest = fb.replace("return x.relu()", "raise")
    assert check_fallback(Parsed(honest)).status == "pass"


def _nvcc_matches_torch() -> bool:
    from mishbench.build import _cuda_version, resolve_cuda_home
    home = resolve_cuda_home()
    if not home or not shutil.which("ninja") and not (Path(os.sys.executable).parent / "ninja").exists():
        return False
    version = _cuda_version(home) or ""
    return bool(torch.version.cuda) and version.split(".")[0] == torch.version.cuda.split(".")[0]


needs_nvcc = pytest.mark.skipif(not _nvcc_matches_torch(),
                                reason="needs nvcc of the CUDA major version torch was built with")


@pytest.mark.build
@pytest.mark.slow  # nvcc + torch headers: 1-4 min per build on 2 cores (cached after)
@needs_nvcc
def test_cuda_candidate_compiles_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("covered by the cuda test on this machine")
    report = cand.verify_candidate(HERE / "cuda_fused_ok.py", torch.device("cpu"), torch.float32, seed=SEED,
                                   sizes=SIZE)
    st = {c.name: c for c in report.checks}
    assert st["build"].status == "pass", st["build"].detail
    assert st["forward"].status == "skip" and "CUDA GPU" in st["forward"].detail
    assert report.ok and not report.complete


@pytest.mark.build
@pytest.mark.slow  # nvcc + torch headers: 1-4 min per build on 2 cores (cached after)
@needs_nvcc
def test_compile_error_maps_to_candidate_line():
    report = cand.verify_candidate(HERE / "broken_compile.py", torch.device("cpu"), torch.float32, seed=SEED,
                                   sizes=SIZE)
    build = next(c for c in report.checks if c.name == "build")
    assert build.status == "fail", build.detail
    assert re.search(r"candidate line 65 \(cuda\.cu:\d+\): .*undeclared_count", build.detail), build.detail
    assert "full log:" in build.detail


GPU_FILES = sorted(p.name for p in HERE.iterdir() if header(p).get("expect", "").startswith("fail="))


@pytest.mark.cuda
@pytest.mark.parametrize("name", GPU_FILES)
def test_candidate_on_gpu(name):
    path = HERE / name
    h = header(path)
    report = cand.verify_candidate(path, torch.device("cuda"), torch.float32, seed=SEED,
                                   sizes=[Size(1024, 8192, 8192)], limits=limits(h))
    details = {c.name: f"{c.status}: {c.detail}" for c in report.checks}
    assert failing(report) == names(h.get("expect-cuda", h["expect"])), details
