"""Where the host time of a launch-bound call goes (the 128x10x20 targets): times each layer of the
forward and forward+backward stack at a small shape, so the next cut is chosen by measurement.

    python scripts/host_overhead.py [--size 128x10x20] [--iters 2000] [--device cuda|cpu]

Each line is the median over `iters` calls of the wall-clock time per call in a loop of 20 calls (the GPU
queue never drains: this is host cost, what launch-bound shapes pay), and the event time of one call after
a synchronize (what `mishbench bench` reports, launch latency included). Needs the extension.

--device cpu (no GPU; builds the extension for --arch if needed) times the layers that do not depend on
the device -- torch.ops' call path against the extension's fast entry point, both running the op's CPU
kernel; precision resolution; parameter access -- which is what the Python and binding work costs without
the CUDA launch. ModelNew itself runs the composite path on the CPU, so its rows are GPU-only.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `mishbench`

from mishbench.op import build

from mishbench.op import ops  # noqa: E402
from mishbench.op.model import ModelNew  # noqa: E402
from mishbench.op.precision import resolve_precision  # noqa: E402
from mishbench.op.reference import Model  # noqa: E402
from mishbench.shapes import parse_sizes  # noqa: E402


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def host_us(fn, iters: int, dev: torch.device) -> float:
    for _ in range(50):
        fn()
    _sync(dev)
    per = []
    for _ in range(max(iters // 20, 5)):
        t0 = time.perf_counter()
        for _ in range(20):
            fn()
        per.append((time.perf_counter() - t0) / 20 * 1e6)
        _sync(dev)
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


def _params(model):
    p = model._modules["linear"]._parameters
    return p.get("weight"), p.get("bias")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="128x10x20")
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--precision", default="3xtf32")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--arch", default="9.0a", help="arch list to build for with --device cpu")
    a = ap.parse_args()
    size = parse_sizes([a.size])[0]
    dev = torch.device(a.device)
    if dev.type == "cuda":
        assert ops.implementation(dev) == "cuda", ops.extension_reason()
        ext = build.load()
    else:
        ext = build.load(arch=a.arch)
        assert ext is not None, build.status().get("reason")
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
    prec = resolve_precision(a.precision, x.dtype, dev) if dev.type == "cpu" else a.precision

    def fwd_bwd(model):
        def run():
            model.zero_grad(set_to_none=True)
            xg.grad = None
            model(xg).backward(gy)
        return run

    def fwd_bwd_op(call):
        def run():
            new.zero_grad(set_to_none=True)
            xg.grad = None
            call(xg, w, b, prec).backward(gy)
        return run

    gpu_only = dev.type == "cuda"
    rows = [
        ("empty launch: torch.empty_like + zero_", lambda: torch.empty_like(x).zero_(), True),
        ("F.linear", lambda: F.linear(x, ref.linear.weight, ref.linear.bias), True),
        ("eager Model (linear+mish+mish)", lambda: ref(x), True),
        ("torch.ops...linear_mish_mish.default", lambda: op.default(x, w, b, prec), True),
        ("torch.ops...linear_mish_mish (packet)", lambda: op(x, w, b, prec), True),
        ("extension fast entry linear_mish_mish", lambda: ext.linear_mish_mish(x, w, b, prec), True),
        ("ops.linear_mish_mish (the Python layer)", lambda: ops.linear_mish_mish(x, w, b, prec), gpu_only),
        ("resolve_precision (explicit)", lambda: resolve_precision(prec, x.dtype, x.device), True),
        ("resolve_precision (None)", lambda: resolve_precision(None, x.dtype, x.device), True),
        ("model.linear.weight, .bias", lambda: (new.linear.weight, new.linear.bias), True),
        ("model._modules/_parameters (forward's way)", lambda: _params(new), True),
        ("ModelNew(precision=...)", lambda: new(x), gpu_only),
        ("ModelNew(precision=None)", lambda: new_default(x), gpu_only),
    ]
    rows = [(name, fn, False) for name, fn, ok in rows if ok]
    rows += [("fwd_bwd eager Model", fwd_bwd(ref), True),
             ("fwd_bwd torch.ops...default", fwd_bwd_op(op.default), True),
             ("fwd_bwd extension fast entry", fwd_bwd_op(ext.linear_mish_mish), True)]
    if gpu_only:
        rows += [("fwd_bwd ModelNew", fwd_bwd(new), True)]
    where = torch.cuda.get_device_name() if gpu_only else "CPU (op's CPU kernel)"
    print(f"size {size}, precision {prec}, torch {torch.__version__}, {where}")
    print(f"{'what':<42} {'host us/call':>12} {'event us':>9}")
    for name, fn, grad in rows:
        with torch.set_grad_enabled(grad):
            h = host_us(fn, a.iters, dev)
            e = event_us(fn, a.iters) if gpu_only else float("nan")
        print(f"{name:<42} {h:12.2f} {e:9.2f}")


if __name__ == "__main__":
    main()
