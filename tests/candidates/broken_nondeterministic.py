# expect: fail=gradcheck,serialization
# expect-warn: anti_cheat_determinism
"""Broken, not wrong: the output carries a little noise, so two calls on one input differ in their last bits
while each still meets the accuracy bar. anti_cheat_determinism says warn (a fail needs a difference beyond
the bar); float64 gradcheck fails, its finite differences (eps 1e-6) see the noise. The noise is relative
(about one fp32 ulp), so an output near zero -- a 1x1x1 shape can draw one -- meets the bar too."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x):
        y = F.mish(F.mish(self.linear(x)))
        return y + 1e-7 * y.abs().nan_to_num(0.0, 0.0, 0.0) * torch.randn_like(y)  # NaN and inf stay as they are
