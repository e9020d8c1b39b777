"""GPU self-test of the tensor-core GEMM family (csrc/gemm_tc.cu): accuracy of every mode against a float64
reference with the DESIGN.md error bars, then forward timings at the KernelBench shape.

    python scripts/tc_selftest.py [--no-bench] [--iters 30]

Needs a CUDA GPU (sm_80+ for the tensor-core path; below that every call takes the SIMT path). Shapes are
B×K×N (batch × in_features × out_features); those under 2^21 MACs or with K not a multiple of 4 (fp32) / 8
(half) run on the SIMT path by design, which is still checked. Exit 1 if any check fails.
"""
import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: python scripts/...
from mishbench.op.precision import eager_matmul_mode  # noqa: E402

SHAPES = [(1, 1, 1), (7, 13, 5), (129, 10, 20), (1000, 123, 77), (257, 1024, 383), (300, 1000, 200),
          (520, 4104, 130), (1024, 8192, 8192)]
# (label, dtype, precision passed to the op, accuracy class: whether eager runs with TF32 on)
MODES = [("3xtf32", torch.float32, "3xtf32", False), ("tf32", torch.float32, "tf32", True),
         ("bf16", torch.bfloat16, "native", False), ("fp16", torch.float16, "native", False)]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def make_inputs(b, k, n, seed=1234):
    """KernelBench inputs: x ~ U[0, 1); nn.Linear's default init for weight and bias."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.rand(b, k, device="cuda", generator=g, dtype=torch.float64)
    bound = 1.0 / k ** 0.5
    w = (torch.rand(n, k, device="cuda", generator=g, dtype=torch.float64) * 2 - 1) * bound
    bias = (torch.rand(n, device="cuda", generator=g, dtype=torch.float64) * 2 - 1) * bound
    return x, w, bias


def eager(x, w, b):
    return F.mish(F.mish(F.linear(x, w, b)))


def check(op) -> bool:
    ok = True
    print(f"{'shape BxKxN':>16} {'mode':>7} {'err y':>9} {'err z':>9} {'eager':>9} {'bar':>9} {'maxabs':>9}  verdict")
    for (bsz, k, n) in SHAPES:
        x64, w64, b64 = make_inputs(bsz, k, n)
        z64 = F.linear(x64, w64, b64)
        y64 = eager(x64, w64, b64)
        for label, dt, prec, tf in MODES:
            x, w, b = x64.to(dt), w64.to(dt), b64.to(dt)
            # Reference on the rounded inputs the kernel actually sees.
            xr, wr, br = x.double(), w.double(), b.double()
            zr = F.linear(xr, wr, br)
            yr = eager(xr, wr, br)
            with eager_matmul_mode(tf):
                e_eager = rel_err(eager(x, w, b), yr)
            eps = torch.finfo(dt).eps
            bar = max(2 * e_eager, (8 if dt == torch.float32 else 1) * eps)
            try:
                y, z = op(x, w, b, prec, True)
                torch.cuda.synchronize()
            except Exception as e:  # noqa: BLE001
                print(f"{bsz:>5}x{k}x{n:<6} {label:>7} ERROR {type(e).__name__}: {e}")
                ok = False
                continue
            ey, ez = rel_err(y, yr), rel_err(z, zr)
            maxabs = (y.double() - yr).abs().max().item()
            finite = bool(torch.isfinite(y).all()) and bool(torch.isfinite(z).all())
            # z is checked against the same bar (it is rounded to the dtype like y).
            good = finite and ey <= bar and ez <= max(bar, 2 * eps)
            ok &= good
            print(f"{bsz:>5}x{k}x{n:<6} {label:>7} {ey:9.2e} {ez:9.2e} {e_eager:9.2e} {bar:9.2e} {maxabs:9.2e}  "
                  f"{'ok' if good else 'FAIL'}")
        del x64, w64, b64, z64, y64
        torch.cuda.empty_cache()
    return ok


def time_ms(fn, iters: int, flush: torch.Tensor) -> float:
    """Median of `iters` event-timed calls, L2 flushed before each (DESIGN.md 'How performance is measured')."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        flush.zero_()
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    return statistics.median(times)


def bench(op, iters: int) -> None:
    bsz, k, n = 1024, 8192, 8192
    flops = 2.0 * bsz * k * n
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
    flush = torch.empty(2 * l2 // 4 + 1, device="cuda", dtype=torch.float32)
    x64, w64, b64 = make_inputs(bsz, k, n)
    x32, w32, b32 = x64.float(), w64.float(), b64.float()
    del x64, w64, b64
    with eager_matmul_mode(False):
        t_fp32 = time_ms(lambda: eager(x32, w32, b32), iters, flush)
    print(f"\nKernelBench {bsz}x{k}x{n} forward, median of {iters} (L2 flushed); eager fp32 (ieee) = {t_fp32:.3f} ms")
    print(f"{'mode':>7} {'ours ms':>9} {'TFLOP/s':>8} {'eager ms':>9} {'vs eager':>9} {'vs fp32':>8}")
    for label, dt, prec, tf in MODES:
        x, w, b = x32.to(dt), w32.to(dt), b32.to(dt)
        t_ours = time_ms(lambda: op(x, w, b, prec, False), iters, flush)
        with eager_matmul_mode(tf):
            t_eager = time_ms(lambda: eager(x, w, b), iters, flush)
        print(f"{label:>7} {t_ours:9.3f} {flops / t_ours / 1e9:8.1f} {t_eager:9.3f} {t_eager / t_ours:8.2f}x "
              f"{t_fp32 / t_ours:7.2f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-bench", action="store_true")
    ap.add_argument("--iters", type=int, default=30)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("tc_selftest: needs a CUDA GPU", file=sys.stderr)
        return 1
    from mishbench.op import build
    if build.load() is None:
        print(f"tc_selftest: extension not loaded: {build.status().get('reason')}", file=sys.stderr)
        return 1
    op = torch.ops.mishbench.linear_mish_mish_fwd
    print(f"device: {torch.cuda.get_device_name(0)} (sm_{''.join(map(str, torch.cuda.get_device_capability(0)))}), "
          f"torch {torch.__version__}")
    ok = check(op)
    if not args.no_bench:
        bench(op, args.iters)
    print("\nall checks passed" if ok else "\nSOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
