"""The skinny-shape routes on a GPU (marked `cuda`: skipped without one; run by scripts/device_check.sh).

gemv (forward, B <= 16), splitk (forward, fp32 / fp64 with few output tiles) and gemv+dz (backward, B <= 16)
are taken only with MISHBENCH_ROUTES=next, which the extension reads once per process. So:
  - run with MISHBENCH_ROUTES=next, every test here runs, and one subprocess checks that a process without
    it names today's routes;
  - run without it, the tests that need the new routes re-run this file in a subprocess with it set.
Each case draws fresh inputs, poisons the caching allocator with NaN so an unwritten element fails, and holds
y, z, dx, dW and db to max(2 · e(eager), floor) against a float64 run (floor 8·ε for fp32 and fp64, 1·ε
for fp16 / bf16; for fp64, e(eager) is the float64 reference recomputed with each sum in two halves).
"""
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mishbench.op import ops
from mishbench.op.precision import eager_matmul_mode

pytestmark = pytest.mark.cuda

NEXT = os.environ.get("MISHBENCH_ROUTES") == "next"
needs_next = pytest.mark.skipif(not NEXT, reason="needs MISHBENCH_ROUTES=next in this process "
                                "(test_next_routes_in_a_subprocess runs them)")
ROOT = Path(__file__).resolve().parents[1]
DEV = torch.device("cuda")

MODES = [(torch.float32, "ieee"), (torch.float32, "3xtf32"), (torch.float32, "tf32"),
         (torch.bfloat16, "native"), (torch.float16, "native"), (torch.float64, "native")]
MODE_IDS = [f"{str(d).replace('torch.', '')}-{p}" for d, p in MODES]
DTYPE_NAMES = {torch.float32: "fp32", torch.float64: "fp64", torch.float16: "fp16", torch.bfloat16: "bf16"}
DIMS = [1, 7, 123, 1000, 4096]
# The child process of test_next_routes_in_a_subprocess checks a core of the grid (the full grid is the
# device_check.sh `routes` stage's, which runs this file under MISHBENCH_ROUTES=next directly).
_CORE = os.environ.get("MISHBENCH_ROUTES_TEST_GRID") == "core"
GRID = [(b, k, n) for b in (1, 7, 16, 123) for k in DIMS for n in DIMS
        if not _CORE or (k, n) in ((1, 1), (7, 123), (123, 1000), (1000, 7), (4096, 4096))]
# Few output tiles, K long enough to split (B in 17..64, K >= 2 x 512, M·N·K >= 2^21): splitk for fp32
# ieee/3xtf32 and fp64. K = 1031 is odd: the scalar-load path.
SPLITK = [(17, 4096, 4096), (33, 1031, 123), (33, 4096, 1000), (48, 1031, 4096), (64, 4096, 9)]
NEW_ROUTES = {"gemv", "splitk", "gemv+dz"}


# ------------------------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module", autouse=True)
def extension():
    if ops.implementation("cuda") != "cuda":
        pytest.fail(f"CUDA extension not available: {ops.extension_reason()}")


def ext_module():
    """The loaded extension module (its route() names the family a call would run)."""
    from mishbench.op import build

    module = build.load()
    if module is None or not hasattr(module, "route"):
        pytest.fail(f"extension module without route(): {build.status().get('reason')}")
    return module


def route(b, k, n, dtype, precision, backward=False):
    return ext_module().route(b, k, n, DTYPE_NAMES[dtype], precision, torch.cuda.current_device(), backward)


def small_bwd_fits(m, n, k):
    """csrc/elementwise.cu's one-block backward (small_bwd_fits); it keeps the problems it fits."""
    return m * n <= 4096 and m * k + n * k + n <= 16384 and m * n * k <= 2**20


def expected_next(b, k, n, dtype, precision):
    """(forward, backward) route under MISHBENCH_ROUTES=next where the table is unambiguous, else None."""
    fwd = bwd = None
    if b <= 16:
        fwd, bwd = "gemv", ("small" if small_bwd_fits(b, n, k) else "gemv+dz")
    elif (b, k, n) in SPLITK:
        fp32_class = dtype == torch.float64 or (dtype == torch.float32 and precision in ("ieee", "3xtf32"))
        fwd = "splitk" if fp32_class else "not-new"
        bwd = "not-new"
    elif b > 64:
        fwd = bwd = "not-new"
    return fwd, bwd


