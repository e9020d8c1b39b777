# expect: fail=forward,backward,state_dict,gradcheck,training,shapes,anti_cheat_stale_output,anti_cheat_determinism,bad_inputs
# expect-timeout: 5
"""Broken: hangs in forward."""
import torch.nn as nn


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x):
        while True:
            pass
