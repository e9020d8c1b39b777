"""The records every command shares: the result CSV and the verify report.

- The result CSV (DESIGN.md, "Result CSV"): its columns, a row builder, append/read helpers. Long format,
  one row per measurement, shared by `bench` (which appends) and `report` (which merges).
- `Check` and `Report` (DESIGN.md, "`verify --json` schema"): what verify, the candidate checks and the
  distributed checks produce, and its JSON form.
"""
import csv
import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

COLUMNS = [
    "run_id", "timestamp", "git_sha", "gpu", "driver", "torch", "cuda", "world_size", "impl", "mode", "dtype",
    "precision", "accuracy_class", "batch", "in_features", "out_features", "median_ms", "p20_ms", "p80_ms",
    "iters", "tflops", "pct_of_peak", "speedup_vs_eager", "speedup_vs_compile", "speedup_vs_fp32_eager",
    "rel_err", "compile_s", "peak_mem_mb", "seed", "candidate_sha256", "status",
    # Added later, always at the end: a file without them still loads (the cells read empty), and
    # appending to one first rewrites it with the full header.
    "route",
]
LATER_COLUMNS = ("route",)

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
    """CsvSchemaError unless `header` has every column (columns added later may be missing)."""
    header = [h.strip() for h in header]
    missing = [c for c in COLUMNS if c not in header and c not in LATER_COLUMNS]
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
        if header != COLUMNS[:len(header)]:
            raise CsvSchemaError(f"{path}: columns are in a different order than this version writes")
        _upgrade(path)
        header = COLUMNS
    with open(path, "a", newline="") as f:
        writer = csv.writer(f)
        if header is None:
            writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([_cell(row.get(col)) for col in COLUMNS])
        f.flush()
        os.fsync(f.fileno())
    return len(rows)


def _upgrade(path: Path) -> None:
    """Rewrite a file with an older header (a prefix of COLUMNS) under the full header, every row kept, the
    new cells empty; atomically (a temporary file, fsync, rename), so a crash leaves the old or the new."""
    rows = read_rows(path)
    tmp = path.with_name(path.name + ".upgrade.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([row.get(col) or "" for col in COLUMNS])
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_rows(path: Path) -> List[Dict[str, str]]:
    """Rows of a result CSV as dicts of strings, every column present ('' where an older file lacks it);
    [] for an absent/empty file; CsvSchemaError for a foreign one."""
    header = read_header(path)
    if header is None:
        return []
    check_header(header, path)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for col in LATER_COLUMNS:
            if row.get(col) is None:
                row[col] = ""
    return rows


def row_key(row) -> tuple:
    """(batch, in_features, out_features, mode, dtype, precision, impl, world_size), as strings, for rows read
    or built; a row without world_size (an older file) counts as one process."""
    return tuple(str(row.get(k) or 1) if k == "world_size" else str(row[k]) for k in ROW_KEY)


# ---------------------------------------------------------------------------------------------------------
# Checks and the verify report
# ---------------------------------------------------------------------------------------------------------
CHECK_STATUSES = ("pass", "fail", "warn", "skip", "error")


@dataclasses.dataclass
class Check:
    name: str
    status: str  # one of CHECK_STATUSES
    detail: str = ""  # one line a person can act on
    metrics: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.status not in CHECK_STATUSES:
            raise ValueError(f"bad check status {self.status!r}")
        self.detail = " ".join(str(self.detail).split())  # one line, always


@dataclasses.dataclass
class Report:
    device: str
    dtype: str
    precision: str
    impl: str
    seed: int
    subject: str = "builtin"
    gpu: str = ""
    candidate_sha256: Optional[str] = None
    checks: List[Check] = dataclasses.field(default_factory=list)
    env: Dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No check failed or errored (warn is information, skip is not a failure)."""
        return all(c.status not in ("fail", "error") for c in self.checks)

    @property
    def complete(self) -> bool:
        """Every check ran (none skipped)."""
        return all(c.status != "skip" for c in self.checks)

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        return check

    def to_dict(self) -> Dict[str, Any]:
        out = {
            "ok": self.ok, "complete": self.complete, "device": self.device, "gpu": self.gpu,
            "dtype": self.dtype, "precision": self.precision, "impl": self.impl, "seed": self.seed,
            "subject": self.subject,
        }
        if self.candidate_sha256 is not None:
            out["candidate_sha256"] = self.candidate_sha256
        out["checks"] = [dataclasses.asdict(c) for c in self.checks]
        out["env"] = dict(self.env)
        return out

    def to_json(self) -> str:
        return json.dumps(_strict_json(self.to_dict()), indent=2)


def _strict_json(value):
    """Strict JSON: non-finite floats become the strings 'inf' / '-inf' / 'nan'; odd objects become str."""
    if isinstance(value, dict):
        return {str(k): _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    try:
        return _strict_json(float(value))
    except (TypeError, ValueError):
        return str(value)
