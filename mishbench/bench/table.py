"""The bench table on the terminal: one row per result row, as many columns as the terminal has room for
(console.FitTable: numbers are never squashed; what did not fit is named under the table, and the CSV has
every column)."""
from typing import Callable, Optional, Sequence, Tuple

from mishbench.console import Col, FitTable
from mishbench.schema import Row

STATUS_STYLE = {"ok": "green", "mismatch": "bold red", "error": "bold red", "oom": "yellow"}


def _num(value, fmt: str) -> str:
    if value in ("", None):
        return ""
    try:
        return format(float(value), fmt)
    except (TypeError, ValueError):
        return str(value)


def results_table(rows: Sequence[Row], plan=None, title: str = "mishbench bench",
                  extra: Optional[Tuple[str, Callable[[Row], str]]] = None) -> FitTable:
    """The bench table; `extra` = (header, cell of a row) adds a column after the times (e.g. per-rank times).
    `keep`: 0 always shown; higher numbers are left out first on a narrow terminal."""
    columns = [Col("shape"), Col("mode"), Col("impl"), Col("precision"), Col("median ms", right=True),
               Col("p20–p80 ms", right=True, keep=5)]
    if extra is not None:
        columns.append(Col(extra[0], right=True, keep=2))
    columns += [Col("× eager", right=True, keep=1), Col("× compile", right=True, keep=3),
                Col("× fp32 eager", right=True, keep=4), Col("rel_err", right=True, keep=1),
                Col("route", keep=2), Col("TFLOP/s", right=True, keep=4), Col("% peak", right=True, keep=5),
                Col("compile s", right=True, keep=6), Col("status", wrap=32)]
    cells = []
    for r in rows:
        ms = spread = ""
        if r["median_ms"] not in ("", None):
            ms = f"{float(r['median_ms']):.4g}"
            spread = f"{float(r['p20_ms']):.4g}–{float(r['p80_ms']):.4g}"
        msg = plan.message_for(r) if plan is not None else ""
        status = (str(r["status"]) + (f" {msg}" if msg else ""), STATUS_STYLE.get(str(r["status"]), ""))
        same = str(r.get("speedup_vs_fp32_eager", "")) == str(r.get("speedup_vs_eager", ""))
        cells.append([f"{r['batch']}x{r['in_features']}x{r['out_features']}", str(r["mode"]), str(r["impl"]),
                      str(r["precision"]), ms, spread] + ([extra[1](r)] if extra is not None else []) +
                     [_num(r["speedup_vs_eager"], ".2f"), _num(r["speedup_vs_compile"], ".2f"),
                      "" if same else _num(r["speedup_vs_fp32_eager"], ".2f"), _num(r["rel_err"], ".2e"),
                      str(r.get("route") or ""), _num(r["tflops"], ".1f"), _num(r["pct_of_peak"], ".0f"),
                      _num(r["compile_s"], ".1f"), status])
    return FitTable(title, columns, cells, hint=f"the CSV has every column ({len(rows)} rows)")
