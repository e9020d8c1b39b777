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

from mishbench.schema import BASELINE_IMPLS, COLUMNS, LATER_COLUMNS, ROW_KEY

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
        missing = [c for c in COLUMNS if c not in df.columns and c not in LATER_COLUMNS]
        if missing:
            shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
            raise ReportError(f"{path} is not a mishbench result CSV: missing columns {shown}")
        for col in LATER_COLUMNS:  # an older file: the column reads empty
            if col not in df.columns:
                df[col] = ""
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
    if " vs " in col or "×" in col:
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


SUBJECT_COLUMN = {"mishbench": "mishbench", "composite": "mishbench", "candidate": "candidate"}


def compact(df) -> List[Dict[str, object]]:
    """The terminal view: one record per (gpu, shape, mode, dtype, precision) -- each precision a subject
    ran in, held against its accuracy class's baselines -- with the few numbers a person reads first."""
    records: List[Dict[str, object]] = []
    classes = ("fp32", "tf32", "bf16", "fp16", "fp64")
    ordered = df.assign(_flops=df["batch"] * df["in_features"] * df["out_features"],
                        _class=[classes.index(c) if c in classes else 9 for c in df["accuracy_class"]])
    ordered = ordered.sort_values(["gpu", "_class", "dtype", "mode", "world_size", "_flops", "batch"],
                                  kind="mergesort")
    for _, grp in ordered.groupby(GROUP + ["world_size"], sort=False):
        base = {r["impl"]: r for _, r in grp.iterrows() if r["impl"] in BASELINE_IMPLS}
        subjects = grp[~grp["impl"].isin(BASELINE_IMPLS)]
        precisions = list(dict.fromkeys(subjects["precision"])) or list(dict.fromkeys(grp["precision"]))
        first = grp.iloc[0]
        world = first["world_size"]
        for prec in precisions:
            rec: Dict[str, object] = {
                "gpu": first["gpu"], "shape": f"{int(first['batch'])}x{int(first['in_features'])}x"
                                               f"{int(first['out_features'])}",
                "mode": str(first["mode"]) + (f" DDP×{int(world)}" if _present(world) and world > 1 else ""),
                "dtype": first["dtype"], "precision": prec,
                "dtype precision": first["dtype"] + ("" if prec == "native" else f" {prec}")}
            flags = []
            for impl, r in base.items():
                rec[f"{impl} ms"] = r["median_ms"] if r["status"] == "ok" else math.nan
                if r["status"] != "ok":
                    flags.append(f"{impl}: {r['status']}")
            for _, r in subjects[subjects["precision"] == prec].iterrows():
                who = SUBJECT_COLUMN.get(r["impl"], str(r["impl"]))
                ok = r["status"] == "ok"
                rec[f"{who} ms"] = r["median_ms"] if ok else math.nan
                rec[f"{who} ×eager"] = r["speedup_vs_eager"] if ok else math.nan
                rec[f"{who} ×compile"] = r["speedup_vs_compile"] if ok else math.nan
                if r["speedup_vs_fp32_eager"] != r["speedup_vs_eager"]:
                    rec[f"{who} ×fp32 eager"] = r["speedup_vs_fp32_eager"] if ok else math.nan
                rec[f"{who} rel_err"] = r["rel_err"]
                route = r["route"] or ("composite" if r["impl"] == "composite" else "")
                rec[f"{who} route"] = route
                if not ok:
                    flags.append(f"{who}: {r['status']}")
            rec["status"] = "ok" if not flags else "; ".join(flags)
            records.append(rec)
    return records