def draw(b, k, n, kind, gen):
    """float64 x (b, k), nn.Linear-initialised W (n, k) and bias, upstream gradient (b, n), on the GPU."""
    x = torch.rand(b, k, generator=gen, dtype=torch.float64) if kind == "rand" \
        else torch.randn(b, k, generator=gen, dtype=torch.float64) * 10
    bound = 1.0 / k ** 0.5
    w = (torch.rand(n, k, generator=gen, dtype=torch.float64) * 2 - 1) * bound
    bias = (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * bound
    gy = torch.randn(b, n, generator=gen, dtype=torch.float64)
    return [t.to(DEV) for t in (x, w, bias, gy)]


def halves(a, b):
    """a @ b with the inner dimension summed in two halves (another order of the same float64 sum)."""
    h = a.shape[1] // 2
    return a @ b if h == 0 else a[:, :h] @ b[:h] + a[:, h:] @ b[h:]


def reference(x, w, bias, gy, split=False):
    """[z, y, dx, dW, db] of the op in float64 (autograd for dz); split: every sum in two halves."""
    mm = halves if split else torch.matmul
    z = (mm(x, w.t()) + bias).requires_grad_()
    y = F.mish(F.mish(z))
    y.backward(gy)
    dz = z.grad
    return [z.detach(), y.detach(), mm(dz, w), mm(dz.t(), x), mm(dz.t(), torch.ones_like(dz[:, :1]))[:, 0]]


def eager(x, w, bias, gy, tf32):
    """[z, y, dx, dW, db] of eager PyTorch in the inputs' dtype (the accuracy class's baseline)."""
    xx, ww, bb = (t.detach().clone().requires_grad_() for t in (x, w, bias))
    with eager_matmul_mode(tf32):
        z = F.linear(xx, ww, bb)
        y = F.mish(F.mish(z))
        y.backward(gy)
    return [z.detach(), y.detach(), xx.grad, ww.grad, bb.grad]


def ours(x, w, bias, gy, precision):
    """[z, y, dx, dW, db] of the extension's ops, outputs poisoned with NaN beforehand."""
    poison = [torch.full(s, float("nan"), device=DEV, dtype=x.dtype) for s in (gy.shape, gy.shape, x.shape,
                                                                                w.shape, bias.shape)]
    del poison
    y, z = torch.ops.mishbench.linear_mish_mish_fwd(x, w, bias, precision, True)
    dx, dw, db = torch.ops.mishbench.linear_mish_mish_bwd(gy, z, x, w, precision, [True, True, True])
    return [z, y, dx, dw, db]


def rel_err(out, ref):
    o, r = out.detach().double(), ref.detach().double()
    if o.shape != r.shape or not torch.equal(torch.isnan(o), torch.isnan(r)):
        return float("inf")
    num, den = torch.linalg.vector_norm(o - r).item(), torch.linalg.vector_norm(r).item()
    return num / den if den > 0 else num


def floor(dtype):
    return (1.0 if dtype in (torch.float16, torch.bfloat16) else 8.0) * torch.finfo(dtype).eps


def where_off(out, ref):
    """One line: how many elements differ by more than 1e-3 of the reference's max, and the worst one."""
    d = (out.double() - ref.double()).abs()
    scale = ref.double().abs().max().clamp_min(1e-300)
    n_off = int((d > 1e-3 * scale).sum())
    i = int(torch.nan_to_num(d, nan=float("inf")).argmax())
    idx, rest = [], i
    for size in reversed(d.shape):
        idx.insert(0, rest % size)
        rest //= size
    return f"{n_off}/{d.numel()} elements off by > 1e-3·max|ref|; worst at {tuple(idx)}: {out.flatten()[i].item():.6g} " \
           f"vs {ref.flatten()[i].item():.6g}"


def check_case(b, k, n, dtype, precision):
    gen = torch.Generator().manual_seed(zlib.crc32(f"{b}x{k}x{n}{dtype}{precision}".encode()))
    for kind in ("rand", "randn10"):
        x64, w64, b64, gy64 = draw(b, k, n, kind, gen)
        x, w, bias, gy = (t.to(dtype) for t in (x64, w64, b64, gy64))
        truth = reference(*(t.double() for t in (x, w, bias, gy)))
        if dtype == torch.float64:
            base = reference(x, w, bias, gy, split=True)
        else:
            base = eager(x, w, bias, gy, tf32=(precision == "tf32"))
        got = ours(x, w, bias, gy, precision)
        for name, o, t, e in zip(("z", "y", "dx", "dW", "db"), got, truth, base):
            assert o.dtype == dtype and o.shape == t.shape, f"{name}: {o.dtype} {tuple(o.shape)}"
            assert not torch.isnan(o).any(), f"{name}: NaN (unwritten element?) at {b}x{k}x{n} {kind}"
            err, bar = rel_err(o, t), max(2 * rel_err(e, t), floor(dtype))
            assert err <= bar, f"{name} at {b}x{k}x{n} {kind}: rel_err {err:.3g} > bar {bar:.3g}; {where_off(o, t)}"


# --------------------------------------------------------------------------------------------------- tests
@needs_next
@pytest.mark.parametrize("dtype, precision", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("b, k, n", GRID + SPLITK, ids=lambda v: str(v))
def test_routes_named_and_within_bars(b, k, n, dtype, precision):
    fwd, bwd = expected_next(b, k, n, dtype, precision)
    for want, backward in ((fwd, False), (bwd, True)):
        got = route(b, k, n, dtype, precision, backward)
        if want == "not-new":
            assert got not in NEW_ROUTES, f"{b}x{k}x{n} backward={backward}: {got}"
        elif want is not None:
            assert got == want, f"{b}x{k}x{n} backward={backward}: route {got}, expected {want}"
    check_case(b, k, n, dtype, precision)


@needs_next
@pytest.mark.parametrize("b, k, n, dtype, precision", [
    (48, 1031, 4096, torch.float32, "3xtf32"), (17, 4096, 4096, torch.float32, "ieee"),
    (33, 4096, 1000, torch.float64, "native"),      # splitk
    (1, 4096, 7, torch.float32, "3xtf32"), (16, 4096, 123, torch.bfloat16, "native"),  # gemv with a K-split
    (7, 4096, 4096, torch.float16, "native"),        # gemv+dz with an N-split of dx
])
def test_same_bits_every_run(b, k, n, dtype, precision):
    """The split reductions add their slices in a fixed order: two runs give identical outputs."""
    gen = torch.Generator().manual_seed(7)
    x, w, bias, gy = (t.to(dtype) for t in draw(b, k, n, "randn10", gen))
    first = ours(x, w, bias, gy, precision)
    second = ours(x, w, bias, gy, precision)
    for name, a, c in zip(("z", "y", "dx", "dW", "db"), first, second):
        assert torch.equal(a, c), f"{name} differs between two runs at {b}x{k}x{n}"
    y_plain = torch.ops.mishbench.linear_mish_mish(x, w, bias, precision)
    assert torch.equal(y_plain, first[1]), "the no-grad op must run the same kernels as the saving one"


@needs_next
@pytest.mark.parametrize("b, k, n, dtype, precision, backward, kernels", [
    (1, 4096, 4096, torch.float32, "3xtf32", False, ["gemv_kernel"]),
    (1, 4096, 7, torch.float32, "3xtf32", False, ["gemv_kernel", "split_reduce_kernel"]),
    (33, 4096, 1000, torch.float32, "3xtf32", False, ["splitk_kernel", "split_reduce_kernel"]),
    (7, 4096, 4096, torch.bfloat16, "native", True, ["dx_kernel", "dw_kernel"]),
])
def test_named_route_is_what_runs(b, k, n, dtype, precision, backward, kernels):
    """The profiler sees the kernels of the route that route() names."""
    from torch.profiler import ProfilerActivity, profile

    gen = torch.Generator().manual_seed(3)
    x, w, bias, gy = (t.to(dtype) for t in draw(b, k, n, "rand", gen))
    _, z = torch.ops.mishbench.linear_mish_mish_fwd(x, w, bias, precision, True)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        if backward:
            torch.ops.mishbench.linear_mish_mish_bwd(gy, z, x, w, precision, [True, True, True])
        else:
            torch.ops.mishbench.linear_mish_mish_fwd(x, w, bias, precision, True)
        torch.cuda.synchronize()
    names = " ".join(e.key for e in prof.key_averages())
    if not names.strip():
        pytest.skip("the profiler recorded no CUDA kernels here (CUPTI unavailable?)")
    for kernel in kernels:
        assert kernel in names, f"{kernel} not among the kernels that ran: {names[:800]}"


def _routes_in_subprocess(cases, next_routes: bool):
    """route() answers for (b, k, n, dtype_name, precision, backward) cases in a fresh process with or
    without MISHBENCH_ROUTES=next (the extension reads it once per process)."""
    env = dict(os.environ)
    env.pop("MISHBENCH_ROUTES", None)
    if next_routes:
        env["MISHBENCH_ROUTES"] = "next"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    code = ("import json, sys, torch\n"
            "from mishbench.op import build, ops\n"
            "assert ops.implementation('cuda') == 'cuda', ops.extension_reason()\n"
            "m = build.load()\n"
            "cases = json.loads(sys.argv[1])\n"
            "print(json.dumps([m.route(b, k, n, d, p, torch.cuda.current_device(), bw) for b, k, n, d, p, bw in cases]))\n")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(cases)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_without_the_variable_routes_are_todays():
    """No gemv / splitk / gemv+dz without MISHBENCH_ROUTES=next, and today's choices where they are fixed."""
    cases = [(b, k, n, DTYPE_NAMES[d], p, bw) for b, k, n in GRID[::3] + SPLITK for d, p in MODES
             for bw in (False, True)]
    known = [(1, 4096, 4096, "fp32", "ieee", False), (1, 4096, 4096, "fp32", "ieee", True),
             (7, 13, 5, "fp64", "native", False), (1, 7, 7, "fp32", "3xtf32", False),
             (128, 10, 20, "fp32", "3xtf32", True), (1000, 123, 7, "fp32", "3xtf32", False)]
    names = _routes_in_subprocess(cases + known, next_routes=False)
    for case, name in zip(cases, names):
        assert name not in NEW_ROUTES, f"{case}: {name} without MISHBENCH_ROUTES=next"
    # cuBLAS for ieee from 2^24 multiply-adds; SIMT for fp64 and under 2^21; the one-block small backward.
    assert names[len(cases):] == ["cublas", "cublas+dz", "simt", "simt", "small", "simt"]
    if NEXT:
        assert route(1, 4096, 4096, torch.float32, "ieee") == "gemv"  # this process reads the variable once


def test_route_checks_its_arguments():
    module = ext_module()
    dev = torch.cuda.current_device()
    assert module.route(1, 8, 8, "fp32", "ieee", -1, False) == "cpu"
    with pytest.raises(ValueError, match="unknown dtype"):
        module.route(1, 8, 8, "int8", "native", dev, False)
    with pytest.raises(RuntimeError, match="applies to float32 inputs only"):
        module.route(1, 8, 8, "bf16", "3xtf32", dev, False)
    with pytest.raises(ValueError, match="must be >= 0"):
        module.route(-1, 8, 8, "fp32", "ieee", dev, False)
    with pytest.raises(ValueError, match="not one of"):
        module.route(1, 8, 8, "fp32", "ieee", torch.cuda.device_count(), False)
    with pytest.raises(TypeError):
        module.route(1, 8, 8, "fp32", "ieee", dev)


@pytest.mark.skipif(NEXT or os.environ.get("MISHBENCH_ROUTES_CHILD") == "1", reason="already under next")
def test_next_routes_in_a_subprocess():
    """Without the variable in this process: this file again, in a child process with it set (a core of the
    grid: every batch size, five (K, N) pairs)."""
    env = dict(os.environ, MISHBENCH_ROUTES="next", MISHBENCH_ROUTES_CHILD="1", MISHBENCH_ROUTES_TEST_GRID="core")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-m", "cuda", "-p", "no:cacheprovider",
                          str(Path(__file__).resolve())], env=env, cwd=str(ROOT), capture_output=True, text=True,
                         timeout=1800)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
