"""`--sizes` parsing and the named size presets."""
from typing import Iterable, List, NamedTuple


class Size(NamedTuple):
    batch: int
    in_features: int
    out_features: int

    def __str__(self):
        return f"{self.batch}x{self.in_features}x{self.out_features}"

    @property
    def flops(self) -> int:
        """Forward FLOPs of the GEMM: 2·B·K·N."""
        return 2 * self.batch * self.in_features * self.out_features


KERNELBENCH = Size(1024, 8192, 8192)
SMALL = Size(128, 10, 20)  # the old KernelBench size

# Odd sizes on purpose: tails in every dimension, a single element, K not a multiple of 4; and a
# KernelBench-sized batch at tiny K and N, so a path taken only from B = 1024 up is judged on the CPU too.
ODD_SIZES = [Size(1, 1, 1), Size(7, 13, 5), Size(129, 10, 20), Size(1000, 123, 77), Size(1024, 13, 5)]

PRESETS = {
    "kernelbench": [KERNELBENCH],
    "small": [SMALL],
    # From launch-bound (batch 1) to compute-bound (4096×8192×8192).
    "sweep": [Size(b, kn, kn) for kn in (1024, 4096, 8192) for b in (1, 32, 128, 1024, 4096)],
}


def parse_size(text: str) -> Size:
    """'BxKxN' -> Size; ValueError naming the bad item otherwise."""
    item = text.strip()
    parts = item.lower().split("x")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"bad size {item!r}: expected BxKxN, e.g. 1024x8192x8192")
    size = Size(*(int(p) for p in parts))
    if min(size) < 1:
        raise ValueError(f"bad size {item!r}: every dimension must be >= 1")
    return size


def parse_sizes(values: Iterable[str]) -> List[Size]:
    """Each value may itself be comma-separated; repeated flags add up. Duplicates are dropped."""
    out: List[Size] = []
    for value in values:
        for item in value.split(","):
            if not item.strip():
                raise ValueError(f"bad size list {value!r}: empty item")
            size = parse_size(item)
            if size not in out:
                out.append(size)
    return out


def parse_preset(name: str) -> List[Size]:
    try:
        return list(PRESETS[name])
    except KeyError:
        raise ValueError(f"unknown preset {name!r}: expected one of {', '.join(PRESETS)}") from None
