"""The result CSV (DESIGN.md, "Result CSV"): its columns, a row builder, and append/read helpers.

Long format, one row per measurement, shared by `bench` (which appends) and `report` (which merges).
"""
import csv
import math
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional

COLUMNS = [
    "run_id", "timestamp", "git_sha", "gpu", "driver", "torch", "cuda", "world_size", "impl", "mode", "dtype",
    "precision", "accuracy_class", "batch", "in_features", "out_features", "median_ms", "p20_ms", "p80_ms",
    "iters", "tflops", "pct_of_peak", "speedup_vs_eager", "speedup_vs_compile", "speedup_vs_fp32_eager",
    "rel_err", "compile_s", "peak_mem_mb", "seed", "candidate_sha256", "status",
]

IMPLS = ("eager", "compile", "compile-max", "mishbench", "candidate", "composite")
BASELINE_IMPLS = ("eager", "compile", "compile-max")
MODES = ("fwd", "fwd_bwd")
STATUSES = ("ok", "mismatch", "oom", "error")

# What makes two rows "the same measurement" (for --resume and for report de-duplication). A DDP step
# over N ranks (bench --distributed N) is not the same measurement as one process's fwd_bwd.
ROW_KEY = ("batch", "in_features", "out_features", "mode", "dtype", "precision", "impl", "world_size")

Row = Dict[str, object]


def new_row(**values) -> Row:
    """A row with every column, in DESIGN.md order; unknown keys are a bug and raise."""
    unknown = sorted(set(values) - set(COLUMNS))
    if unknown:
        raise KeyError(f"not result CSV columns: {unknown}")
    return {col: values.get(col, "") for col in COLUMNS}


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return repr(value) if math.isinf(value) else f"{value:.6g}"
    return str(value)


class CsvSchemaError(ValueError):
    """A file that is not a mishbench result CSV (or one from an incompatible version)."""


def check_header(header: Iterable[str], path: Path) -> None:
    header = [h.strip() for h in header]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise CsvSchemaError(f"{path} is not a mishbench result CSV: missing columns {shown}")


def read_header(path: Path) -> Optional[List[str]]:
    """The header of an existing non-empty CSV, or None when the file is absent or empty."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    with open(path, newline="") as f:
        try:
            return next(csv.reader(f))
        except StopIteration:
            return None


def append_rows(path: Path, rows: Iterable[Row]) -> int:
    """Append rows (header first when the file is new), flushed to disk before returning.

    Refuses to append to a file whose header is not ours, so a typo in --out never corrupts another CSV.
    """
    rows = list(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = read_header(path)
    if header is not None and header != COLUMNS:
        check_header(header, path)  # names what is missing
        raise CsvSchemaError(f"{path}: columns are in a different order than this version writes")
    with open(path, "a", newline="") as f:
        writer = csv.writer(f)
        if header is None:
            writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([_cell(row.get(col)) for col in COLUMNS])
        f.flush()
        os.fsync(f.fileno())
    return len(rows)


def read_rows(path: Path) -> List[Dict[str, str]]:
    """Rows of a result CSV as dicts of strings; [] for an absent/empty file; CsvSchemaError for a foreign one."""
    header = read_header(path)
    if header is None:
        return []
    check_header(header, path)
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def row_key(row) -> tuple:
    """(batch, in_features, out_features, mode, dtype, precision, impl, world_size), as strings, for rows read
    or built; a row without world_size (an older file) counts as one process."""
    return tuple(str(row.get(k) or 1) if k == "world_size" else str(row[k]) for k in ROW_KEY)
