"""Where a bench run's rows go: one result CSV, appended and flushed as each case finishes (so Ctrl-C or a
crash loses no finished case), with `--resume` skipping the cases already in it. The local and the DDP
runner both write through here, and both end the same way (`finish`)."""
import datetime
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Set, Tuple

from mishbench.bench.providers import SUBJECT_IMPLS
from mishbench.outfiles import fallbacks
from mishbench.schema import Row, append_rows, read_rows, row_key
from mishbench.shapes import Size


# --out paths that could not be appended to mid-run -> (where the rows went from then on, why).
_moved: Dict[str, Tuple[Path, str]] = {}


class Sink:
    def __init__(self, path: Path, resume: bool):
        self.path, self.resume = Path(path), resume
        self.done: Set[tuple] = set()

    def open(self) -> None:
        """Read what is done (with --resume) and create the file with its header -- or bring an older
        header up to date -- now, so a foreign --out fails before anything is timed (CsvSchemaError)."""
        self.done = {row_key(r) for r in read_rows(self.path) if r.get("status") == "ok"} if self.resume else set()
        append_rows(self.path, [])

    def pending(self, cases: Sequence[Tuple[Size, str]], keys: Callable[[Size, str], List[tuple]]
                ) -> Tuple[List[Tuple[Size, str]], int]:
        """(cases still to run, how many were skipped): a case is done when every planned row is ok."""
        todo = [c for c in cases if not (self.done and all(k in self.done for k in keys(*c)))]
        return todo, len(cases) - len(todo)

    def write(self, rows: List[Row], written: List[Row]) -> None:
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        for row in rows:
            row["timestamp"] = stamp
        try:
            append_rows(self.path, rows)
        except OSError as exc:
            # The disk filled or the folder went away mid-run: keep what was measured next to it (or in the
            # temporary folder), and say where at the end (finish).
            for other in fallbacks(self.path):
                try:
                    append_rows(other, rows)
                except OSError:
                    continue
                _moved[str(self.path)] = (other, exc.strerror or str(exc))
                self.path = other
                break
            else:
                raise
        written.extend(rows)


def failed(rows: Sequence[Row]) -> bool:
    """A mishbench/composite/candidate row that is mismatch or error fails the run; oom rows do not."""
    return any(r["impl"] in SUBJECT_IMPLS and r["status"] in ("mismatch", "error") for r in rows)


def finish(console, table, written: Sequence[Row], path: Path) -> int:
    """The final table, where the rows went, and the exit code."""
    console.print(table)
    moved = _moved.pop(str(path), None)
    if moved is not None:
        console.print(f"[bold red]error:[/] --out: cannot write {path} ({moved[1]}); the rows measured from then "
                      f"on are kept in {moved[0]}", highlight=False, soft_wrap=True)
        return 1
    console.print(f"{len(written)} row(s) appended to {path}", highlight=False)
    return 1 if failed(written) else 0
