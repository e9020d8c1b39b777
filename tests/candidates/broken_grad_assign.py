# expect: fail=autograd,autocast
"""Broken: the backward writes the parameter gradients into .grad itself (assigning, not accumulating)
and hands autograd None for them. One backward after zero_grad looks right, and so does training; two
backward calls keep only the second, and torch.autograd.grad sees no weight gradient at all."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def _mish2(z):
    return F.mish(F.mish(z))


class _LinearMishMish(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, linear):
        z = F.linear(x, weight, bias)
        ctx.save_for_backward(x, z, weight)
        ctx.linear = linear
        return _mish2(z)

    @staticmethod
    def backward(ctx, gy):
        x, z, weight = ctx.saved_tensors
        with torch.enable_grad():
            zz = z.detach().requires_grad_()
            (dz,) = torch.autograd.grad(_mish2(zz), zz, gy)
        x2, dz2 = x.reshape(-1, x.shape[-1]), dz.reshape(-1, dz.shape[-1])
        ctx.linear.weight.grad = dz2.t() @ x2
        ctx.linear.bias.grad = dz2.sum(0)
        return dz @ weight, None, None, None


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x):
        return _LinearMishMish.apply(x, self.linear.weight, self.linear.bias, self.linear)
