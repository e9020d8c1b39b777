# expect: fail=forward,backward,state_dict,gradcheck,training,autograd,shapes,anti_cheat_stale_output,anti_cheat_determinism,bad_inputs,autocast,compile,inference_mode,serialization
# expect-cuda: fail=forward,backward,state_dict,gradcheck,training,autograd,shapes,anti_cheat_stale_output,anti_cheat_determinism,bad_inputs,anti_cheat_roofline,autocast,compile,inference_mode,serialization
"""Cheat: returns uninitialised memory, hoping it still holds the reference's freed output.

On the GPU an allocation is all its timed call does: below the roofline (anti_cheat_roofline, H200)."""
import torch
import torch.nn as nn


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x):
        return torch.empty(x.shape[:-1] + (self.linear.out_features,), dtype=x.dtype, device=x.device)
