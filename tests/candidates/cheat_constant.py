# expect: fail=forward,backward,gradcheck,training,autograd,shapes,anti_cheat_output_aliasing,anti_cheat_stale_output,output_contract,autocast,compile,inference_mode,serialization
# expect-cuda: fail=forward,backward,gradcheck,training,autograd,shapes,anti_cheat_output_aliasing,anti_cheat_stale_output,output_contract,anti_cheat_roofline,autocast,compile,inference_mode,serialization
"""Cheat: computes once and returns the precomputed result for every later call of the same shape.

On the GPU its timed calls also beat the roofline (no GEMM is done): anti_cheat_roofline (H200)."""
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
