"""The timing engine (DESIGN.md, "How performance is measured").

Each timed call: (optional `setup`, untimed) → flush L2 by writing a buffer ≥ 2× the device's L2 → device-wide
synchronize → start event → `fn(inputs)` (host overhead included: it is what launch-bound shapes measure) →
end event → device-wide synchronize, then read the events. The host clock around the call and the final
synchronize is kept too (`host_ms_*`): work that `fn` leaves on a side stream is not ordered before the end
event on the current stream, but the device-wide synchronize waits for it, so host time > event time flags it.

Warm-up runs both by count and by time. Several input sets are rotated so no call reuses the previous
call's inputs. After `iters` samples, if (p80 − p20)/median > `max_spread`, sampling goes on up to
`max_iters` or `budget_s`. `time_cpu` shares the loop and the statistics (host clock only) so tests can
exercise them without a GPU. `measure_peaks` measures GEMM peak rates in-process for pct_of_peak.

The one timing engine: bench, the DDP ranks, the candidate worker and the anti-cheat roofline all time
through it. It imports torch only (the candidate worker imports it).
"""
import contextlib
import functools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

DEFAULT_L2_BYTES = 100 * 2**20  # when the device does not report its L2 size
MAX_SPREAD = 0.1


@dataclass
class Timing:
    """Statistics of one timed function. Times in milliseconds."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    iters: int
    samples: List[float] = field(repr=False)
    host_ms_median: float = float("nan")
    spread: float = float("nan")  # (p80 − p20) / median
    host_samples: List[float] = field(default_factory=list, repr=False)

    @property
    def host_excess(self) -> float:
        """host_ms_median / median_ms: well above 1 means work the events did not see (side streams)."""
        return self.host_ms_median / self.median_ms if self.median_ms > 0 else float("nan")


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of already sorted values."""
    if not sorted_values:
        return float("nan")
    pos = q * (len(sorted_values) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return sorted_values[lo] * (1.0 - frac) + sorted_values[hi] * frac


def summarize(samples: Iterable[float], host_samples: Iterable[float] = ()) -> Timing:
    """median, p20, p80 and spread of samples (ms); median of the host-clock samples when given."""
    samples = [float(s) for s in samples]
    host = [float(s) for s in host_samples]
    ordered = sorted(samples)
    median = quantile(ordered, 0.5)
    p20, p80 = quantile(ordered, 0.2), quantile(ordered, 0.8)
    spread = (p80 - p20) / median if median > 0 else (0.0 if p80 == p20 else float("inf"))
    return Timing(median_ms=median, p20_ms=p20, p80_ms=p80, iters=len(samples), samples=samples,
                  host_ms_median=quantile(sorted(host), 0.5) if host else float("nan"), spread=spread,
                  host_samples=host)


def merge(timings: Sequence[Timing]) -> Timing:
    """One Timing from several chunks of samples of the same function (interleaved rounds)."""
    samples: List[float] = []
    host: List[float] = []
    for t in timings:
        samples += t.samples
        host += t.host_samples
    return summarize(samples, host)


def _loop(measure: Callable[[Any], Tuple[float, float]], inputs_list: Sequence[Any], warmup: int,
          warmup_ms: float, iters: int, max_iters: Optional[int], budget_s: Optional[float],
          max_spread: float, setup: Optional[Callable[[Any], None]]) -> Timing:
    """The shared sampling loop: warm-up (count and time), `iters` samples, then adaptive extension."""
    if not inputs_list:
        raise ValueError("inputs_list is empty: give at least one input set")
    n = len(inputs_list)
    calls = [0]

    def one() -> Tuple[float, float]:
        inputs = inputs_list[calls[0] % n]
        calls[0] += 1
        if setup is not None:
            setup(inputs)
        return measure(inputs)

    start = time.perf_counter()
    done = 0
    while done < warmup or (time.perf_counter() - start) * 1e3 < warmup_ms:
        one()
        done += 1
    iters = max(int(iters), 1)
    max_iters = max(int(max_iters if max_iters is not None else iters), iters)
    samples: List[float] = []
    host: List[float] = []
    t0 = time.perf_counter()
    while True:
        ev, ho = one()
        samples.append(ev)
        host.append(ho)
        if len(samples) < iters:
            continue
        if len(samples) >= max_iters:
            break
        if budget_s is not None and time.perf_counter() - t0 > budget_s:
            break
        # Re-check the spread every few samples, not after each one (sorting is O(n log n)).
        if (len(samples) - iters) % 5 == 0 and summarize(samples).spread <= max_spread:
            break
    return summarize(samples, host)


@functools.lru_cache(maxsize=None)
def l2_bytes(index: int) -> int:
    props = torch.cuda.get_device_properties(index)
    size = int(getattr(props, "L2_cache_size", 0) or 0)  # absent on older torch
    return size if size > 0 else DEFAULT_L2_BYTES


def flush_bytes(device) -> int:
    """Bytes written before each timed call: 2× the L2 (at least 2× the 100 MB default when unknown)."""
    return 2 * l2_bytes(_index(device))


_FLUSH: Dict[int, torch.Tensor] = {}


def _flush_buffer(index: int) -> torch.Tensor:
    buf = _FLUSH.get(index)
    if buf is None:
        buf = torch.empty(flush_bytes(index), dtype=torch.int8, device=torch.device("cuda", index))
        _FLUSH[index] = buf
    return buf


def release_flush_buffers() -> None:
    _FLUSH.clear()


def _index(device) -> int:
    if device is None:
        return torch.cuda.current_device()
    if isinstance(device, int):
        return device
    device = torch.device(device)
    return device.index if device.index is not None else torch.cuda.current_device()


def time_cuda(fn: Callable[[Any], Any], inputs_list: Sequence[Any], warmup: int = 10, warmup_ms: float = 100.0,
              iters: int = 30, max_iters: Optional[int] = 200, flush: bool = True,
              budget_s: Optional[float] = 20.0, max_spread: float = MAX_SPREAD,
              setup: Optional[Callable[[Any], None]] = None, device=None) -> Timing:
    """Time `fn(inputs_list[i % n])` with CUDA events on the current stream (see the module docstring).

    `setup(inputs)` runs before each call outside the timed region (e.g. zeroing grads). With
    `max_iters=iters` the count is fixed (no adaptive extension). The result of `fn` is dropped.
    """
    index = _index(device)
    buf = _flush_buffer(index) if flush else None

    def measure(inputs) -> Tuple[float, float]:
        if buf is not None:
            buf.zero_()
        torch.cuda.synchronize(index)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        h0 = time.perf_counter()
        start.record()
        fn(inputs)
        end.record()
        torch.cuda.synchronize(index)  # device-wide: side-stream work is waited for (host time sees it)
        host_ms = (time.perf_counter() - h0) * 1e3
        return start.elapsed_time(end), host_ms

    with torch.cuda.device(index):
        return _loop(measure, inputs_list, warmup, warmup_ms, iters, max_iters, budget_s, max_spread, setup)


def time_cpu(fn: Callable[[Any], Any], inputs_list: Sequence[Any], warmup: int = 10, warmup_ms: float = 100.0,
             iters: int = 30, max_iters: Optional[int] = 200, flush: bool = False,
             budget_s: Optional[float] = 20.0, max_spread: float = MAX_SPREAD,
             setup: Optional[Callable[[Any], None]] = None, device=None,
             clock: Callable[[], float] = time.perf_counter) -> Timing:
    """The same loop and statistics on the host clock (for tests and CPU dry runs; `flush` is ignored)."""

    def measure(inputs) -> Tuple[float, float]:
        t0 = clock()
        fn(inputs)
        ms = (clock() - t0) * 1e3
        return ms, ms

    return _loop(measure, inputs_list, warmup, warmup_ms, iters, max_iters, budget_s, max_spread, setup)


# ---------------------------------------------------------------------------------------------------------
# Batches: a process that is not trusted is timed from outside, wall clock around "run N calls, synchronize,
# reply", N large enough to amortise the round trip (DESIGN.md, "Candidates: where the judge stands").
# ---------------------------------------------------------------------------------------------------------
def run_batch(fn: Callable[[Any], Any], inputs_list: Sequence[Any], n: int, device=None,
              keep: bool = False) -> Tuple[float, Optional[float], List[Any]]:
    """`n` calls of `fn(inputs_list[i % len])` back to back, then a device-wide synchronize: the unit a
    harness times from outside. Returns this process's own host ms around the batch, the CUDA-event ms on
    the current stream (None on the CPU), and the outputs when `keep` (else [])."""
    cuda = device is not None and torch.device(device).type == "cuda"
    outs: List[Any] = []
    start = end = None
    if cuda:
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    h0 = time.perf_counter()
    if start is not None:
        start.record()
    m = len(inputs_list)
    for i in range(int(n)):
        y = fn(inputs_list[i % m])
        if keep:
            outs.append(y)
    if end is not None:
        end.record()
        torch.cuda.synchronize()  # device-wide, as the harness's reply waits for
    host_ms = (time.perf_counter() - h0) * 1e3
    return host_ms, (start.elapsed_time(end) if start is not None else None), outs


@dataclass
class Batches:
    """Per-call times from batches timed outside the process that ran them."""

    timing: Timing  # per-call ms, one sample per batch: (wall − round trip) / n
    n: int  # calls per batch
    round_trip_ms: float  # median of an empty request's wall time
    replies: List[Any] = field(default_factory=list, repr=False)


def time_batches(run: Callable[[int], Any], ping: Callable[[], Any], batches: int = 5, target_ms: float = 50.0,
                 max_n: int = 100000, flush_device=None, after: Optional[Callable[[Any], None]] = None,
                 clock: Callable[[], float] = time.perf_counter) -> Batches:
    """Time `run(n)` (a request: n calls, synchronize, reply) on this process's clock. N grows until one
    batch takes `target_ms`; then `batches` batches, L2 flushed before each on `flush_device` (one L2 per
    GPU: writing it here evicts the other process's lines too), the round trip (median of `ping()`)
    subtracted. `after(reply)` runs untimed after each timed batch (e.g. fetching some of its outputs)."""
    trips = []
    for _ in range(5):
        t0 = clock()
        ping()
        trips.append((clock() - t0) * 1e3)
    rtt = quantile(sorted(trips), 0.5)
    n = 1
    while True:  # calibration (the first batches warm up too)
        t0 = clock()
        run(n)
        wall = (clock() - t0) * 1e3
        if wall >= target_ms or n >= max_n:
            break
        per = max((wall - rtt) / n, 1e-4)
        n = int(min(max_n, max(2 * n, math.ceil(1.2 * target_ms / per))))
    buf = _flush_buffer(_index(flush_device)) if flush_device is not None and \
        torch.device(flush_device).type == "cuda" else None
    samples, replies = [], []
    for _ in range(max(int(batches), 1)):
        if buf is not None:
            buf.zero_()
            torch.cuda.synchronize(buf.device)
        t0 = clock()
        reply = run(n)
        wall = (clock() - t0) * 1e3
        samples.append(max(wall - rtt, 0.0) / n)
        replies.append(reply)
        if after is not None:
            after(reply)
    return Batches(summarize(samples, samples), n, rtt, replies)


# ---------------------------------------------------------------------------------------------------------
# Peak GEMM rates, measured in the run (DESIGN.md: "Peak rates are measured in the run").
# ---------------------------------------------------------------------------------------------------------
PEAK_KINDS = ("fp32", "tf32", "bf16", "fp16")
_PEAK_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
                "fp64": torch.float64}
