"""Check results and the verify report (DESIGN.md, "`verify --json` schema")."""
import dataclasses
import json
import math
from typing import Any, Dict, List, Optional

STATUSES = ("pass", "fail", "warn", "skip", "error")


@dataclasses.dataclass
class Check:
    name: str
    status: str  # one of STATUSES
    detail: str = ""  # one line a person can act on
    metrics: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.status not in STATUSES:
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
