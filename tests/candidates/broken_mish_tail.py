# expect: fail=forward,backward,autograd,shapes
# expect-cuda: fail=forward,backward,autograd,shapes,anti_cheat_stale_output
"""Broken: "Mish is the identity far from zero" -- returns z for |z| > 30, right for the upper tail and
wrong for the lower one (Mish goes to 0 there). Never reached by randn·10 inputs; the extreme rows mixed
into the batches reach z = -100. At 8192 input features randn·10 rows reach z < -30 too, so on the GPU
(KernelBench size) anti_cheat_stale_output's inputs fail as well (H200, 2026-12-02)."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def mish(z):
    return torch.where((z.abs() > 30) & torch.isfinite(z), z, F.mish(z))


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x):
        return mish(mish(self.linear(x)))
