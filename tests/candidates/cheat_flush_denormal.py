# expect: fail=anti_cheat_backend_flags
"""Cheat: sets flush-to-zero for the process when constructed (denormals become 0: faster on some CPUs, and
every other caller's numbers change); there is no getter, so only a probe with a denormal sees it."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        torch.set_flush_denormal(True)
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x):
        return F.mish(F.mish(self.linear(x)))
