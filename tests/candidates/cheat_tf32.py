# expect: fail=anti_cheat_backend_flags
# expect-cuda: fail=forward,backward,state_dict,training,autograd,shapes,anti_cheat_stale_output,anti_cheat_backend_flags,compile,inference_mode
"""Cheat: switches TF32 on for every matmul in the process (10x faster fp32 GEMMs, 100x the error).

On the CPU the flag changes nothing but itself; on the GPU the error shows in every accuracy row: rel_err
2.9e-4 against a bar of 3.9e-6 at 1024x8192x8192 (H200, 2026-12-02)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x):
        return F.mish(F.mish(self.linear(x)))
