# expect: fail=forward,backward,autograd,shapes
"""Broken: tanh(softplus(z)) through n = e^-z, (1 + 2n) / (1 + 2n + 2n²) -- exact for z > 0, but for fp32
z below -44 the n² overflows (the gradient turns NaN) and below -88 n itself does (NaN out). Ordinary
inputs keep |z| within ±25; the extreme rows mixed into the batches reach -100."""
import torch
import torch.nn as nn


def mish(z):
    n = torch.exp(-z)
    return z * (1 + 2 * n) / (1 + 2 * n + 2 * n * n)


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x):
        return mish(mish(self.linear(x)))
