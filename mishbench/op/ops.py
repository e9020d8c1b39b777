"""The op `linear_mish_mish(x, weight, bias, precision)`: dispatch, composite fallback and torch.compile glue.

On CUDA tensors it calls `torch.ops.mishbench.linear_mish_mish` from the extension (csrc/), whose autograd
is registered in C++ so the hot path for launch-bound shapes never enters Python. Everywhere else (CPU
tensors, or a machine where the extension cannot be built or loaded) it runs `_CompositeLinearMishMish`: the
same forward and hand-written backward in plain PyTorch ops. `implementation(device)` says which one runs.
"""
import os
import warnings
from typing import Optional, Tuple

import torch
from packaging.version import Version

from mishbench.op.precision import PRECISIONS, constant_under_compile

TORCH_VERSION = Version(torch.__version__.split("+")[0])
HAS_TORCH_LIBRARY_FAKE = TORCH_VERSION >= Version("2.4")

# Above this PyTorch's softplus is the identity (threshold=20), and so is tanh(softplus) in fp32.
SOFTPLUS_THRESHOLD = 20.0


# ---------------------------------------------------------------------------------------------------------
# Math (DESIGN.md, "The math"), in PyTorch ops: the composite path and the tests' analytic reference.
# ---------------------------------------------------------------------------------------------------------
def _tanh_softplus(x: torch.Tensor) -> torch.Tensor:
    """tanh(log1p(eˣ)) = n(n+2) / (n(n+2) + 2) with n = eˣ; exp is clamped so nothing overflows."""
    n = torch.exp(torch.clamp(x, max=SOFTPLUS_THRESHOLD))
    t = n * (n + 2)
    return t / (t + 2)


def mish(x: torch.Tensor) -> torch.Tensor:
    """x·tanh(softplus(x)); x for x > 20; ~-0 for large negative x; NaN and -inf give NaN like F.mish."""
    return torch.where(x > SOFTPLUS_THRESHOLD, x, x * _tanh_softplus(x))


def mish_grad(x: torch.Tensor) -> torch.Tensor:
    """d mish / dx = tanh(sp) + x·sigmoid(x)·(1 − tanh²(sp)), sp = softplus(x)."""
    t = _tanh_softplus(x)
    return t + x * torch.sigmoid(x) * (1 - t * t)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half types: the epilogue and reductions run in fp32 and round once, as the kernels do.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _check_inputs(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
    """The same checks, with the same meaning, as the C++ host code: each names the argument."""
    err = _input_error(x, weight, bias)
    if err is not None:
        raise err


def _input_error(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> Optional[Exception]:
    """What is wrong with the inputs as a ValueError/TypeError naming it, or None when nothing is.

    Also asked on the composite path's every call, for launch-bound shapes too, so good inputs take one
    combined test; the checks that name the problem run only when it fails.
    """
    xs, ws = x.shape, weight.shape
    if (len(xs) >= 1 and len(ws) == 2 and xs[-1] == ws[1] and x.dtype == weight.dtype and x.is_floating_point()
            and x.device == weight.device
            and (bias is None or (bias.shape == ws[:1] and bias.dtype == x.dtype and bias.device == x.device))):
        return None
    if x.dim() == 0:
        return ValueError("x must have at least 1 dimension (..., in_features), got a 0-dim tensor")
    if not x.is_floating_point():
        return TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if weight.dim() != 2:
        return ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    if x.shape[-1] != weight.shape[1]:
        return ValueError(
            f"x has in_features={x.shape[-1]} in its last dimension but weight expects "
            f"in_features={weight.shape[1]} (x shape {tuple(x.shape)}, weight shape {tuple(weight.shape)})")
    if x.device != weight.device or (bias is not None and bias.device != x.device):
        return ValueError(f"x is on {x.device} but weight is on {weight.device}"
                          + ("" if bias is None else f" and bias on {bias.device}")
                          + ": all must be on one device")
    if x.dtype != weight.dtype or (bias is not None and bias.dtype != x.dtype):
        return TypeError(f"x has dtype {x.dtype} but weight has dtype {weight.dtype}"
                         + ("" if bias is None else f" and bias {bias.dtype}")
                         + ": all must share one dtype")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0]):
        return ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    return ValueError(f"inconsistent inputs: x {tuple(x.shape)} {x.dtype} {x.device}, weight {tuple(weight.shape)} "
                      f"{weight.dtype} {weight.device}"
                      + ("" if bias is None else f", bias {tuple(bias.shape)} {bias.dtype} {bias.device}"))


