"""The fused CUDA kernels on a GPU (marked `cuda`: skipped without one; run by scripts/device_check.sh).

Every trial draws fresh inputs (`rand`, and `randn`·10 so both Mish branches and the x > 20 threshold are
hit), poisons the caching allocator with NaN first so an unwritten output element fails, and holds outputs
and gradients to the DESIGN.md bars: max(2·e(eager), c·ε) against float64 truth.
"""
import copy
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from mishbench.op import ops
from mishbench.truth import error_bar, rel_err
from mishbench.op.model import ModelNew
from mishbench.op.precision import eager_matmul_mode
from mishbench.op.reference import Model
from mishbench.shapes import KERNELBENCH, ODD_SIZES, Size

pytestmark = pytest.mark.cuda

MODES = [(torch.float32, "ieee"), (torch.float32, "3xtf32"), (torch.float32, "tf32"),
         (torch.bfloat16, "native"), (torch.float16, "native"), (torch.float64, "native")]
SHAPES = ODD_SIZES + [Size(257, 1024, 383), Size(64, 4096, 4096)]
DEV = torch.device("cuda")


@pytest.fixture(scope="module", autouse=True)
def extension():
    if ops.implementation("cuda") != "cuda":
        pytest.fail(f"CUDA extension not available: {ops.extension_reason()}")


def poison(*shapes_dtypes):
    """Leave NaN-filled blocks of the outputs' sizes in the caching allocator for the next call to reuse."""
    blocks = [torch.full(shape, float("nan"), device=DEV, dtype=dtype) for shape, dtype in shapes_dtypes]
    del blocks


def draw(size: Size, kind: str, dtype, gen):
    shape = (size.batch, size.in_features)
    x = torch.rand(shape, generator=gen, dtype=torch.float64) if kind == "rand" \
        else torch.randn(shape, generator=gen, dtype=torch.float64) * 10
    return x.to(DEV, dtype)


def models(size: Size, dtype, precision, seed):
    torch.manual_seed(seed)
    ref = Model(size.in_features, size.out_features).to(DEV)
    new = ModelNew(size.in_features, size.out_features, precision=precision).to(DEV)
    new.load_state_dict(ref.state_dict())
    return ref, new.to(dtype)


def run_all(ref, new, x, gy, dtype, tf32):
    """[y, dx, dW, db] for ours, float64 truth and eager in the accuracy class."""
    outs = []
    for model, dt, eager_tf32 in ((new, dtype, False), (copy.deepcopy(ref).double(), torch.float64, False),
                                  (copy.deepcopy(ref).to(dtype), dtype, tf32)):
        xx = x.to(dt).clone().requires_grad_()
        if model is new:
            poison((tuple(x.shape[:-1]) + (new.linear.out_features,), dt))
        with eager_matmul_mode(eager_tf32):
            y = model(xx)
            y.backward(gy.to(dt))
        outs.append([y.detach(), xx.grad, model.linear.weight.grad, model.linear.bias.grad])
    return outs


@pytest.mark.parametrize("dtype, precision", MODES, ids=[f"{d}-{p}".replace("torch.", "") for d, p in MODES])
@pytest.mark.parametrize("size", SHAPES + [KERNELBENCH], ids=str)
def test_forward_backward_within_bars(dtype, precision, size):
    if dtype == torch.float64 and size.flops > 2e9:
        pytest.skip("float64 at this size is slow and adds nothing")
    gen = torch.Generator().manual_seed(zlib.crc32(f"{dtype}{precision}{size}".encode()))
    for trial, kind in enumerate(("rand", "randn10")):
        ref, new = models(size, dtype, precision, seed=trial)
        x = draw(size, kind, dtype, gen)
        gy = torch.randn(size.batch, size.out_features, generator=gen, dtype=torch.float64).to(DEV)
        ours, truth, eager = run_all(ref, new, x, gy, dtype, tf32=(precision == "tf32"))
        for name, o, t, e in zip(("y", "dx", "dW", "db"), ours, truth, eager):
            assert o.dtype == e.dtype and o.shape == t.shape, name
            assert not torch.isnan(o).any(), f"{name}: NaN in output (unwritten element?) at {size} {kind}"
            err, bar = rel_err(o, t), error_bar(rel_err(e, t), dtype)
            assert err <= bar, f"{name} at {size} {kind}: rel_err {err:.3g} > bar {bar:.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_extreme_inputs_behave_like_reference(dtype):
    size = Size(64, 48, 40)
    ref, new = models(size, dtype, None, seed=3)
    ref = ref.to(dtype)
    x = torch.randn(size.batch, size.in_features, device=DEV).to(dtype)
    x[0] = 1e4
    x[1] = -1e4
    x[2, 0] = -float("inf")
    x[3, 0] = float("nan")
    x[4, 5] = float("inf")
    with torch.no_grad():
        y, ye = new(x), ref(x)
    assert torch.equal(torch.isnan(y), torch.isnan(ye))
    assert torch.equal(torch.isinf(y), torch.isinf(ye))
    finite = torch.isfinite(ye)
    torch.testing.assert_close(y[finite].float(), ye[finite].float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype, precision", MODES[:5])
def test_deterministic(dtype, precision):
    size = Size(300, 1000, 500)
    _, new = models(size, dtype, precision, seed=1)
    x = draw(size, "randn10", dtype, torch.Generator().manual_seed(0)).requires_grad_()
    y1 = new(x)
    y1.sum().backward()
    g1 = (x.grad.clone(), new.linear.weight.grad.clone(), new.linear.bias.grad.clone())
    x.grad = None
    new.zero_grad()
    y2 = new(x)
    y2.sum().backward()
    assert torch.equal(y1, y2)
    for a, b in zip(g1, (x.grad, new.linear.weight.grad, new.linear.bias.grad)):
        assert torch.equal(a, b)


def test_gradcheck_float64_on_cuda_kernels():
    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(s, generator=gen, dtype=torch.float64).to(DEV).requires_grad_()
               for s in ((5, 7), (6, 7), (6,)))
    assert torch.autograd.gradcheck(lambda *a: torch.ops.mishbench.linear_mish_mish(*a, "native"), (x, w, b))


