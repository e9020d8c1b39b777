"""Rich rendering shared by the commands: the verify table, one-line errors, and tables that fit.

Rich honours NO_COLOR (and FORCE_COLOR, TERM=dumb) in every Console made here.
"""
import sys
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from rich.console import Console
from rich.table import Table
from rich.text import Text

from mishbench.schema import Report

STATUS_STYLE = {"pass": "green", "fail": "bold red", "error": "bold red", "warn": "yellow", "skip": "dim"}

console = Console()
err_console = Console(stderr=True)


def usage_error(message: str) -> None:
    """One line on stderr, as every bad flag, size or file gets (exit code 2 is the caller's)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "" if value is None else str(value)


def verify_table(report: Report) -> Table:
    title = (f"mishbench verify — {report.subject} · impl={report.impl} · {report.device}"
             f"{(' ' + report.gpu) if report.gpu else ''} · {report.dtype} · precision={report.precision}"
             f" · seed={report.seed}")
    table = Table(title=title, title_justify="left", show_lines=False)
    table.add_column("check")
    table.add_column("status")
    table.add_column("rel_err", justify="right")
    table.add_column("bar", justify="right")
    table.add_column("detail", overflow="fold")
    for check in report.checks:
        style = STATUS_STYLE.get(check.status, "")
        table.add_row(check.name, f"[{style}]{check.status}[/]", _fmt(check.metrics.get("rel_err")),
                      _fmt(check.metrics.get("bar")), check.detail)
    return table


def verdict_line(report: Report, strict: bool = False) -> str:
    if not report.ok:
        bad = [c.name for c in report.checks if c.status in ("fail", "error")]
        return f"[bold red]FAILED[/]: {', '.join(bad)}"
    if not report.complete:
        skipped = [c.name for c in report.checks if c.status == "skip"]
        if strict:
            return (f"[bold red]FAILED[/]: every check that ran passed, but skipped checks fail the run under "
                    f"--strict; skipped: {', '.join(skipped)}")
        return f"[yellow]INCOMPLETE[/]: passed, but skipped {', '.join(skipped)}"
    return "[green]PASSED[/]: every check passed"


def print_report(report: Report, out: Console = console, strict: bool = False) -> None:
    out.print(verify_table(report))
    out.print(verdict_line(report, strict), highlight=False, soft_wrap=True)


def print_mapping(title: str, rows: Dict[str, str], out: Console = console) -> None:
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in rows.items():
        table.add_row(key, value)
    out.print(table)


class Col(NamedTuple):
    """A column of a FitTable. `keep`: 0 is shown at any width, higher numbers are left out first.
    `wrap`: a free-text column (status messages) that may wrap at `wrap` cells instead of widening."""
    header: str
    right: bool = False
    keep: int = 0
    wrap: int = 0


Cell = Union[str, Tuple[str, str]]  # text, or (text, rich style)


class FitTable:
    """A table that chooses its columns at render time: as many as fit the console's width, in `keep` order,
    each as wide as its widest cell (numbers are never squashed or folded). What was left out is named
    under the table. Empty columns are never shown."""

    def __init__(self, title: str, columns: Sequence[Col], rows: Sequence[Sequence[Cell]],
                 hint: str = "", row_styles: Optional[Sequence[str]] = None):
        self.title, self.hint = title, hint
        self.rows = [[c if isinstance(c, tuple) else (str(c), "") for c in r] for r in rows]
        self.row_styles = list(row_styles or [""] * len(self.rows))
        filled = [any(r[i][0] for r in self.rows) for i in range(len(columns))]
        self.columns = [c for c, f in zip(columns, filled) if f]
        self.rows = [[cell for cell, f in zip(r, filled) if f] for r in self.rows]

    def widths(self) -> List[int]:
        from rich.cells import cell_len
        out = []
        for i, col in enumerate(self.columns):
            w = max([cell_len(col.header)] + [cell_len(r[i][0]) for r in self.rows])
            out.append(min(w, max(col.wrap, cell_len(col.header))) if col.wrap else w)
        return out

    def choose(self, width: int) -> Tuple[List[int], List[int], int]:
        """(indices of the columns shown, every column's width, the width the shown ones need) for a console
        `width` cells wide. Free-text (`wrap`) columns give up width before any column is left out, down to
        12 cells; then columns go, highest `keep` first, rightmost first."""
        from rich.cells import cell_len
        widths = self.widths()
        shown = list(range(len(self.columns)))

        def need(idx):  # rich's default box: one border per column and one more, padding 1 each side
            return sum(widths[i] for i in idx) + 3 * len(idx) + 1

        def squeeze():
            for i in shown:
                col = self.columns[i]
                if col.wrap and need(shown) > width:
                    floor = max(12, cell_len(col.header))
                    widths[i] = max(floor, widths[i] - (need(shown) - width))

        squeeze()
        for level in sorted({c.keep for c in self.columns if c.keep > 0}, reverse=True):
            if need(shown) <= width:
                break
            # Drop this level's columns one at a time, rightmost first, until the table fits.
            for i in [i for i in reversed(shown) if self.columns[i].keep == level]:
                shown.remove(i)
                if need(shown) <= width:
                    break
        if self.columns:  # a wrap column squeezed before a drop may take back what the drop freed
            for i in shown:
                col = self.columns[i]
                if col.wrap:
                    full = min(max(cell_len(r[i][0]) for r in self.rows) if self.rows else 0,
                               max(col.wrap, cell_len(col.header)))
                    widths[i] = max(widths[i], min(full, widths[i] + width - need(shown)))
        return shown, widths, need(shown)

    def table(self, width: int):
        shown, widths, _ = self.choose(width)
        table = Table(title=self.title, title_justify="left")
        for i in shown:
            col = self.columns[i]
            table.add_column(col.header, justify="right" if col.right else "left", no_wrap=not col.wrap,
                             min_width=widths[i], max_width=widths[i] if col.wrap else None, overflow="fold")
        for r, style in zip(self.rows, self.row_styles):
            table.add_row(*[Text(r[i][0], style=r[i][1]) for i in shown], style=style or None)
        return table, [self.columns[i].header for i in range(len(self.columns)) if i not in shown]

    def __rich_console__(self, con, options):
        _, _, need = self.choose(options.max_width)
        table, hidden = self.table(options.max_width)
        # Narrower than even the essential columns: keep the cells whole and let the terminal wrap lines.
        yield from con.render(table, options.update_width(max(need, options.max_width)) if need > options.max_width
                              else options)
        if hidden:
            note = f"left out at {options.max_width} columns: {', '.join(hidden)}"
            yield Text(note + (f"; {self.hint}" if self.hint else ""), style="dim")


def flush() -> None:
    sys.stdout.flush()
