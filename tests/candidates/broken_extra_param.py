# expect: fail=forward,backward,param_count,state_dict,gradcheck,training,autograd,shapes,anti_cheat_stale_output,bad_inputs,anti_cheat_streams,output_contract,autocast,compile,inference_mode
"""Broken: an extra learnable parameter, so the state_dict no longer matches Model's."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.scale = nn.Parameter(torch.ones(out_features))

    def forward(self, x):
        return F.mish(F.mish(self.linear(x) * self.scale))
