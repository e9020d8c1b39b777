# expect: fail=
# expect-warn: static_fallback
# expect-torch-2.0: fail=+compile
"""Cheat: calls a "fast kernel" inside try/except and silently falls back to the reference math.

torch 2.0.1's dynamo raises InternalTorchDynamoError compiling the try/except (with graph breaks allowed
too), so `compile` is an error row there; torch 2.14.1 compiles it (measured 2026-12-02)."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x):
        try:
            return torch.ops.fastmish.linear_mish_mish(x, self.linear.weight, self.linear.bias)
        except Exception:
            return F.mish(F.mish(F.linear(x, self.linear.weight, self.linear.bias)))
