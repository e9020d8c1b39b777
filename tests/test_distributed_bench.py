"""`bench --distributed N`: DDP training steps timed with torchrun on the CPU (gloo), a failing and a
hanging rank, Ctrl-C, and the usage errors.

Each torchrun launch costs ~8-15 s on a 2-core CPU (torchrun and every rank import torch), so the passing
run is shared by the tests that read it, and the failure tests launch once each.
"""
import io
import math
import subprocess
import sys
import time

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from mishbench.bench import plan

from mishbench import schema as csvschema

from mishbench.distributed import launcher

from mishbench.bench import ddp as distributed_bench

from mishbench.distributed import worker as distributed_worker
from mishbench.cli import app
from mishbench.shapes import Size

from cli_helpers import cli_output

CPU_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: ranks would use NCCL")
SUBJECT = "mishbench"  # ModelNew rows are impl=mishbench; on the CPU their route says composite (DESIGN.md)


def opts_for(tmp_path, sizes=(Size(8, 16, 8),), n=2, **kw):
    base = dict(sizes=list(sizes), dtype=torch.float32, precision=None, modes=["fwd_bwd"], baselines=["eager"],
                warmup=1, iters=3, distributed=n, out=tmp_path / "r.csv", seed=7)
    base.update(kw)
    return plan.BenchOptions(**base)


def run_ddp(opts, **kw):
    out = io.StringIO()
    code = distributed_bench.run_distributed_bench(opts, Console(file=out, width=250), **kw)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    from mishbench.console import console
    out = tmp_path_factory.mktemp("ddp") / "r.csv"
    t0 = time.perf_counter()
    width, console.width = console.width, 250  # the table has 14 columns
    try:
        result = CliRunner().invoke(app, ["bench", "--sizes", "8x16x8", "--distributed", "2", "--iters", "3",
                                          "--warmup", "1", "--baselines", "eager", "--out", str(out)])
    finally:
        console.width = width
    return result, out, time.perf_counter() - t0


@CPU_ONLY
@pytest.mark.slow
def test_two_ranks_gloo_rows(cli_run):
    result, out, _ = cli_run
    text = cli_output(result)
    assert result.exit_code == 0, text
    rows = csvschema.read_rows(out)
    assert [(r["impl"], r["mode"], r["world_size"], r["status"]) for r in rows] == [
        ("eager", "fwd_bwd", "2", "ok"), (SUBJECT, "fwd_bwd", "2", "ok")]
    for r in rows:
        ms = float(r["median_ms"])
        assert math.isfinite(ms) and ms > 0
        assert 0 < float(r["p20_ms"]) <= ms <= float(r["p80_ms"])
        assert int(r["iters"]) >= plan.MIN_ITERS  # DESIGN.md's floor, even with --iters 3
        assert float(r["rel_err"]) < 1e-5 and r["gpu"] == "cpu" and r["precision"] == "ieee"
        assert r["speedup_vs_eager"] and r["tflops"]
        assert (r["batch"], r["in_features"], r["out_features"]) == ("8", "16", "8")
    assert rows[0]["run_id"] == rows[1]["run_id"]
    assert float(rows[1]["speedup_vs_eager"]) == pytest.approx(
        float(rows[0]["median_ms"]) / float(rows[1]["median_ms"]), rel=1e-3)
    assert "gloo on the CPU" in text and "per-rank median ms" in text and "DDP" in text, text


@CPU_ONLY
@pytest.mark.slow
def test_resume_skips_the_measured_case_without_torchrun(cli_run, monkeypatch):
    result, out, _ = cli_run
    assert result.exit_code == 0, cli_output(result)

    def never(*a, **k):
        raise AssertionError("torchrun started for a case already in --out")
    monkeypatch.setattr(launcher, "start_torchrun", never)
    again = CliRunner().invoke(app, ["bench", "--sizes", "8x16x8", "--distributed", "2", "--baselines", "eager",
                                     "--resume", "--out", str(out)])
    assert again.exit_code == 0, cli_output(again)
    assert "1 case(s) already in" in cli_output(again)
    # A single-process row of the same shape is another measurement (world_size is part of the key).
    single = dict(csvschema.read_rows(out)[0], world_size="1")
    assert csvschema.row_key(single) != csvschema.row_key(csvschema.read_rows(out)[0])


@CPU_ONLY
@pytest.mark.slow
def test_failing_rank_gives_error_rows_and_keeps_finished_cases(tmp_path, monkeypatch):
    # The first case runs 2 x (30 timed + 1 warm-up + 2 round-start) = 66 steps; step 100 is in the second.
    monkeypatch.setenv(distributed_worker.FAULT_ENV, "raise:1:100")
    opts = opts_for(tmp_path, sizes=(Size(8, 16, 8), Size(6, 5, 3)))
    t0 = time.perf_counter()
    code, text = run_ddp(opts, collective_timeout=20)
    assert time.perf_counter() - t0 < 100
    assert code == 1, text
    rows = csvschema.read_rows(opts.out)
    assert [(r["batch"], r["impl"], r["status"], r["world_size"]) for r in rows] == [
        ("8", "eager", "ok", "2"), ("8", SUBJECT, "ok", "2"), ("6", "eager", "error", "2"),
        ("6", SUBJECT, "error", "2")]
    assert rows[2]["median_ms"] == "" and rows[3]["speedup_vs_eager"] == ""
    assert "rank1" in text and "injected fault" in text and "case 6x5x3" in text, text


