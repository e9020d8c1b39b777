# expect: fail=
# expect-cuda: fail=anti_cheat_streams
"""Cheat (GPU): does the work on a side stream the timing events on the current stream never see."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self._stream = None

    def forward(self, x):
        if not x.is_cuda or torch.is_grad_enabled():
            return F.mish(F.mish(self.linear(x)))
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        self._stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._stream):
            y = F.mish(F.mish(self.linear(x)))
        return y  # no wait_stream back: the current stream's events finish before the work does
