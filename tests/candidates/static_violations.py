# expect: fail=static_inputs_unchanged,static_imports,static_deprecated
"""Computes correctly but breaks the static rules: numpy, deprecated custom_fwd, changed get_inputs."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class _Fn(torch.autograd.Function):
    @staticmethod
    @torch.cuda.amp.custom_fwd
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w, b)
        with torch.enable_grad():
            pass
        return F.linear(x, w, b)

    @staticmethod
    @torch.cuda.amp.custom_bwd
    def backward(ctx, g):
        x, w, b = ctx.saved_tensors
        return g @ w, g.t() @ x, g.sum(0)


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x):
        return F.mish(F.mish(self.linear(x)))


batch_size = 128
in_features = 8192
out_features = 8192


def get_inputs():
    import numpy as np
    return [torch.rand(batch_size, in_features) * float(np.float32(1.0))]


def get_init_inputs():
    return [in_features, out_features]
