"""KernelBench level 2, problem 29 (`29_Matmul_Mish_Mish`): the reference, with its exact semantics.

`get_inputs()` / `get_init_inputs()` are the benchmark's own and must stay as they are.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class Model(nn.Module):
    """Linear -> Mish -> Mish.

    x: (batch, in_features) -> (batch, out_features)
    """

    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x):
        x = self.linear(x)
        x = F.mish(x)
        x = F.mish(x)
        return x


batch_size = 1024
in_features = 8192
out_features = 8192


def get_inputs():
    return [torch.rand(batch_size, in_features)]


def get_init_inputs():
    return [in_features, out_features]
