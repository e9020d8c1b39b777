"""`mishbench report`: merging result CSVs, the wide table, Markdown, --csv and --plot."""
import pandas as pd
import pytest
from typer.testing import CliRunner

from mishbench.report import core as report
from mishbench.cli import app
from mishbench.schema import append_rows, new_row

from cli_helpers import cli_output


def row(run, impl, ms, mode="fwd", dtype="fp32", precision=None, accuracy="fp32", shape=(1024, 8192, 8192),
        gpu="NVIDIA H100 80GB HBM3", status="ok", stamp="2026-01-01T00:00:00+00:00", **kw):
    precision = precision or ("ieee" if dtype == "fp32" else "native")
    b, k, n = shape
    return new_row(run_id=run, timestamp=stamp, git_sha="abc", gpu=gpu, driver="580", torch="2.11", cuda="13.0",
                   world_size=1, impl=impl, mode=mode, dtype=dtype, precision=precision, accuracy_class=accuracy,
                   batch=b, in_features=k, out_features=n, median_ms=ms if status == "ok" else None,
                   p20_ms=ms, p80_ms=ms, iters=30, tflops=1.0, pct_of_peak=50.0, seed=1, status=status, **kw)


@pytest.fixture
def two_csvs(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    append_rows(a, [
        row("r1", "eager", 2.73), row("r1", "compile", 2.91),
        row("r1", "mishbench", 2.0, precision="3xtf32", speedup_vs_eager=1.366, speedup_vs_compile=1.455,
            speedup_vs_fp32_eager=1.366),
        row("r1", "eager", 8.62, mode="fwd_bwd"), row("r1", "compile", None, mode="fwd_bwd", status="oom"),
        row("r1", "mishbench", 7.0, mode="fwd_bwd", precision="3xtf32", speedup_vs_eager=1.23),
    ])
    append_rows(b, [
        row("r2", "eager", 0.207, dtype="bf16", accuracy="bf16"),
        row("r2", "mishbench", 0.18, dtype="bf16", accuracy="bf16", speedup_vs_eager=1.15),
        row("r2", "eager", 0.378, precision="tf32", accuracy="tf32"),
        row("r2", "eager", 2.70, precision="ieee", accuracy="fp32", shape=(128, 10, 20)),
        row("r2", "mishbench", 0.30, precision="tf32", accuracy="tf32", speedup_vs_eager=1.26, speedup_vs_fp32_eager=9.1),
    ])
    return a, b


def test_merge_two_csvs_into_the_wide_table(two_csvs):
    df = report.load(list(two_csvs))
    assert len(df) == 11
    table = report.wide(df)
    keys = list(zip(table["dtype"], table["accuracy_class"], table["shape"], table["mode"]))
    assert len(keys) == len(set(keys)) == 5
    kb = table[(table["dtype"] == "fp32") & (table["accuracy_class"] == "fp32") & (table["mode"] == "fwd")
               & (table["shape"] == "1024x8192x8192")].iloc[0]
    assert kb["eager ms"] == pytest.approx(2.73) and kb["compile ms"] == pytest.approx(2.91)
    assert kb["mishbench 3xtf32 ms"] == pytest.approx(2.0)
    assert kb["mishbench 3xtf32 vs eager"] == pytest.approx(1.366)
    bwd = table[(table["mode"] == "fwd_bwd")].iloc[0]
    assert "compile: oom" in bwd["status"] and pd.isna(bwd["compile ms"])
    tf32 = table[table["accuracy_class"] == "tf32"].iloc[0]
    assert tf32["mishbench tf32 vs fp32 eager (KernelBench)"] == pytest.approx(9.1)
    # Small shapes sort before the KernelBench one within a group.
    fp32_fwd = table[(table["accuracy_class"] == "fp32") & (table["mode"] == "fwd")]
    assert list(fp32_fwd["shape"]) == ["128x10x20", "1024x8192x8192"]


def test_latest_measurement_wins(tmp_path, two_csvs):
    newer = tmp_path / "c.csv"
    append_rows(newer, [row("r3", "eager", 2.5, stamp="2026-02-01T00:00:00+00:00")])
    df = report.load(list(two_csvs) + [newer])
    eager = df[(df["impl"] == "eager") & (df["mode"] == "fwd") & (df["precision"] == "ieee")
               & (df["batch"] == 1024)]
    assert list(eager["median_ms"]) == [2.5]


def test_markdown_output(two_csvs):
    result = CliRunner().invoke(app, ["report", str(two_csvs[0]), str(two_csvs[1]), "--markdown"])
    assert result.exit_code == 0, cli_output(result)
    lines = [ln for ln in result.output.splitlines() if ln.startswith("|")]
    assert lines[0].startswith("| gpu | dtype | class | shape | mode | eager ms")
    assert set(lines[1].replace("|", "").replace("-", "").replace(":", "")) <= {""}
    assert len(lines) == 2 + 5
    assert all(ln.count("|") == lines[0].count("|") for ln in lines)
    assert "2.73" in result.output and "1.37x" in result.output


def test_rich_table_and_csv_out(tmp_path, two_csvs):
    out = tmp_path / "wide" / "merged.csv"
    result = CliRunner().invoke(app, ["report", str(two_csvs[0]), str(two_csvs[1]), "--csv", str(out)])
    assert result.exit_code == 0, cli_output(result)
    assert "mishbench report" in result.output
    wide = pd.read_csv(out)
    assert len(wide) == 5 and "eager ms" in wide.columns and "status" in wide.columns


def test_not_a_result_csv_exits_2(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n1,2\n")
    result = CliRunner().invoke(app, ["report", str(bad)])
    assert result.exit_code == 2 and "bad.csv" in cli_output(result) and "missing columns" in cli_output(result)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert CliRunner().invoke(app, ["report", str(empty)]).exit_code == 2
    missing = CliRunner().invoke(app, ["report", str(tmp_path / "nope.csv")])
    assert missing.exit_code == 2 and "nope.csv" in cli_output(missing)


def test_plot_png(tmp_path, two_csvs):
    pytest.importorskip("matplotlib")
    png = tmp_path / "plots" / "x.png"
    result = CliRunner().invoke(app, ["report", str(two_csvs[0]), str(two_csvs[1]), "--plot", str(png)])
    assert result.exit_code == 0, cli_output(result)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_how_to_get_it(tmp_path, two_csvs, monkeypatch):
    monkeypatch.setattr(report, "_have_matplotlib", lambda: False)
    result = CliRunner().invoke(app, ["report", str(two_csvs[0]), "--plot", str(tmp_path / "x.png")])
    assert result.exit_code == 1 and "mishbench[plot]" in cli_output(result)
    assert not (tmp_path / "x.png").exists()
