# expect: fail=output_contract,anti_cheat_streams,inference_mode
"""Cheat: inference calls write into one of two persistent buffers in turn, so each output is overwritten
two calls later (a check against "the previous call's output" alone misses it)."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.ring = []
        self.turn = 0

    def forward(self, x):
        y = F.mish(F.mish(self.linear(x)))
        if torch.is_grad_enabled():
            return y
        if len(self.ring) < 2 or self.ring[0].shape != y.shape or self.ring[0].dtype != y.dtype:
            self.ring = [torch.empty_like(y), torch.empty_like(y)]
        out = self.ring[self.turn % 2]
        self.turn += 1
        out.copy_(y)
        return out