_PEAKS: Dict[Tuple[int, str], float] = {}


def _gemm_tflops(index: int, kind: str, matmul_mode: Optional[Callable[[], ContextManager]]) -> float:
    dtype = _PEAK_DTYPES[kind]
    free = torch.cuda.mem_get_info(index)[0]
    dim = 8192
    # Three dim² matrices plus the flush buffer must fit with room to spare; shrink otherwise.
    while dim > 1024 and 3 * dim * dim * torch.finfo(dtype).bits // 8 + flush_bytes(index) > 0.5 * free:
        dim //= 2
    dev = torch.device("cuda", index)
    gen = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(dim, dim, device=dev, dtype=dtype, generator=gen)
    b = torch.randn(dim, dim, device=dev, dtype=dtype, generator=gen)
    out = torch.empty(dim, dim, device=dev, dtype=dtype)
    with (matmul_mode() if matmul_mode is not None else contextlib.nullcontext()):
        t = time_cuda(lambda ab: torch.matmul(ab[0], ab[1], out=out), [(a, b)], warmup=3, warmup_ms=50,
                      iters=10, max_iters=10, device=index)
    a = b = out = None  # free the operands before the caller's next allocation
    return 2.0 * dim ** 3 / (t.median_ms * 1e-3) / 1e12


