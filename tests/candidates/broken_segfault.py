# expect: fail=forward,backward,state_dict,gradcheck,training,shapes,anti_cheat_stale_output,anti_cheat_determinism,bad_inputs
"""Broken: dereferences NULL in forward (a segfault, as a bad kernel pointer would)."""
import ctypes

import torch.nn as nn


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x):
        print("about to read address 0")
        ctypes.string_at(0)
        return x
