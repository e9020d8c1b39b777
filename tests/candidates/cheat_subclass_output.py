# expect: fail=output_contract
# expect-warn: static_tampering
"""Cheat: returns a torch.Tensor subclass (a lazy result type would compute on first touch; this one only
wears the type), which a harness that checks isinstance alone accepts."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class Deferred(torch.Tensor):
    pass


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x):
        return F.mish(F.mish(self.linear(x))).as_subclass(Deferred)
