# expect: fail=training,autocast
"""Cheat: keeps a transposed copy of the weight, rebuilt only when the weight's storage moves or a
state_dict is loaded. Every check that loads parameters before a call sees fresh numbers; an optimizer
updating the weight in place, step after step on one module, computes with the initial weight forever."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def _mish2(z):
    return F.mish(F.mish(z))


class _LinearMishMish(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, wt):
        x2 = x.reshape(-1, x.shape[-1])
        z = torch.addmm(bias, x2, wt)
        ctx.save_for_backward(x2, z, wt)
        ctx.x_shape = x.shape
        return _mish2(z).reshape(x.shape[:-1] + (wt.shape[1],))

    @staticmethod
    def backward(ctx, gy):
        x2, z, wt = ctx.saved_tensors
        with torch.enable_grad():
            zz = z.detach().requires_grad_()
            (dz,) = torch.autograd.grad(_mish2(zz), zz, gy.reshape(z.shape))
        dx = (dz @ wt.t()).reshape(ctx.x_shape)
        return dx, dz.t() @ x2, dz.sum(0), None


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self._wt = None
        self._key = None

    def _load_from_state_dict(self, *args, **kwargs):
        self._key = None  # new parameters: rebuild the copy
        return super()._load_from_state_dict(*args, **kwargs)

    def forward(self, x):
        w = self.linear.weight
        if x.dim() == 0 or x.shape[-1] != w.shape[1] or x.dtype != w.dtype or x.device != w.device:
            return F.mish(F.mish(self.linear(x)))  # nn.Linear's own errors for inputs off the fast path
        key = (w.data_ptr(), w.dtype, w.device)
        if self._key != key:
            self._wt, self._key = w.detach().t().contiguous(), key
        return _LinearMishMish.apply(x, w, self.linear.bias, self._wt)
