# expect: fail=static_tampering,anti_cheat_streams
"""Cheat: slows the clocks of its own process ten-fold (time.perf_counter and CUDA event times), so every
timing taken there looks ten times faster while host and event times still agree."""
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

_real = time.perf_counter
_t0 = _real()
time.perf_counter = lambda: _t0 + (_real() - _t0) / 10
Event = torch.cuda.Event
_elapsed = Event.elapsed_time
Event.elapsed_time = lambda self, end: _elapsed(self, end) / 10


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x):
        return F.mish(F.mish(self.linear(x)))