def composite_forward(x, weight, bias, save_z: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """y = mish(mish(x·Wᵀ + b)); also returns z = x·Wᵀ + b when save_z."""
    z = torch.nn.functional.linear(x, weight, bias)
    zc = z.to(_compute_dtype(z.dtype))
    y = mish(mish(zc)).to(x.dtype)
    return y, (z if save_z else None)


def composite_backward(grad_y, z, x, weight, needs: Tuple[bool, bool, bool]):
    """dz = dy·mish'(mish(z))·mish'(z); dx = dz·W; dW = dzᵀ·x; db = Σ_batch dz (flattened leading dims)."""
    cdt = _compute_dtype(z.dtype)
    zc = z.to(cdt)
    dz = grad_y.to(cdt) * mish_grad(mish(zc)) * mish_grad(zc)
    # Rows spelled out, not -1: reshape(-1, 0) is ambiguous and raised for in_features == 0 (found by the
    # CPU kernel's tests, which compare against this path).
    m = x.shape[:-1].numel()
    dz2 = dz.reshape(m, dz.shape[-1])
    x2 = x.reshape(m, x.shape[-1])
    dx = dW = db = None
    if needs[0]:
        dx = (dz.to(x.dtype) @ weight).reshape(x.shape)
    if needs[1]:
        dW = (dz2.t().to(x.dtype) @ x2).to(weight.dtype)
    if needs[2]:
        db = dz2.sum(0).to(weight.dtype)
    return dx, dW, db


class _CompositeLinearMishMish(torch.autograd.Function):
    """Plain-PyTorch forward and analytic backward; saves only the pre-activation z (plus x, W)."""

    @staticmethod
    def forward(ctx, x, weight, bias, precision):
        needs_grad = any(ctx.needs_input_grad[:3])
        y, z = composite_forward(x, weight, bias, save_z=needs_grad)
        if needs_grad:
            ctx.save_for_backward(z, x, weight)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        z, x, weight = ctx.saved_tensors
        dx, dW, db = composite_backward(grad_y, z, x, weight, tuple(ctx.needs_input_grad[:3]))
        return dx, dW, db, None


# ---------------------------------------------------------------------------------------------------------
# The extension: loaded once, on first use with a CUDA tensor; one warning if it cannot be had.
# ---------------------------------------------------------------------------------------------------------
_ext_state = {"tried": False, "ok": False, "reason": None, "op": None, "fast": None, "fakes": False,
              "route": None}

# The fast path's guards (see linear_mish_mish). torch.compiler.is_compiling is public from torch 2.3; before
# that the fast path stays off and every call takes the OpOverload, which dynamo traces.
_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
_has_torch_function = torch.overrides.has_torch_function


@constant_under_compile
def _load_extension() -> bool:
    if not _ext_state["tried"]:
        _ext_state["tried"] = True
        from mishbench.op import build  # imported late: importing torch.utils.cpp_extension costs ~0.3 s

        module = build.load()
        _ext_state["ok"] = module is not None and hasattr(torch.ops.mishbench, "linear_mish_mish")
        if not _ext_state["ok"]:
            _ext_state["reason"] = build.status().get("reason") or "the extension did not register its ops"
            warnings.warn(f"mishbench: CUDA extension unavailable ({_ext_state['reason']}); "
                          "running the composite PyTorch path (impl=composite)", RuntimeWarning, stacklevel=3)
        else:
            register_fakes()
            _ext_state["op"] = torch.ops.mishbench.linear_mish_mish.default
            _ext_state["route"] = getattr(module, "route", None)
            if _is_compiling is not None and not os.environ.get("MISHBENCH_NO_FAST_PATH"):
                _ext_state["fast"] = getattr(module, "linear_mish_mish", None)
    return _ext_state["ok"]


def extension_reason() -> Optional[str]:
    """Why the extension is not in use (None if it is, or was never needed)."""
    return _ext_state["reason"]


def implementation(device) -> str:
    """'cuda' when CUDA tensors on `device` run the fused kernels, else 'composite'."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available() and _load_extension():
        return "cuda"
    return "composite"


def route(batch_rows: int, in_features: int, out_features: int, dtype: torch.dtype, precision: str, device,
          backward: bool = False) -> str:
    """The kernel family a call runs, as the CSV's `route` column names it: 'composite' where the CUDA
    extension does not serve the call (CPU, no extension), else the extension's dispatch table's name for
    the forward ('wgmma', 'gemv', 'cublas', ...) or, with backward, the backward ('cublas+dz', ...).
    precision: already resolved (precision.resolve_precision). '' if the extension cannot name it."""
    device = torch.device(device)
    if implementation(device) != "cuda":
        return "composite"
    fn = _ext_state["route"]
    if fn is None:
        return ""
    index = device.index if device.index is not None else torch.cuda.current_device()
    return fn(int(batch_rows), int(in_features), int(out_features), str(dtype).replace("torch.", ""),
              precision, int(index), bool(backward))


def linear_mish_mish(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, precision: str) -> torch.Tensor:
    """y = mish(mish(x·Wᵀ + b)).

    x: (..., in_features), weight: (out_features, in_features), bias: (out_features,) -> (..., out_features).
    precision: one of PRECISIONS, already resolved for x's dtype and device (see precision.resolve_precision).
    """
    # Hot path for launch-bound shapes: CUDA, extension loaded, not tracing, no __torch_function__
    # (subclasses that define it, torch function modes), no autocast -> the extension's C entry point, which
    # calls the same op through the dispatcher without torch.ops' boxed call path (csrc/mishbench.cpp). The
    # inputs are checked by the C++ host code -- or, under a dispatch mode such as FakeTensorMode, by the
    # fake functions below -- and only when the C++ code refuses them does the Python check run, so a bad
    # input gets the same ValueError/TypeError as on the CPU (OOM and CUDA errors pass through unchanged).
    # A missing bias (the op's schema has none) takes the composite path.
    fast = _ext_state["fast"]
    if (fast is not None and not _is_compiling() and x.is_cuda and bias is not None
            and not _has_torch_function((x, weight, bias)) and not _autocast_enabled("cuda")):
        try:
            return fast(x, weight, bias, precision)
        except RuntimeError:
            err = _input_error(x, weight, bias)
            if err is None:
                raise
        raise err
    # The OpOverload: under torch.compile, with __torch_function__, or on torch < 2.3. Measured on the H100
    # machine at 128x10x20, host time per call: the full path below 21.6 µs, the OpOverload alone 15.2 µs.
    op = _ext_state["op"]
    if op is not None and x.is_cuda and bias is not None and not _autocast_enabled("cuda"):
        _check_inputs(x, weight, bias)
        return op(x, weight, bias, precision)
    # Under torch.autocast behave like nn.Linear does: cast x/weight/bias (floating, not float64) to the
    # autocast dtype, run the op in it with autocast off (so nothing inside is cast again), and return that
    # dtype; gradients flow back through the casts to the fp32 leaves. Half dtypes run 'native'.
    device_type = x.device.type
    if _autocast_enabled(device_type) and x.is_floating_point() and x.dtype != torch.float64:
        amp_dtype = _autocast_dtype(device_type)
        if amp_dtype != x.dtype or amp_dtype != weight.dtype:
            with torch.autocast(device_type=device_type, enabled=False):
                return linear_mish_mish(
                    x.to(amp_dtype), weight.to(amp_dtype), None if bias is None else bias.to(amp_dtype),
                    "native" if amp_dtype in (torch.float16, torch.bfloat16) else precision)
    # Checked here for both paths, so a bad input gets the same one-line error on the CPU and on CUDA
    # (~1 µs of host time; the C++ host code checks again for direct torch.ops callers).
    _check_inputs(x, weight, bias)
    if x.is_cuda and bias is not None and _load_extension():
        return _ext_state["op"](x, weight, bias, precision)
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return _CompositeLinearMishMish.apply(x, weight, bias, precision)


# Autocast: nn.Linear's behaviour under torch.autocast, through the per-device API where torch has it.
HAS_DEVICE_AUTOCAST_API = TORCH_VERSION >= Version("2.4")  # is_autocast_enabled(device_type), get_autocast_dtype


def _autocast_enabled(device_type: str) -> bool:
    """Whether torch.autocast is on for `device_type` (the per-device API on torch >= 2.4, no deprecated calls)."""
    if HAS_DEVICE_AUTOCAST_API:
        return torch.is_autocast_enabled(device_type)
    if device_type == "cuda":
        return torch.is_autocast_enabled()
    if device_type == "cpu":
        return torch.is_autocast_cpu_enabled()
    return False


def _autocast_dtype(device_type: str) -> torch.dtype:
    if HAS_DEVICE_AUTOCAST_API:
        return torch.get_autocast_dtype(device_type)
    return torch.get_autocast_gpu_dtype() if device_type == "cuda" else torch.get_autocast_cpu_dtype()


def register_fakes() -> None:
    """Shape functions for torch.compile / FakeTensor (torch >= 2.4; a no-op before, and after the first
    call). Autograd is registered in C++. Needs the extension loaded (its schemas)."""
    if not HAS_TORCH_LIBRARY_FAKE or _ext_state["fakes"]:
        return
    _ext_state["fakes"] = True
    lib = "mishbench::"

    def out_shape(x, weight):
        return tuple(x.shape[:-1]) + (weight.shape[0],)

    # The inputs are checked here too: under a dispatch mode (FakeTensorMode, torch.compile's tracing) the
    # C++ host code never sees them, and a wrong shape must not trace into a graph.
    @torch.library.register_fake(lib + "linear_mish_mish")
    def _(x, weight, bias, precision):
        _check_inputs(x, weight, bias)
        return x.new_empty(out_shape(x, weight))

    @torch.library.register_fake(lib + "linear_mish_mish_fwd")
    def _(x, weight, bias, precision, save_z):
        _check_inputs(x, weight, bias)
        y = x.new_empty(out_shape(x, weight))
        z = x.new_empty(out_shape(x, weight)) if save_z else x.new_empty((0,))
        return y, z

    @torch.library.register_fake(lib + "linear_mish_mish_bwd")
    def _(grad_y, z, x, weight, precision, output_mask):
        dx = torch.empty_like(x, memory_format=torch.contiguous_format) if output_mask[0] else x.new_empty((0,))
        dW = torch.empty_like(weight, memory_format=torch.contiguous_format) if output_mask[1] \
            else weight.new_empty((0,))
        db = weight.new_empty((weight.shape[0],)) if output_mask[2] else weight.new_empty((0,))
        return dx, dW, db
