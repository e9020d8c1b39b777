# expect: fail=forward,backward,gradcheck,training,autograd,shapes,anti_cheat_output_aliasing,anti_cheat_stale_output,output_contract
"""Cheat: computes once and returns the precomputed result for every later call of the same shape."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self._answers = {}

    def forward(self, x):
        key = tuple(x.shape)
        if key not in self._answers:
            self._answers[key] = F.mish(F.mish(self.linear(x))).detach()
        return self._answers[key]
