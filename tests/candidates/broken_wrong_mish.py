# expect: fail=forward,backward,state_dict,training,autograd,shapes,anti_cheat_stale_output,bad_inputs,autocast,compile,inference_mode
"""Broken: the wrong Mish from the answer this project started from, x * tanh(x / (e^x + 1))."""
import torch
import torch.nn as nn


def bad_mish(x):
    return x * torch.tanh(x / (torch.exp(x) + 1))


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x):
        return bad_mish(bad_mish(self.linear(x)))
