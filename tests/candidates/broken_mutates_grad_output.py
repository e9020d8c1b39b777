# expect: fail=autograd,autocast
"""Broken: the backward turns its upstream gradient into dz in place (grad_output.mul_(...)) to save a
buffer. The caller's tensor comes back changed, and under y.sum().backward() -- an expanded gradient --
the in-place write raises."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def _mish2(z):
    return F.mish(F.mish(z))


class _LinearMishMish(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        z = F.linear(x, weight, bias)
        ctx.save_for_backward(x, z, weight)
        return _mish2(z)

    @staticmethod
    def backward(ctx, gy):
        x, z, weight = ctx.saved_tensors
        with torch.enable_grad():
            zz = z.detach().requires_grad_()
            (h,) = torch.autograd.grad(_mish2(zz), zz, torch.ones_like(zz))  # elementwise: dy/dz
        dz = gy.mul_(h)
        x2, dz2 = x.reshape(-1, x.shape[-1]), dz.reshape(-1, dz.shape[-1])
        return dz @ weight, dz2.t() @ x2, dz2.sum(0)


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x):
        return _LinearMishMish.apply(x, self.linear.weight, self.linear.bias)
