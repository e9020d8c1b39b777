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
    # --csv prints one summary line, not the table.
    assert len(result.output.strip().splitlines()) == 1 and str(out) in result.output and "┃" not in result.output
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


PNG = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    import struct
    data = path.read_bytes()
    assert data[:8] == PNG, f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def sweep_csv(tmp_path):
    """A small sweep: fp32 3xtf32 and bf16 at four shapes, one shape missing for bf16, KernelBench too."""
    path = tmp_path / "sweep.csv"
    rows = []
    shapes = [(1, 1024, 1024), (128, 1024, 1024), (1024, 1024, 1024), (1024, 8192, 8192)]
    for i, shape in enumerate(shapes):
        for dtype, prec, accuracy in (("fp32", "3xtf32", "fp32"), ("bf16", "native", "bf16")):
            if dtype == "bf16" and i == 1:
                continue  # not measured: no marker and no line through it
            eager_prec = "ieee" if dtype == "fp32" else "native"
            rows.append(row("s", "eager", 1.0 + i, dtype=dtype, precision=eager_prec, accuracy=accuracy, shape=shape))
            rows.append(row("s", "mishbench", 0.8 + i, dtype=dtype, precision=prec, accuracy=accuracy, shape=shape,
                            speedup_vs_eager=(1.0 + i) / (0.8 + i)))
    rows.append(row("s", "compile", 4.2, shape=shapes[-1]))
    append_rows(path, rows)
    return path


def test_plots_render_bars_sweep_and_roofline(tmp_path, sweep_csv):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (the `plot` extra): plots not rendered")
    png = tmp_path / "plots" / "speed.png"
    result = CliRunner().invoke(app, ["report", str(sweep_csv), "--plot", str(png)])
    assert result.exit_code == 0, cli_output(result)
    made = [png, tmp_path / "plots" / "speed-sweep.png", tmp_path / "plots" / "speed-roofline.png"]
    for p in made:
        w, h = _png_size(p)
        assert w > 400 and h > 300, (p, w, h)
    assert len(result.output.strip().splitlines()) == 1 and "speed-roofline.png" in result.output


def test_plot_of_one_shape_writes_only_the_bars(tmp_path, two_csvs):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (the `plot` extra): plots not rendered")
    png = tmp_path / "x.png"
    result = CliRunner().invoke(app, ["report", str(two_csvs[0]), "--plot", str(png)])
    assert result.exit_code == 0, cli_output(result)
    _png_size(png)
    assert not (tmp_path / "x-sweep.png").exists()  # one shape: no sweep to draw


def test_one_colour_per_provider_everywhere():
    from mishbench.report import plot
    assert len(set(plot.COLOURS.values())) == len(plot.COLOURS)
    assert plot.provider("composite") == "mishbench"


def test_terminal_table_fits_every_width_and_never_squashes_cells(two_csvs):
    from rich.console import Console
    df = report.load(list(two_csvs))
    for width in (60, 80, 100, 250):
        con = Console(width=width, record=True, color_system=None)
        con.print(report.terminal_table(df, "t"))
        text = con.export_text()
        assert all(len(line) <= width for line in text.splitlines()), (width, text)
        assert "2.73" in text or width < 80  # the eager ms, whole
        assert "1.37x" in text  # the speedup, whole
        if width >= 100:
            assert "eager ms" in text and "mishbench ms" in text and "compile: oom" in text
        if width < 100:
            assert "left out at" in text


def test_one_terminal_row_per_gpu_shape_mode_dtype_precision(two_csvs):
    df = report.load(list(two_csvs))
    recs = report.compact(df)
    keys = [(r["gpu"], r["shape"], r["mode"], r["dtype"], r["precision"]) for r in recs]
    assert len(keys) == len(set(keys)) == 5
    kb = [r for r in recs if r["shape"] == "1024x8192x8192" and r["mode"] == "fwd" and r["dtype"] == "fp32"
          and r["precision"] == "3xtf32"][0]
    assert kb["eager ms"] == pytest.approx(2.73) and kb["compile ms"] == pytest.approx(2.91)
    assert kb["mishbench ms"] == pytest.approx(2.0) and kb["mishbench ×eager"] == pytest.approx(1.366)


def test_a_file_from_before_the_route_column_loads(tmp_path, two_csvs):
    old = tmp_path / "old.csv"
    lines = two_csvs[0].read_text().splitlines()
    header = lines[0].split(",")
    idx = header.index("route")
    old.write_text("\n".join(",".join(c for i, c in enumerate(ln.split(",")) if i != idx) for ln in lines) + "\n")
    df = report.load([old])
    assert len(df) == 6 and set(df["route"]) == {""}


def test_plot_without_matplotlib_says_how_to_get_it(tmp_path, two_csvs, monkeypatch):
    from mishbench.report import plot
    monkeypatch.setattr(plot, "have_matplotlib", lambda: False)
    result = CliRunner().invoke(app, ["report", str(two_csvs[0]), "--plot", str(tmp_path / "x.png")])
    assert result.exit_code == 1 and "mishbench[plot]" in cli_output(result)
    assert not (tmp_path / "x.png").exists()


def test_bench_table_fits_too():
    from rich.console import Console
    from mishbench.bench.table import results_table
    rows = [row("r", "eager", 2.73), row("r", "mishbench", 2.0, precision="3xtf32", speedup_vs_eager=1.366,
                                        rel_err=5.4e-7),
            row("r", "compile", None, status="error")]

    class Plan:
        def message_for(self, r):
            return "RuntimeError: CUDA out of memory while allocating [1024, 8192]" if r["status"] != "ok" else ""

    for width in (80, 100, 200):
        con = Console(width=width, record=True, color_system=None)
        con.print(results_table(rows, Plan()))
        text = con.export_text()
        assert all(len(line) <= width for line in text.splitlines()), (width, text)
        assert "1024x8192x8192" in text and "2.73" in text  # whole cells
        assert "1.37" in text or width < 100
        assert ("left out at" in text) == (width < 200)
