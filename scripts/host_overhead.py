"""Where the host time of a launch-bound call goes (issue 5, the 128x10x20 targets): times each layer of the
forward and forward+backward stack at a small shape, so the next cut is chosen by measurement.

    python scripts/host_overhead.py [--size 128x10x20] [--iters 2000]

Each line is the median over `iters` calls of the wall-clock time per call in a loop of 20 calls (the GPU
queue never drains: this is host cost, what launch-bound shapes pay), and the event time of one call after
a synchronize (what `mishbench bench` reports, launch latency included). Needs CUDA and the extension.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `mishbench`

from mishbench import ops  # noqa: E402
from mishbench.model import ModelNew  # noqa: E402
from mishbench.precision import resolve_precision  # noqa: E402
from mishbench.reference import Model  # noqa: E402
from mishbench.shapes import parse_sizes  # noqa: E402


def host_us(fn, iters: int) -> float:
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    per = []
    for _ in range(max(iters // 20, 5)):
        t0 = time.perf_counter()
        for _ in range(20):
            fn()
        per.append((time.perf_counter() - t0) / 20 * 1e6)
        torch.cuda.synchronize()
    return statistics.median(per)


def event_us(fn, iters: int) -> float:
    times = []
    for _ in range(min(iters, 300)):
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="128x10x20")
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--precision", default="3xtf32")
    a = ap.parse_args()
    size = parse_sizes([a.size])[0]
    dev = torch.device("cuda")
    assert ops.implementation(dev) == "cuda", ops.extension_reason()
    torch.manual_seed(0)
    ref = Model(size.in_features, size.out_features).to(dev)
    new = ModelNew(size.in_features, size.out_features, precision=a.precision).to(dev)
    new_default = ModelNew(size.in_features, size.out_features).to(dev)
    new.load_state_dict(ref.state_dict())
    x = torch.rand(size.batch, size.in_features, device=dev)
    xg = x.clone().requires_grad_()
    gy = torch.randn(size.batch, size.out_features, device=dev)
    w, b = new.linear.weight, new.linear.bias
    op = torch.ops.mishbench.linear_mish_mish
    prec = a.precision

    def fwd_bwd(model):
        def run():
            model.zero_grad(set_to_none=True)
            xg.grad = None
            model(xg).backward(gy)
        return run

    rows = []
    with torch.no_grad():
        rows += [
            ("empty launch: torch.empty_like + zero_", lambda: torch.empty_like(x).zero_()),
            ("F.linear", lambda: F.linear(x, ref.linear.weight, ref.linear.bias)),
            ("eager Model (linear+mish+mish)", lambda: ref(x)),
            ("torch.ops...linear_mish_mish.default", lambda: op.default(x, w, b, prec)),
            ("torch.ops...linear_mish_mish (packet)", lambda: op(x, w, b, prec)),
            ("ops.linear_mish_mish (python checks)", lambda: ops.linear_mish_mish(x, w, b, prec)),
            ("resolve_precision (explicit)", lambda: resolve_precision(prec, x.dtype, x.device)),
            ("resolve_precision (None)", lambda: resolve_precision(None, x.dtype, x.device)),
            ("ModelNew(precision=...)", lambda: new(x)),
            ("ModelNew(precision=None)", lambda: new_default(x)),
        ]
    rows += [("fwd_bwd eager Model", fwd_bwd(ref)), ("fwd_bwd ModelNew", fwd_bwd(new))]
    print(f"size {size}, precision {prec}, torch {torch.__version__}, {torch.cuda.get_device_name()}")
    print(f"{'what':<42} {'host us/call':>12} {'event us':>9}")
    for name, fn in rows:
        grad = name.startswith("fwd_bwd")
        with torch.set_grad_enabled(grad):
            h, e = host_us(fn, a.iters), event_us(fn, a.iters)
        print(f"{name:<42} {h:12.2f} {e:9.2f}")


if __name__ == "__main__":
    main()
