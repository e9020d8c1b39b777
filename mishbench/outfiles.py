"""Output files of the commands (--json, --out, --csv, --plot): checked before any work, kept when the
final write fails. Floor 0: no torch, nothing of mishbench."""
import datetime
import os
import tempfile
from pathlib import Path
from typing import Callable, List

STDOUT = "-"


def check_writable(path: Path, flag: str) -> None:
    """Create `path` (and its folder) now, so that a bad output path fails before a run, not after it.
    A file this check created is removed again (the command writes it when it has something to say).
    ValueError with one line naming the flag and the path otherwise."""
    if str(path) == STDOUT:
        return
    if path.is_dir():
        raise ValueError(f"{flag}: {str(path)!r} is a folder, not a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{flag}: cannot create the folder of {str(path)!r}: {exc.strerror or exc}") from None
    existed = path.exists()
    try:
        with open(path, "a"):
            pass
    except OSError as exc:
        raise ValueError(f"{flag}: cannot write {str(path)!r}: {exc.strerror or exc}") from None
    if not existed:
        try:
            path.unlink()
        except OSError:
            pass


def fallbacks(path: Path) -> List[Path]:
    """Where a result goes when `path` cannot be written: a sibling, then the temporary folder."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{path.stem}.kept-{stamp}{path.suffix}"
    return [path.with_name(name), Path(tempfile.gettempdir()) / name]


def write_with_fallback(path: Path, write: Callable[[Path], object]) -> Path:
    """`write(path)`; when that raises OSError, `write` to the first fallback that works and return it.
    Raises the first error when nothing could be written."""
    try:
        write(path)
        return path
    except OSError as first:
        for other in fallbacks(path):
            try:
                os.makedirs(str(other.parent), exist_ok=True)
                write(other)
                return other
            except OSError:
                continue
        raise first