def test_leading_dims_noncontiguous_and_1d():
    ref, new = models(Size(1, 24, 16), torch.float32, "ieee", seed=0)
    base = torch.randn(3, 24, 10, device=DEV)
    for x in (torch.randn(2, 3, 24, device=DEV), base.transpose(1, 2), torch.randn(24, device=DEV)):
        with torch.no_grad():
            torch.testing.assert_close(new(x), ref(x), rtol=1e-5, atol=1e-5)


def test_optimizer_steps_match_reference():
    size = Size(128, 256, 64)
    ref, new = models(size, torch.float32, "3xtf32", seed=4)
    opt_r = torch.optim.SGD(ref.parameters(), lr=0.1)
    opt_n = torch.optim.SGD(new.parameters(), lr=0.1)
    x = torch.randn(size.batch, size.in_features, device=DEV)
    t = torch.randn(size.batch, size.out_features, device=DEV)
    for _ in range(2):
        for model, opt in ((ref, opt_r), (new, opt_n)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), t).backward()
            opt.step()
    for (_, a), (_, b) in zip(new.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_inference_mode_and_no_grad_run_without_saving():
    _, new = models(Size(16, 32, 8), torch.float32, None, seed=0)
    x = torch.randn(16, 32, device=DEV)
    with torch.inference_mode():
        y = new(x)
    with torch.no_grad():
        y2 = new(x)
    assert y2.grad_fn is None
    torch.testing.assert_close(y, y2)


def test_fast_entry_taken_and_same_as_the_opoverload(monkeypatch):
    """ModelNew's forward on CUDA goes through the extension's C entry point, which gives bit for
    bit what torch.ops gives; a tensor subclass (it has __torch_function__) takes the OpOverload instead; a
    bad input still raises the CPU path's ValueError."""
    fast = ops._ext_state["fast"]
    if fast is None:
        pytest.skip("no fast entry point on this torch (needs torch.compiler.is_compiling, torch >= 2.3)")
    calls = []

    def spy(*args):
        calls.append(type(args[0]))
        return fast(*args)

    monkeypatch.setitem(ops._ext_state, "fast", spy)
    _, new = models(Size(128, 10, 20), torch.float32, "3xtf32", seed=0)
    x = torch.randn(128, 10, device=DEV, requires_grad=True)
    y = new(x)
    assert calls == [torch.Tensor]
    want = torch.ops.mishbench.linear_mish_mish.default(x, new.linear.weight, new.linear.bias, "3xtf32")
    torch.testing.assert_close(y, want, rtol=0, atol=0)
    y.sum().backward()
    assert x.grad is not None and new.linear.weight.grad is not None

    class Sub(torch.Tensor):
        pass

    torch.testing.assert_close(new(x.detach().as_subclass(Sub)).as_subclass(torch.Tensor), want.detach())
    assert calls == [torch.Tensor]
    with pytest.raises(ValueError, match="in_features=11"):
        new(torch.randn(4, 11, device=DEV))


@pytest.mark.skipif(not hasattr(torch.library, "opcheck"), reason="torch.library.opcheck needs torch >= 2.4")
def test_opcheck():
    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(s, generator=gen).to(DEV).requires_grad_() for s in ((9, 12), (10, 12), (10,)))
    torch.library.opcheck(torch.ops.mishbench.linear_mish_mish.default, (x, w, b, "ieee"))


@pytest.mark.skipif(not hasattr(torch.library, "register_fake"), reason="torch.compile support needs torch >= 2.4")
def test_compile_fullgraph_matches_eager():
    _, new = models(Size(32, 64, 48), torch.float32, "3xtf32", seed=0)
    compiled = torch.compile(new, fullgraph=True)
    x = torch.randn(32, 64, device=DEV, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y = new(x)
    y.sum().backward()
    y2 = compiled(x2)
    y2.sum().backward()
    torch.testing.assert_close(y2, y)
    torch.testing.assert_close(x2.grad, x.grad)


def test_mma_sync_family_still_right_on_hopper():
    """On sm_90 the wgmma kernels take every tensor-core call; the mma.sync family (what sm_80/86/89 run) is
    reached with MISHBENCH_NO_WGMMA=1, read once per process, hence the subprocess: every mode at odd and
    KernelBench shapes within the bars (scripts/tc_selftest.py, forward)."""
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the wgmma path exists only on sm_90; elsewhere the other tests already run mma.sync")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, MISHBENCH_NO_WGMMA="1")
    out = subprocess.run([sys.executable, str(root / "scripts" / "tc_selftest.py"), "--no-bench"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "all checks passed" in out.stdout, out.stdout[-3000:] + out.stderr[-2000:]
