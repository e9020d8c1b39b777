"""`mishbench report`: merge result CSVs into one wide table; Markdown, CSV and PNG outputs.

One table row per (gpu, dtype, accuracy class, shape, mode); one `<provider> ms` column per provider
(median); for each subject (mishbench / composite / candidate, labelled with its precision) its speedups —
vs eager and vs compile of the same accuracy class, and vs strict-fp32 eager (KernelBench's comparison) —
its TFLOP/s and % of the peak measured in the same run; and a status column listing every row that was
not ok. Where the same measurement appears in several files, the latest (by timestamp) wins.
"""
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from mishbench.schema import BASELINE_IMPLS, COLUMNS, ROW_KEY

NUMERIC = ["batch", "in_features", "out_features", "median_ms", "p20_ms", "p80_ms", "iters", "tflops",
           "pct_of_peak", "speedup_vs_eager", "speedup_vs_compile", "speedup_vs_fp32_eager", "rel_err",
           "compile_s", "peak_mem_mb", "world_size"]
GROUP = ["gpu", "dtype", "accuracy_class", "batch", "in_features", "out_features", "mode"]
SUBJECT_ORDER = ("mishbench", "composite", "candidate")
PLOT_HINT = "--plot needs matplotlib: install mishbench[plot] (pip install 'mishbench[plot]')"


class ReportError(ValueError):
    """A file that cannot be read as a result CSV: one line naming it."""


def load(paths: Sequence[Path]):
    """Read and validate result CSVs; one DataFrame with numeric columns parsed, duplicates resolved."""
    import pandas as pd
    frames = []
    for path in paths:
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        except pd.errors.EmptyDataError:
            raise ReportError(f"{path} is empty, not a mishbench result CSV") from None
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
            raise ReportError(f"{path} is not a mishbench result CSV: {' '.join(str(exc).split())[:200]}") from None
        missing = [c for c in COLUMNS if c not in df.columns]
        if missing:
            shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
            raise ReportError(f"{path} is not a mishbench result CSV: missing columns {shown}")
        frames.append(df[COLUMNS])
    df = pd.concat(frames, ignore_index=True)
    for col in NUMERIC:
        df[col] = pd.to_numeric(df[col], errors="coerce")
    # The latest measurement of the same thing wins (a --resume'd or repeated run supersedes the old one).
    df = df.sort_values("timestamp", kind="mergesort")
    df = df.drop_duplicates(subset=["gpu"] + list(ROW_KEY), keep="last")
    return df.reset_index(drop=True)


def _label(row) -> str:
    label = str(row["impl"]) if row["impl"] in BASELINE_IMPLS else f"{row['impl']} {row['precision']}"
    world = row.get("world_size")
    if _present(world) and world > 1:  # bench --distributed N: a DDP step over N ranks, its own column
        label += f" DDP×{int(world)}"
    return label


def _label_order(label: str):
    impl = label.split(" ")[0]
    if impl in BASELINE_IMPLS:
        return (0, BASELINE_IMPLS.index(impl), label)
    return (1, SUBJECT_ORDER.index(impl) if impl in SUBJECT_ORDER else 9, label)


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def wide(df):
    """The merged wide table (a DataFrame): one row per GROUP key, providers as columns."""
    import pandas as pd
    df = df.copy()
    df["label"] = [_label(r) for _, r in df.iterrows()]
    labels = sorted(df["label"].unique(), key=_label_order)
    subjects = [lb for lb in labels if lb.split(" ")[0] not in BASELINE_IMPLS]
    records = []
    ordered = df.assign(_flops=df["batch"] * df["in_features"] * df["out_features"])
    ordered = ordered.sort_values(["gpu", "dtype", "accuracy_class", "mode", "_flops", "batch", "in_features"],
                                  kind="mergesort")
    for key, grp in ordered.groupby(GROUP, sort=False):
        rec: Dict[str, object] = dict(zip(GROUP, key))
        rec["shape"] = f"{int(rec['batch'])}x{int(rec['in_features'])}x{int(rec['out_features'])}"
        flags = []
        by_label = {r["label"]: r for _, r in grp.iterrows()}
        for lb in labels:
            r = by_label.get(lb)
            rec[f"{lb} ms"] = r["median_ms"] if r is not None and r["status"] == "ok" else math.nan
            if r is not None and r["status"] != "ok":
                flags.append(f"{lb}: {r['status']}")
        for lb in subjects:
            r = by_label.get(lb)
            ok = r is not None and r["status"] == "ok"
            rec[f"{lb} vs eager"] = r["speedup_vs_eager"] if ok else math.nan
            rec[f"{lb} vs compile"] = r["speedup_vs_compile"] if ok else math.nan
            rec[f"{lb} vs fp32 eager (KernelBench)"] = r["speedup_vs_fp32_eager"] if ok else math.nan
            rec[f"{lb} TFLOP/s"] = r["tflops"] if ok else math.nan
            rec[f"{lb} % peak"] = r["pct_of_peak"] if ok else math.nan
            rec[f"{lb} rel_err"] = r["rel_err"] if r is not None else math.nan
        rec["status"] = "ok" if not flags else "; ".join(flags)
        records.append(rec)
    out = pd.DataFrame(records)
    if out.empty:
        return out
    # Drop columns with nothing in them (e.g. no compile baseline in this set of runs).
    keep = [c for c in out.columns if c in GROUP or c in ("shape", "status") or out[c].notna().any()]
    for lb in subjects:  # in the fp32 class "vs fp32 eager" *is* "vs eager": show it only where it differs
        a, b = out.get(f"{lb} vs fp32 eager (KernelBench)"), out.get(f"{lb} vs eager")
        if a is not None and b is not None and ((a == b) | (a.isna() & b.isna())).all():
            keep = [c for c in keep if c != f"{lb} vs fp32 eager (KernelBench)"]
    front = ["gpu", "dtype", "accuracy_class", "shape", "mode"]
    rest = [c for c in keep if c not in front and c not in ("batch", "in_features", "out_features")]
    return out[front + rest + ["batch", "in_features", "out_features"]]


