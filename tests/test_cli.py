"""CLI exit codes and one-line errors (DESIGN.md: 0 ok, 1 check failed, 2 usage error naming the value)."""
import pytest
from typer.testing import CliRunner

from mishbench.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, list(args))


@pytest.mark.parametrize("args, needle", [
    (["verify", "--dtype", "fp8"], "fp8"),
    (["verify", "--precision", "fast"], "fast"),
    (["verify", "--dtype", "bf16", "--precision", "3xtf32"], "3xtf32"),
    (["verify", "--sizes", "12x3"], "12x3"),
    (["verify", "--sizes", "1x0x3"], "1x0x3"),
    (["verify", "--device", "tpu"], "tpu"),
    (["verify", "--candidate", "/no/such/file.py"], "/no/such/file.py"),
    (["verify", "--device", "cuda"], "cuda"),
])
def test_usage_errors_exit_2_naming_the_value(args, needle):
    if args[-1] == "cuda":
        import torch
        if torch.cuda.is_available():
            pytest.skip("a GPU is visible")
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert "Traceback" not in result.output


def test_unknown_flag_exits_2():
    assert invoke("verify", "--bogus").exit_code == 2


def test_info_runs_without_gpu():
    result = invoke("info")
    assert result.exit_code == 0, result.output
    assert "torch" in result.output


def test_run_without_gpu_verifies_on_cpu_and_says_why():
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    result = invoke("run")
    assert result.exit_code == 0, result.output
    assert "need a CUDA GPU" in result.output
    # PASSED, or INCOMPLETE where a GPU-only check (cuda_graph) says skip; never FAILED.
    assert "PASSED" in result.output or "INCOMPLETE" in result.output
    assert "FAILED" not in result.output


def test_python_m_mishbench_works():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "mishbench", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "verify" in out.stdout
