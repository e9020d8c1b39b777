"""Rich rendering shared by the commands: the verify table and one-line errors."""
import sys
from typing import Dict

from rich.console import Console
from rich.table import Table

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


def verdict_line(report: Report) -> str:
    if not report.ok:
        bad = [c.name for c in report.checks if c.status in ("fail", "error")]
        return f"[bold red]FAILED[/]: {', '.join(bad)}"
    if not report.complete:
        skipped = [c.name for c in report.checks if c.status == "skip"]
        return f"[yellow]INCOMPLETE[/]: passed, but skipped {', '.join(skipped)}"
    return "[green]PASSED[/]: every check passed"


def print_report(report: Report, out: Console = console) -> None:
    out.print(verify_table(report))
    out.print(verdict_line(report))


def print_mapping(title: str, rows: Dict[str, str], out: Console = console) -> None:
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in rows.items():
        table.add_row(key, value)
    out.print(table)


def flush() -> None:
    sys.stdout.flush()
