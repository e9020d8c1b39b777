"""CLI exit codes and one-line errors (DESIGN.md: 0 ok, 1 check failed, 2 usage error naming the value)."""
import pytest
from typer.testing import CliRunner

from mishbench.cli import app

from cli_helpers import cli_output

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


# ------------------------------------------------------------------------- flags before torch (issue 17)
PROBE = """
import sys
sys.argv = ["mishbench"] + sys.argv[1:]
from mishbench.cli import app
try:
    app()
except SystemExit as exc:
    code = exc.code
heavy = [m for m in ("torch", "torch._dynamo", "pandas", "matplotlib") if m in sys.modules]
sys.stderr.write("\\nPROBE exit=%s heavy=%s\\n" % (code, ",".join(heavy)))
"""


def probe(*args, env=None):
    """Run the CLI in a fresh interpreter; (exit code, heavy modules imported, stderr)."""
    import os
    import subprocess
    import sys
    full_env = dict(os.environ, **(env or {}))
    out = subprocess.run([sys.executable, "-c", PROBE] + list(args), capture_output=True, text=True, env=full_env,
                         timeout=120)
    line = [ln for ln in out.stderr.splitlines() if ln.startswith("PROBE ")][-1]
    code = line.split("exit=")[1].split()[0]
    heavy = [m for m in line.split("heavy=")[1].strip().split(",") if m]
    return (int(code) if code.lstrip("-").isdigit() else code), heavy, out.stderr + out.stdout


@pytest.mark.parametrize("args, needle", [
    (["verify", "--dtype", "fp8"], "fp8"),
    (["verify", "--precision", "fast"], "fast"),
    (["verify", "--dtype", "bf16", "--precision", "3xtf32"], "3xtf32"),
    (["verify", "--sizes", "12x3"], "12x3"),
    (["verify", "--device", "tpu"], "tpu"),
    (["bench", "--mode", "bogus"], "bogus"),
    (["bench", "--baselines", "eager,fast"], "fast"),
    (["bench", "--preset", "huge"], "huge"),
    (["bench", "--dtype", "int8"], "int8"),
    (["build", "--arch", "bogus"], "bogus"),
])
def test_usage_errors_answer_before_torch_is_imported(args, needle):
    code, heavy, text = probe(*args)
    assert code == 2, text
    assert needle in text and "Traceback" not in text
    assert heavy == [], f"imported {heavy} before printing a usage error"


def test_help_does_not_import_torch():
    for args in (["--help"], ["verify", "--help"], ["bench", "--help"], ["report", "--help"]):
        code, heavy, text = probe(*args)
        assert code == 0, text
        assert heavy == [], f"{args}: imported {heavy}"


def test_no_color_is_respected():
    _, _, coloured = probe("verify", "--dtype", "fp8", env={"FORCE_COLOR": "1", "TERM": "xterm-256color"})
    assert "\x1b[" in coloured and "31m" in coloured  # the red "error:"
    _, _, plain = probe("verify", "--dtype", "fp8", env={"FORCE_COLOR": "1", "NO_COLOR": "1"})
    assert "31m" not in plain and "fp8" in plain


# ------------------------------------------------------------------------- build
def test_bad_arch_is_a_usage_error_naming_the_item_and_the_forms():
    result = invoke("build", "--arch", "8.0;bogus")
    out = cli_output(result)
    assert result.exit_code == 2, out
    assert "'bogus'" in out and "9.0a" in out and "+PTX" in out


def test_build_failure_says_why_first_then_errors_then_the_log(monkeypatch):
    from mishbench.op import build as mb
    errors = [f"/x/csrc/k.cu:{i}: identifier \"v{i}\" is undefined" for i in range(30)]
    res = mb.BuildResult(False, None, "/cache", "/cache/abc/build.log", 3.0, errors, "/usr/local/cuda", ["8.0"],
                         "compile failed (see /cache/abc/build.log)")
    monkeypatch.setattr(mb, "build", lambda **kw: res)
    result = invoke("build", "--arch", "8.0")
    out = cli_output(result)
    assert result.exit_code == 1
    lines = out.strip().splitlines()
    assert lines[0].startswith("build failed") and "compile failed" in lines[0]
    assert sum("identifier" in ln for ln in lines) == 20 and "k.cu:19:" in out and "k.cu:20:" not in out
    assert lines[-1] == "full log: /cache/abc/build.log"

    no_arch = mb.BuildResult(False, None, "/cache", None, 0.1, [], None, [],
                             "no CUDA GPU visible and no arch given: pass --arch or set TORCH_CUDA_ARCH_LIST")
    monkeypatch.setattr(mb, "build", lambda **kw: no_arch)
    out = cli_output(invoke("build"))
    assert "no CUDA GPU visible" in out.splitlines()[0] and "full log" not in out and "None" not in out


def test_cuda_home_is_the_toolkit_info_shows(monkeypatch, tmp_path):
    from mishbench.op import toolchain
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.setattr(toolchain, "find_toolkit", lambda: str(tmp_path))
    assert toolchain.export_cuda_home() == str(tmp_path)
    import os
    assert os.environ["CUDA_HOME"] == str(tmp_path)
    monkeypatch.setenv("CUDA_HOME", "/mine")
    assert toolchain.export_cuda_home() == "/mine"  # the user's choice stands


