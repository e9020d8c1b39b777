"""A candidate file: a `.py`, or a text/markdown answer whose ```python block defining `ModelNew` is taken."""
import dataclasses
import hashlib
import re
from pathlib import Path

from mishbench.candidate.static import Parsed


class CandidateUsageError(ValueError):
    """The file cannot be a candidate at all (missing, or no ModelNew): a usage error, exit 2."""


@dataclasses.dataclass
class Candidate:
    path: Path
    source: str  # the Python code that runs
    sha256: str  # of the whole file as given
    origin: str  # "file" or "block 2 of 3 (lines 12-60)"
    line_offset: int = 0  # candidate-file line of the code's first line, minus 1

    @property
    def parsed(self) -> Parsed:
        return Parsed(self.source, self.line_offset)


_FENCE = re.compile(r"^(?P<fence>```+|~~~+)[ \t]*(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=fence)[ \t]*$",
                    re.MULTILINE | re.DOTALL)
_DEFINES = re.compile(r"^\s*class\s+ModelNew\b|^ModelNew\s*=", re.MULTILINE)


def load_candidate(path) -> Candidate:
    """Read FILE: a .py is the code; anything else is an answer whose ```python block defining ModelNew is
    taken (the last such block: answers refine their code). CandidateUsageError where none does."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CandidateUsageError(f"cannot read {str(path)!r}: {exc.strerror}") from None
    sha = hashlib.sha256(raw).hexdigest()
    text = raw.decode("utf-8", errors="replace")
    if path.suffix == ".py":
        if not _DEFINES.search(text):
            raise CandidateUsageError(f"{path} defines no class ModelNew")
        return Candidate(path, text, sha, "file")
    blocks = [m for m in _FENCE.finditer(text) if m.group("lang").lower() in ("python", "py", "python3")]
    picks = [(i, m) for i, m in enumerate(blocks) if _DEFINES.search(m.group("body"))]
    if not picks:
        raise CandidateUsageError(f"{path}: none of its {len(blocks)} ```python block(s) defines class ModelNew")
    i, m = picks[-1]
    first = text.count("\n", 0, m.start("body")) + 1
    last = first + m.group("body").count("\n") - 1
    return Candidate(path, m.group("body"), sha, f"```python block {i + 1} of {len(blocks)} (lines {first}-{last})",
                     first - 1)