def peak_tflops(device, kind: str, matmul_mode: Optional[Callable[[], ContextManager]] = None) -> float:
    """Measured GEMM TFLOP/s of `kind` ('fp32', 'tf32', 'bf16', 'fp16', 'fp64'); cached per process.

    fp32 and tf32 differ only in PyTorch's float32 matmul setting, which is the op layer's business: for
    those kinds the caller passes `matmul_mode`, a context factory that sets TF32 off (fp32) or on (tf32).
    """
    if kind in ("fp32", "tf32") and matmul_mode is None:
        raise ValueError(f"peak {kind!r}: pass matmul_mode (TF32 {'on' if kind == 'tf32' else 'off'})")
    index = _index(device)
    key = (index, kind)
    if key not in _PEAKS:
        _PEAKS[key] = _gemm_tflops(index, kind, matmul_mode)
    return _PEAKS[key]


def measure_peaks(device, matmul_modes: Dict[str, Callable[[], ContextManager]],
                  kinds: Sequence[str] = PEAK_KINDS) -> Dict[str, float]:
    """{'fp32': …, 'tf32': …, 'bf16': …, 'fp16': …} TFLOP/s of torch.matmul at 8192³ (smaller if memory is
    short); `matmul_modes` gives the fp32/tf32 settings (see peak_tflops)."""
    return {kind: peak_tflops(device, kind, matmul_modes.get(kind)) for kind in kinds}
