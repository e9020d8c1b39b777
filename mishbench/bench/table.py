"""The bench table on the terminal: one row per result row."""
from typing import Callable, Optional, Sequence, Tuple

from mishbench.schema import Row


def _num(value, fmt: str) -> str:
    if value in ("", None):
        return ""
    try:
        return format(float(value), fmt)
    except (TypeError, ValueError):
        return str(value)


def results_table(rows: Sequence[Row], plan=None, title: str = "mishbench bench",
                  extra: Optional[Tuple[str, Callable[[Row], str]]] = None):
    """The bench table; `extra` = (header, cell of a row) adds a column after the times (e.g. per-rank times)."""
    from rich.markup import escape
    from rich.table import Table
    table = Table(title=title, title_justify="left")
    columns = [("shape", "left"), ("mode", "left"), ("impl", "left"), ("precision", "left"),
               ("ms (p20–p80)", "right")]
    if extra is not None:
        columns.append((extra[0], "right"))
    columns += [("TFLOP/s", "right"), ("% peak", "right"), ("× eager", "right"), ("× compile", "right"),
                ("× fp32 eager (KernelBench)", "right"), ("rel_err", "right"), ("compile s", "right"),
                ("status", "left")]
    for name, justify in columns:
        table.add_column(name, justify=justify, overflow="fold")
    style = {"ok": "green", "mismatch": "bold red", "error": "bold red", "oom": "yellow"}
    for r in rows:
        ms = ""
        if r["median_ms"] not in ("", None):
            ms = f"{float(r['median_ms']):.4g} ({float(r['p20_ms']):.4g}–{float(r['p80_ms']):.4g})"
        status = f"[{style.get(str(r['status']), '')}]{r['status']}[/]"
        msg = plan.message_for(r) if plan is not None else ""
        if msg:
            status += f" {escape(msg)}"  # messages quote exceptions: '[...]' in them is not markup
        cells = [f"{r['batch']}x{r['in_features']}x{r['out_features']}", str(r["mode"]), str(r["impl"]),
                 str(r["precision"]), ms] + ([extra[1](r)] if extra is not None else [])
        table.add_row(*cells, _num(r["tflops"], ".1f"), _num(r["pct_of_peak"], ".0f"),
                      _num(r["speedup_vs_eager"], ".2f"), _num(r["speedup_vs_compile"], ".2f"),
                      _num(r["speedup_vs_fp32_eager"], ".2f"), _num(r["rel_err"], ".2e"),
                      _num(r["compile_s"], ".1f"), status)
    return table
