# expect: fail=forward,backward,state_dict,gradcheck,training,autograd,shapes,anti_cheat_stale_output,anti_cheat_determinism,bad_inputs
"""Cheat: returns uninitialised memory, hoping it still holds the reference's freed output."""
import torch
import torch.nn as nn


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x):
        return torch.empty(x.shape[:-1] + (self.linear.out_features,), dtype=x.dtype, device=x.device)