# ------------------------------------------------------------------------- outputs, --json -, --strict
def test_output_paths_are_checked_before_any_work(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for args in (["verify", "--json", str(blocker / "x.json")], ["verify", "--json", str(tmp_path)],
                 ["bench", "--out", str(blocker / "x.csv")], ["report", "--csv", str(blocker / "w.csv")],
                 ["report", "--plot", str(blocker / "p.png")]):
        code, heavy, text = probe(*args)
        assert code == 2 and heavy == [], (args, text)
        assert args[-1].split("/")[-1] in text or "folder" in text
    fresh = tmp_path / "new" / "x.json"
    from mishbench.outfiles import check_writable
    check_writable(fresh, "--json")
    assert fresh.parent.is_dir() and not fresh.exists()  # checked by creating it, then removed again


def test_a_failed_late_write_keeps_the_results_and_says_where(tmp_path, monkeypatch):
    from mishbench import outfiles
    target = tmp_path / "out.json"
    calls = []

    def write(p):
        calls.append(p)
        if p == target:
            raise PermissionError(13, "Permission denied")
        p.write_text("{}")

    where = outfiles.write_with_fallback(target, write)
    assert where != target and where.read_text() == "{}" and where.name.startswith("out.kept-")
    assert calls[0] == target


def _fake_report(skip=True):
    from mishbench.schema import Check, Report
    rep = Report(device="cpu", gpu="", dtype="fp32", precision="ieee", impl="composite", seed=1, subject="builtin")
    rep.add(Check("forward", "pass", "ok"))
    if skip:
        rep.add(Check("cuda_graph", "skip", "needs a CUDA GPU"))
    return rep


def _stub_verify(monkeypatch, rep):
    from mishbench import cli
    monkeypatch.setattr(cli, "_device", lambda name: "cpu")
    monkeypatch.setattr(cli, "_torch_dtype", lambda name: name)
    monkeypatch.setattr(cli, "_verify_report", lambda *a, **k: rep)


def _split_runner():
    try:
        return CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        return CliRunner()


def test_json_dash_writes_json_to_stdout_and_the_table_to_stderr(monkeypatch):
    import json
    _stub_verify(monkeypatch, _fake_report(skip=False))
    result = _split_runner().invoke(app, ["verify", "--json", "-"])
    assert result.exit_code == 0, cli_output(result)
    data = json.loads(result.stdout)
    assert data["checks"][0]["name"] == "forward"
    assert "PASSED" in result.stderr and "PASSED" not in result.stdout


def test_strict_failure_says_skips_failed_the_run_and_which(monkeypatch):
    _stub_verify(monkeypatch, _fake_report(skip=True))
    relaxed = invoke("verify")
    assert relaxed.exit_code == 0 and "INCOMPLETE" in cli_output(relaxed)
    strict = invoke("verify", "--strict")
    out = cli_output(strict)
    assert strict.exit_code == 1
    assert "under --strict" in out and "skipped checks fail the run" in out and "cuda_graph" in out
    assert "INCOMPLETE: passed" not in out


def test_json_write_failure_after_the_run_keeps_the_report(monkeypatch, tmp_path):
    from mishbench import cli, outfiles
    _stub_verify(monkeypatch, _fake_report(skip=False))
    target = tmp_path / "r.json"
    monkeypatch.setattr(cli.outfiles, "check_writable", lambda p, f: None)
    real = outfiles.write_with_fallback

    def failing_first(path, write):
        def wrapped(p):
            if p == target:
                raise OSError(28, "No space left on device")
            write(p)
        return real(path, wrapped)

    monkeypatch.setattr(cli.outfiles, "write_with_fallback", failing_first)
    result = invoke("verify", "--json", str(target))
    out = cli_output(result)
    assert result.exit_code == 1 and "kept in" in out
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("r.kept-")]
    assert kept and '"forward"' in kept[0].read_text()


def test_bench_rows_that_cannot_be_appended_are_kept_and_the_end_says_where(tmp_path, monkeypatch):
    from rich.console import Console
    from mishbench.bench import sink as sink_mod
    from mishbench.schema import new_row, read_rows
    target = tmp_path / "out.csv"
    real = sink_mod.append_rows

    def append(path, rows):
        if path == target and rows:
            raise OSError(28, "No space left on device")
        return real(path, rows)

    monkeypatch.setattr(sink_mod, "append_rows", append)
    s = sink_mod.Sink(target, resume=False)
    s.open()
    written = []
    s.write([new_row(impl="eager", mode="fwd", status="ok", batch=1, in_features=2, out_features=3)], written)
    con = Console(record=True, width=200)
    assert sink_mod.finish(con, "", written, target) == 1
    text = con.export_text()
    assert "No space left on device" in text and "kept in" in text
    assert len(read_rows(s.path)) == 1 and s.path != target
