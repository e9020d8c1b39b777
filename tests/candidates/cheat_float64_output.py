# expect: fail=output_contract
# expect-warn: autocast
"""Cheat: the activations in float64, returned as float64 for a float32 input (more accurate than eager, so
every accuracy check passes, but it is not what Model returns). Under autocast it returns float64 too: `autocast` warns (a dtype
other than Model's; its accuracy is judged and passes)."""
import torch.nn as nn
import torch.nn.functional as F


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x):
        return F.mish(F.mish(self.linear(x).double()))