def _display(col: str, value) -> str:
    if not _present(value) or value == "":
        return ""
    if isinstance(value, str):
        return value
    if col.endswith(" ms"):
        return f"{value:.4g}"
    if " vs " in col:
        return f"{value:.2f}x"
    if col.endswith("TFLOP/s"):
        return f"{value:.1f}"
    if col.endswith("% peak"):
        return f"{value:.0f}%"
    if col.endswith("rel_err"):
        return f"{value:.2e}"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


DISPLAY_DROP = ("batch", "in_features", "out_features")


def display_rows(table) -> List[List[str]]:
    cols = [c for c in table.columns if c not in DISPLAY_DROP]
    return [[_display(c, row[c]) for c in cols] for _, row in table.iterrows()]


def display_columns(table) -> List[str]:
    return [("class" if c == "accuracy_class" else c) for c in table.columns if c not in DISPLAY_DROP]


def to_markdown(table) -> str:
    """A GitHub Markdown table (no tabulate dependency): text columns left, numbers right."""
    cols = display_columns(table)
    rows = display_rows(table)

    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    numeric = [c not in ("gpu", "dtype", "class", "shape", "mode", "status") for c in cols]
    lines = ["| " + " | ".join(esc(c) for c in cols) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def rich_table(table, title: str):
    from rich.table import Table
    cols = display_columns(table)
    out = Table(title=title, title_justify="left")
    for c in cols:
        out.add_column(c, justify="left" if c in ("gpu", "dtype", "class", "shape", "mode", "status") else "right",
                       overflow="fold")
    for row in display_rows(table):
        style = "" if row[-1] == "ok" else "yellow"
        cells = row[:-1] + [f"[{style}]{row[-1]}[/]" if style else row[-1]]
        out.add_row(*cells)
    return out


def plot_png(df, path: Path) -> None:
    """Two panels: speedup vs eager per subject, and TFLOP/s per provider, against shape (by FLOPs)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = df[df["status"] == "ok"].copy()
    ok["label"] = [_label(r) for _, r in ok.iterrows()]
    ok["shape"] = [f"{int(b)}x{int(k)}x{int(n)}" for b, k, n in zip(ok["batch"], ok["in_features"], ok["out_features"])]
    ok["_flops"] = ok["batch"] * ok["in_features"] * ok["out_features"]
    shapes = list(ok.sort_values("_flops", kind="mergesort")["shape"].drop_duplicates())
    xpos = {s: i for i, s in enumerate(shapes)}
    multi_gpu = ok["gpu"].nunique() > 1
    # Stacked, legends to the right: with every provider × mode × dtype a legend inside the axes hides data.
    fig, (ax_s, ax_t) = plt.subplots(2, 1, figsize=(max(8, 0.9 * len(shapes) + 5), 10))
    for key, grp in ok.groupby(["label", "dtype", "accuracy_class", "mode", "gpu"], sort=True):
        label, dtype, accuracy, mode, gpu = key
        name = f"{label} · {dtype}/{accuracy} · {mode}" + (f" · {gpu}" if multi_gpu else "")
        grp = grp.sort_values("_flops", kind="mergesort")
        x = [xpos[s] for s in grp["shape"]]
        ax_t.plot(x, grp["tflops"], marker="o", label=name)
        if label.split(" ")[0] not in BASELINE_IMPLS and grp["speedup_vs_eager"].notna().any():
            ax_s.plot(x, grp["speedup_vs_eager"], marker="o", label=name)
    tf = ok["tflops"].dropna()
    if len(tf) and tf.min() > 0 and tf.max() / tf.min() > 100:  # a sweep spans launch- to compute-bound
        ax_t.set_yscale("log")
    ax_s.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    for ax, title, ylabel in ((ax_s, "speedup vs eager (same accuracy class)", "speedup (x)"),
                              (ax_t, "throughput", "TFLOP/s")):
        ax.set_xticks(range(len(shapes)))
        ax.set_xticklabels(shapes, rotation=45, ha="right", fontsize=8)
        ax.set_xlabel("shape BxKxN (by FLOPs)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), dpi=120, bbox_inches="tight")
    plt.close(fig)


def _have_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def run_report(paths: List[Path], markdown: bool, csv_out: Optional[Path], plot: Optional[Path], console) -> int:
    """`mishbench report`: 0 ok, 1 nothing to report or plotting unavailable, 2 a file that is not a result CSV."""
    if plot is not None and not _have_matplotlib():
        console.print(PLOT_HINT, highlight=False, markup=False)
        return 1
    try:
        df = load(paths)
    except ReportError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 2
    if df.empty:
        console.print(f"no result rows in {', '.join(str(p) for p in paths)}", highlight=False)
        return 1
    table = wide(df)
    title = f"mishbench report — {len(df)} rows from {len(paths)} file(s)"
    if markdown:
        console.print(to_markdown(table), highlight=False, soft_wrap=True, markup=False)
    else:
        console.print(rich_table(table, title))
    if csv_out is not None:
        csv_out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(csv_out, index=False)
        console.print(f"wide table: {csv_out}", highlight=False)
    if plot is not None:
        plot_png(df, plot)
        console.print(f"plot: {plot}", highlight=False)
    return 0
