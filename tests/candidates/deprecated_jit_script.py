# expect: fail=
# expect-deprecated: fail=static_deprecated
# deprecated-api: torch.jit.script
"""Correct, but its activation is a torch.jit.script function: torch.jit.script raises a FutureWarning on
newer torch (deprecated in favour of torch.compile), so static_deprecated fails there and passes on torch
versions that do not warn (2.0.1)."""
import torch
import torch.nn as nn


@torch.jit.script
def mish2(z: torch.Tensor) -> torch.Tensor:
    m = z * torch.tanh(torch.nn.functional.softplus(z))
    return m * torch.tanh(torch.nn.functional.softplus(m))


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x):
        return mish2(self.linear(x))
