"""`ModelNew`: a drop-in for the KernelBench reference `Model` that runs the fused op."""
from typing import Optional

import torch
import torch.nn as nn

from mishbench.op import ops
from mishbench.op.precision import check_precision, resolve_precision


class ModelNew(nn.Module):
    """Linear -> Mish -> Mish as one fused op.

    Same constructor, parameter names (`linear.weight`, `linear.bias`), count and initialisation as the
    reference `Model`: the parameters live in an `nn.Linear`, so they draw the RNG exactly as it does and
    state dicts load both ways. x: (..., in_features) -> (..., out_features).

    precision: None follows PyTorch's float32 matmul setting (strict -> '3xtf32' on tensor-core GPUs, TF32
    allowed -> 'tf32'); or 'ieee' | '3xtf32' | 'tf32' for fp32 inputs. Other dtypes run 'native'.
    """

    def __init__(self, in_features, out_features, precision: Optional[str] = None):
        super().__init__()
        check_precision(precision)
        self.linear = nn.Linear(in_features, out_features)
        self.precision = precision

    def resolved_precision(self, x: torch.Tensor) -> str:
        """The mode a forward on `x` runs in."""
        return resolve_precision(self.precision, x.dtype, x.device)

    def implementation(self, device=None) -> str:
        """'cuda' (fused kernels) or 'composite' (plain PyTorch) for inputs on `device`."""
        return ops.implementation(device if device is not None else self.linear.weight.device)

    def forward(self, x):
        # Launch-bound shapes pay this method's host time in full, so: the parameters are read
        # from the dicts nn.Module keeps them in (self.linear.weight and .bias go through Module.__getattr__
        # twice each: 4.0 µs against 0.25 µs on the 2-core CPU machine); a linear whose weight or bias is
        # not a plain entry there (torch.nn.utils.parametrize; a bias set to None, which then runs the
        # composite path) takes the attributes. resolve_precision inline rather than through
        # resolved_precision(): one call less.
        params = self._modules["linear"]._parameters
        weight, bias = params.get("weight"), params.get("bias")
        if weight is None or bias is None:
            weight, bias = self.linear.weight, self.linear.bias
        return ops.linear_mish_mish(x, weight, bias, resolve_precision(self.precision, x.dtype, x.device))

    def extra_repr(self):
        return f"precision={self.precision!r}"
