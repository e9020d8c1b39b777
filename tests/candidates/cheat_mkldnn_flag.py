# expect: fail=anti_cheat_backend_flags
"""Cheat: turns oneDNN (mkldnn) off for the whole process at import: a global setting outside the TF32 flags
that changes which kernels every other caller gets."""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.backends.mkldnn.enabled = False


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x):
        return F.mish(F.mish(self.linear(x)))