# (header in the terminal, record key, right-aligned, keep level: 0 always shown, higher left out first)
TERMINAL_COLUMNS = [
    ("gpu", "gpu", False, 6), ("shape", "shape", False, 0), ("mode", "mode", False, 0),
    ("precision", "dtype precision", False, 0),  # "fp32 3xtf32", "bf16": one column, not two
    ("eager ms", "eager ms", True, 1), ("compile ms", "compile ms", True, 3),
    ("compile-max ms", "compile-max ms", True, 5), ("mishbench ms", "mishbench ms", True, 1),
    ("×eager", "mishbench ×eager", True, 0), ("×compile", "mishbench ×compile", True, 2),
    ("×fp32 eager", "mishbench ×fp32 eager", True, 4), ("rel_err", "mishbench rel_err", True, 1),
    ("route", "mishbench route", False, 2),
    ("candidate ms", "candidate ms", True, 1), ("cand ×eager", "candidate ×eager", True, 1),
    ("cand ×compile", "candidate ×compile", True, 4), ("cand rel_err", "candidate rel_err", True, 3),
    ("status", "status", False, 0),
]


def terminal_table(df, title: str):
    """A console.FitTable of compact(df): as many columns as the terminal has room for."""
    from mishbench.console import Col, FitTable
    records = compact(df)
    one_gpu = df["gpu"].nunique() <= 1
    if one_gpu and len(df):
        title += f" · {df['gpu'].iloc[0]}"
    cols = [c for c in TERMINAL_COLUMNS if not (one_gpu and c[0] == "gpu")]
    rows, styles = [], []
    for rec in records:
        rows.append([_display(key, rec.get(key)) if key != "status" or rec["status"] != "ok" else ""
                     for _, key, _, _ in cols])
        styles.append("" if rec["status"] == "ok" else "yellow")
    return FitTable(title, [Col(h, right=right, keep=keep, wrap=28 if key == "status" else 0)
                            for h, key, right, keep in cols], rows, row_styles=styles,
                    hint="--markdown or --csv has every column")


def _write_or_keep(path: Path, write, what: str, console) -> bool:
    """Write with `write(path)`; if that fails, write a sibling (or a temporary file) and say where."""
    from mishbench.outfiles import write_with_fallback
    try:
        where = write_with_fallback(path, write)
    except OSError as exc:
        console.print(f"[bold red]error:[/] {what}: cannot write {path}: {exc.strerror or exc}", highlight=False,
                      soft_wrap=True)
        return False
    if where != path:
        console.print(f"[bold red]error:[/] {what}: cannot write {path}; kept in {where}", highlight=False,
                      soft_wrap=True)
        return False
    return True


def run_report(paths: List[Path], markdown: bool, csv_out: Optional[Path], plot: Optional[Path], console) -> int:
    """`mishbench report`: 0 ok, 1 nothing to report, plotting unavailable or an output not written, 2 a
    file that is not a result CSV. With --csv or --plot (and no --markdown) one summary line, not the table."""
    from mishbench.report import plot as plot_mod
    if plot is not None and not plot_mod.have_matplotlib():
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
    title = f"mishbench report — {len(df)} rows from {len(paths)} file(s)"
    table = wide(df)
    if markdown:
        console.print(to_markdown(table), highlight=False, soft_wrap=True, markup=False)
    elif csv_out is None and plot is None:
        console.print(terminal_table(df, title))
    code, wrote = 0, []
    if csv_out is not None:
        if _write_or_keep(csv_out, lambda p: table.to_csv(p, index=False), "--csv", console):
            wrote.append(f"{csv_out} ({len(table)} rows × {len(table.columns)} columns)")
        else:
            code = 1
    if plot is not None:
        try:
            written = plot_mod.plot_all(df, compact(df[df["status"] == "ok"]), plot)
        except OSError as exc:
            console.print(f"[bold red]error:[/] --plot: cannot write {plot}: {exc.strerror or exc}", highlight=False,
                          soft_wrap=True)
            return 1
        wrote.append("plots " + ", ".join(str(p) for p in written))
    if wrote:
        console.print(f"{len(df)} rows from {len(paths)} file(s) -> {len(table)} table rows; wrote "
                      + "; ".join(wrote), highlight=False, soft_wrap=True)
    return code
