"""Times the skinny-shape routes (MISHBENCH_ROUTES=next: gemv, splitk, gemv+dz) against eager PyTorch.

    python scripts/route_probe.py [--iters 30] [--modes 3xtf32,ieee,tf32,bf16,fp16] [--bwd]

B ∈ {1, 8, 32, 128} × K = N ∈ {1024, 4096, 8192}; for each shape and mode: the route our op takes (fwd, or
fwd/bwd with --bwd), our time, eager's in the same accuracy class (TF32 on only for tf32), the ratio, the
time W takes to read once at the 4.0 TB/s copy rate measured on the H200 and the fraction of that rate our
time reaches. Each timed call: L2 flushed (a write of 2× its size), synchronize, CUDA events around the
call (host overhead included, as in `mishbench bench`), median of --iters calls after warm-up. Needs a GPU.
"""
import os

os.environ.setdefault("MISHBENCH_ROUTES", "next")  # before the extension's first call reads it

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mishbench.op import build, ops  # noqa: E402
from mishbench.op.precision import eager_matmul_mode  # noqa: E402

BATCHES = (1, 8, 32, 128)
SIZES = (1024, 4096, 8192)
COPY_RATE = 4.0e12  # bytes/s, the H200's measured device copy rate (DESIGN.md)
# label -> (dtype, precision for our op, eager with TF32 on)
MODES = {"3xtf32": (torch.float32, "3xtf32", False), "ieee": (torch.float32, "ieee", False),
         "tf32": (torch.float32, "tf32", True), "bf16": (torch.bfloat16, "native", False),
         "fp16": (torch.float16, "native", False)}
NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def time_ms(fn, iters: int, flush: torch.Tensor) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(5):
        fn()
    samples = []
    for _ in range(iters):
        flush.zero_()
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end))
    return statistics.median(samples)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--modes", default="3xtf32,ieee,tf32,bf16,fp16")
    ap.add_argument("--bwd", action="store_true", help="time forward + backward instead of forward")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("route_probe: needs a CUDA GPU")
        return 1
    if ops.implementation("cuda") != "cuda":
        print(f"route_probe: extension unavailable: {ops.extension_reason()}")
        return 1
    module = build.load()
    dev = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(dev)
    flush = torch.empty(2 * max(props.L2_cache_size, 1 << 20) // 4, device="cuda", dtype=torch.float32)
    print(f"{props.name}, torch {torch.__version__}, MISHBENCH_ROUTES={os.environ.get('MISHBENCH_ROUTES')}, "
          f"{'fwd+bwd' if args.bwd else 'fwd'}, median of {args.iters}, L2 flushed")
    print(f"{'B x K x N':>16} {'mode':>6} {'route':>18} {'ours us':>9} {'eager us':>9} {'ratio':>6} "
          f"{'W@4TB/s us':>10} {'of 4TB/s':>8}")
    for kn in SIZES:
        for b in BATCHES:
            for label in args.modes.split(","):
                dtype, prec, tf32 = MODES[label]
                g = torch.Generator(device="cuda").manual_seed(0)
                x = torch.rand(b, kn, device="cuda", generator=g).to(dtype)
                w = ((torch.rand(kn, kn, device="cuda", generator=g) * 2 - 1) / kn ** 0.5).to(dtype)
                bias = ((torch.rand(kn, device="cuda", generator=g) * 2 - 1) / kn ** 0.5).to(dtype)
                gy = torch.randn(b, kn, device="cuda", generator=g).to(dtype)
                name = module.route(b, kn, kn, NAMES[dtype], prec, dev, False)
                if args.bwd:
                    name += "/" + module.route(b, kn, kn, NAMES[dtype], prec, dev, True)
                    xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, bias))

                    def run_ours():
                        ops.linear_mish_mish(xs, ws, bs, prec).backward(gy)

                    def run_eager():
                        with eager_matmul_mode(tf32):
                            F.mish(F.mish(F.linear(xs, ws, bs))).backward(gy)
                else:
                    def run_ours():
                        with torch.no_grad():
                            ops.linear_mish_mish(x, w, bias, prec)

                    def run_eager():
                        with torch.no_grad(), eager_matmul_mode(tf32):
                            F.mish(F.mish(F.linear(x, w, bias)))
                try:
                    ours_ms = time_ms(run_ours, args.iters, flush)
                    eager_ms = time_ms(run_eager, args.iters, flush)
                except RuntimeError as e:  # OOM or a kernel error: report the row, go on
                    print(f"{f'{b}x{kn}x{kn}':>16} {label:>6} {name:>18} error: {str(e).splitlines()[0][:80]}")
                    continue
                w_us = w.numel() * w.element_size() / COPY_RATE * 1e6
                print(f"{f'{b}x{kn}x{kn}':>16} {label:>6} {name:>18} {ours_ms * 1e3:9.1f} {eager_ms * 1e3:9.1f} "
                      f"{eager_ms / ours_ms:5.2f}x {w_us:10.1f} {w_us / (ours_ms * 1e3):8.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
