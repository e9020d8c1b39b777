# expect: fail=state_dict
"""Correct, but its parameters are `weight` and `bias` at the top level, not Model's `linear.weight` and
`linear.bias`: the numbers are judged with the parameters paired by shape and creation order, and only the
state_dict row reports the names."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        # nn.Linear's own initialisation, in its order: the same seed gives Model's numbers.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(in_features) if in_features > 0 else 0
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        return F.mish(F.mish(F.linear(x, self.weight, self.bias)))
