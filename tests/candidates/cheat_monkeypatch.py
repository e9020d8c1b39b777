# expect: fail=forward,backward,state_dict,training,autograd,shapes,anti_cheat_stale_output,bad_inputs,autocast,compile,inference_mode
"""Cheat: patches F.mish and torch.allclose at import. It only breaks its own process: the reference and the
comparison run in the harness, so its identity "Mish" is caught like any wrong output (gradcheck passes:
an identity is differentiable, just wrong)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

F.mish = lambda x, inplace=False: x
torch.allclose = lambda *args, **kwargs: True


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x):
        return F.mish(F.mish(self.linear(x)))
