# expect: fail=forward,backward,param_count,init,state_dict,gradcheck,training,autograd,shapes,anti_cheat_stale_output,bad_inputs,anti_cheat_streams,output_contract,autocast,compile,inference_mode
# expect-cuda: fail=forward,backward,init,state_dict,gradcheck,training,autograd,shapes,anti_cheat_stale_output,bad_inputs,autocast,compile,inference_mode
"""Broken: weight stored [in_features][out_features], so Model's state_dict does not load.

On the GPU the test runs the KernelBench size, 8192 x 8192, where the transposed weight has the reference's
shape: param_count passes there (expect-cuda) and the values give the layout away. The calls run there, so
anti_cheat_streams (timed outputs as right as untimed ones) and output_contract (type, shape, storage) pass:
the wrong values are the accuracy rows' finding (H200, 2026-12-02)."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Linear(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        bound = 1 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = Linear(in_features, out_features)

    def forward(self, x):
        return F.mish(F.mish(x @ self.linear.weight + self.linear.bias))
