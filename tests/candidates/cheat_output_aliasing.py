# expect: fail=anti_cheat_output_aliasing,output_contract,anti_cheat_streams,inference_mode
"""Cheat: inference calls return a view of one persistent buffer, so every call overwrites the last output."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.out = None

    def forward(self, x):
        y = F.mish(F.mish(self.linear(x)))
        if torch.is_grad_enabled():
            return y
        if self.out is None or self.out.numel() < y.numel() or self.out.dtype != y.dtype or self.out.device != y.device:
            self.out = torch.empty(y.numel(), dtype=y.dtype, device=y.device)
        view = self.out[: y.numel()].view(y.shape)
        view.copy_(y)
        return view
