"""The timing engine: statistics and the sampling loop on the CPU; CUDA-event timing on a GPU."""
import itertools

import pytest
import torch

from mishbench import clock as timing
from mishbench.bench.plan import peak_kind
from mishbench.clock import merge, quantile, summarize, time_cpu


def test_quantiles_match_linear_interpolation():
    values = [float(v) for v in range(1, 11)]
    assert quantile(values, 0.5) == pytest.approx(5.5)
    assert quantile(values, 0.2) == pytest.approx(2.8)
    assert quantile(values, 0.8) == pytest.approx(8.2)
    assert quantile([3.0], 0.2) == 3.0


def test_summarize_and_merge():
    t = summarize([4.0, 1.0, 3.0, 2.0, 5.0], host_samples=[10.0, 11.0, 12.0])
    assert (t.median_ms, t.iters, t.host_ms_median) == (3.0, 5, 11.0)
    assert t.p20_ms == pytest.approx(1.8) and t.p80_ms == pytest.approx(4.2)
    assert t.spread == pytest.approx((4.2 - 1.8) / 3.0)
    both = merge([summarize([1.0, 2.0]), summarize([3.0, 4.0, 5.0])])
    assert both.iters == 5 and both.median_ms == 3.0


class FakeClock:
    """Each call of fn advances the clock by the next duration (ms)."""

    def __init__(self, durations_ms):
        self.now = 0.0
        self.durations = itertools.cycle(durations_ms)
        self.calls = []

    def clock(self):
        return self.now

    def fn(self, inputs):
        self.calls.append(inputs)
        self.now += next(self.durations) / 1e3


def test_time_cpu_rotates_inputs_warms_up_and_stops_when_stable():
    fake = FakeClock([2.0])
    setups = []
    t = time_cpu(fake.fn, ["a", "b", "c"], warmup=4, warmup_ms=0, iters=30, max_iters=200, clock=fake.clock,
                 setup=setups.append)
    assert t.iters == 30 and t.median_ms == pytest.approx(2.0) and t.spread == pytest.approx(0.0)
    assert len(fake.calls) == 34 and len(setups) == 34  # warm-up is not sampled
    assert fake.calls[:6] == ["a", "b", "c", "a", "b", "c"]


def test_time_cpu_warmup_by_time():
    fake = FakeClock([1.0])
    # warmup_ms is measured on the real clock; a tiny fn needs many calls to fill 20 ms
    t = time_cpu(lambda x: None, [0], warmup=1, warmup_ms=20, iters=5, max_iters=5)
    assert t.iters == 5
    time_cpu(fake.fn, [0], warmup=3, warmup_ms=0, iters=5, max_iters=5, clock=fake.clock)
    assert len(fake.calls) == 8


def test_time_cpu_is_adaptive_when_the_spread_is_wide():
    fake = FakeClock([1.0, 1.0, 3.0, 1.0, 5.0])
    t = time_cpu(fake.fn, [0], warmup=0, warmup_ms=0, iters=30, max_iters=60, clock=fake.clock)
    assert t.spread > timing.MAX_SPREAD
    assert t.iters == 60
    fixed = time_cpu(fake.fn, [0], warmup=0, warmup_ms=0, iters=30, max_iters=30, clock=fake.clock)
    assert fixed.iters == 30


def test_time_cpu_budget_bounds_adaptive_sampling():
    fake = FakeClock([1.0, 9.0])
    t = time_cpu(fake.fn, [0], warmup=0, warmup_ms=0, iters=10, max_iters=10_000, budget_s=0.0, clock=fake.clock)
    assert t.iters < 10_000


def test_time_cpu_rejects_no_inputs():
    with pytest.raises(ValueError, match="inputs_list"):
        time_cpu(lambda x: None, [], warmup=0, warmup_ms=0)


def test_peak_kind_per_precision():
    assert peak_kind("ieee", torch.float32) == ("fp32", 1.0)
    assert peak_kind("3xtf32", torch.float32) == ("tf32", 3.0)
    assert peak_kind("tf32", torch.float32) == ("tf32", 1.0)
    assert peak_kind("native", torch.bfloat16) == ("bf16", 1.0)
    assert peak_kind("native", torch.float16) == ("fp16", 1.0)


# ---------------------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.cuda
def test_flush_buffer_is_twice_l2():
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 0) or timing.DEFAULT_L2_BYTES
    assert timing.flush_bytes(0) >= 2 * l2


@pytest.mark.cuda
def test_gemm_time_agrees_with_torch_benchmark():
    from torch.utils import benchmark
    from mishbench.op.precision import eager_matmul_mode
    a = torch.randn(4096, 4096, device="cuda")
    b = torch.randn(4096, 4096, device="cuda")
    with eager_matmul_mode(False):
        ours = timing.time_cuda(lambda ab: torch.matmul(*ab), [(a, b)], warmup=5, warmup_ms=50, iters=30)
        ref = benchmark.Timer("torch.matmul(a, b)", globals={"a": a, "b": b, "torch": torch}).blocked_autorange(
            min_run_time=1.0)
    ref_ms = ref.median * 1e3
    assert abs(ours.median_ms - ref_ms) / ref_ms < 0.10, (ours, ref_ms)


@pytest.mark.cuda
def test_side_stream_work_is_not_missed():
    a = torch.randn(4096, 4096, device="cuda")
    side = torch.cuda.Stream()
    on_main = timing.time_cuda(lambda x: [torch.matmul(x, x) for _ in range(4)], [a], warmup=2, warmup_ms=0,
                               iters=10, max_iters=10)

    def hidden(x):
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(4):
                torch.matmul(x, x)

    t = timing.time_cuda(hidden, [a], warmup=2, warmup_ms=0, iters=10, max_iters=10)
    # The events on the current stream do not see it; the device-wide synchronize (host clock) does.
    assert t.host_ms_median >= 0.8 * on_main.median_ms, (t, on_main)
    assert t.host_excess > 3.0


@pytest.mark.cuda
def test_same_provider_twice_agrees_within_its_spread():
    from mishbench.op.reference import Model
    model = Model(4096, 4096).cuda()
    xs = [torch.rand(1024, 4096, device="cuda") for _ in range(3)]
    with torch.no_grad():
        t1 = timing.time_cuda(model, xs)
        t2 = timing.time_cuda(model, xs)
    tol = max(t1.p80_ms - t1.p20_ms, t2.p80_ms - t2.p20_ms, 0.02 * t1.median_ms)
    assert abs(t1.median_ms - t2.median_ms) <= tol, (t1, t2)


@pytest.mark.cuda
def test_measure_peaks_positive_and_ordered():
    from mishbench.op.precision import eager_matmul_mode
    peaks = timing.measure_peaks(torch.device("cuda"), {k: (lambda k=k: eager_matmul_mode(k == "tf32")) for k in ("fp32", "tf32")})
    assert set(peaks) == set(timing.PEAK_KINDS) and all(v > 0 for v in peaks.values())
    if torch.cuda.get_device_capability()[0] >= 8:
        assert peaks["bf16"] > peaks["fp32"]
