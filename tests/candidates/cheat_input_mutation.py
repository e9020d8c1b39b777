# expect: fail=anti_cheat_input_mutation,training,inference_mode,serialization
"""Cheat: zeroes its input after use (KernelBench's harness then ran the reference on zeros)."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x):
        y = F.mish(F.mish(self.linear(x)))
        if not x.requires_grad:
            x.zero_()
        return y