@CPU_ONLY
@pytest.mark.slow
def test_hanging_rank_ends_in_error_rows(tmp_path, monkeypatch):
    monkeypatch.setenv(distributed_worker.FAULT_ENV, "hang:1")
    opts = opts_for(tmp_path)
    t0 = time.perf_counter()
    code, text = run_ddp(opts, collective_timeout=4, case_timeout=60)
    assert time.perf_counter() - t0 < 100  # the collective timeout ends it
    assert code == 1, text
    rows = csvschema.read_rows(opts.out)
    assert [(r["impl"], r["status"]) for r in rows] == [("eager", "error"), (SUBJECT, "error")]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_interrupt_kills_the_process_group(tmp_path, monkeypatch):
    started, pids = [], tmp_path / "grandchild.pid"

    def fake_torchrun(n, job_dir, stdout=subprocess.PIPE):
        # torchrun stand-in: a child with a grandchild, both sleeping, in their own session.
        code = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
                f"time.sleep(300)']); open({str(pids)!r}, 'w').write(str(p.pid)); time.sleep(300)")
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=stdout, stderr=subprocess.STDOUT,
                                start_new_session=True)
        started.append(proc)
        return proc

    def interrupted(seconds):
        if pids.exists() and pids.read_text():
            raise KeyboardInterrupt
        time.sleep(seconds)
    monkeypatch.setattr(launcher, "start_torchrun", fake_torchrun)
    monkeypatch.setattr(distributed_bench, "_sleep", interrupted)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, text = run_ddp(opts_for(tmp_path))
    assert code == plan.INTERRUPTED and "interrupted: 0 finished row(s) kept" in text, text
    (proc,) = started
    assert proc.poll() is not None
    assert not _alive(int(pids.read_text()))  # the grandchild (a rank) went down with torchrun


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaped in a container without init counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("args, needle", [
    (["--sizes", "1x16x8", "--distributed", "2"], "batch 1 of size 1x16x8 is smaller than the 2 ranks"),
    (["--sizes", "8x16x8,3x4x5", "--distributed", "4"], "batch 3 of size 3x4x5"),
    (["--sizes", "8x16x8", "--distributed", "-1"], "-1"),
    (["--sizes", "8x16x8", "--distributed", "2", "--mode", "fwd"], "--mode fwd"),
    (["--sizes", "8x16x8", "--distributed", "2", "--mode", "all"], "--mode fwd,fwd_bwd"),
])
def test_usage_errors_exit_2(tmp_path, args, needle):
    result = CliRunner().invoke(app, ["bench"] + args + ["--out", str(tmp_path / "r.csv")])
    text = cli_output(result)
    assert result.exit_code == 2, text
    assert needle in " ".join(text.split()), text
    assert "Traceback" not in text
    assert not (tmp_path / "r.csv").exists()


def test_candidate_with_distributed_is_a_usage_error(tmp_path):
    cand = tmp_path / "cand.py"
    cand.write_text("class ModelNew: pass\n")
    code, text = run_ddp(opts_for(tmp_path, candidate=cand))
    assert code == 2 and "--candidate" in text


def test_more_ranks_than_gpus_exits_2(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    code, text = run_ddp(opts_for(tmp_path, n=3))
    assert code == 2, text
    assert "--distributed 3: 3 ranks need 3 GPUs (one per rank), but 1 visible" in " ".join(text.split())


def test_shards_cover_the_batch():
    for batch in (2, 7, 8, 1025):
        for world in (1, 2, 3, 4):
            if batch < world:
                continue
            bounds = [distributed_bench.shard_bounds(batch, world, r) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == batch
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            sizes = [hi - lo for lo, hi in bounds]
            assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_report_keeps_ddp_rows_apart(tmp_path):
    from mishbench.report import core as report
    rows = []
    for world, ms in ((1, 2.0), (2, 1.5)):
        for impl, prec in (("eager", "ieee"), ("mishbench", "3xtf32")):
            rows.append(csvschema.new_row(run_id=f"r{world}", timestamp=f"2026-01-0{world}", gpu="H100", world_size=world,
                                          impl=impl, mode="fwd_bwd", dtype="fp32", precision=prec,
                                          accuracy_class="fp32", batch=8, in_features=16, out_features=8,
                                          median_ms=ms, status="ok", speedup_vs_eager=1.0))
    path = tmp_path / "r.csv"
    csvschema.append_rows(path, rows)
    df = report.load([path])
    assert len(df) == 4  # no DDP row replaces a single-process one
    wide = report.wide(df)
    assert "eager DDP×2 ms" in wide.columns and "eager ms" in wide.columns
    assert "mishbench 3xtf32 DDP×2 vs eager" in wide.columns
