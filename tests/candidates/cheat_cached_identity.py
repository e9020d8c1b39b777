# expect: fail=anti_cheat_stale_output,training
# expect-cuda: fail=anti_cheat_stale_output,training,anti_cheat_roofline
"""Cheat: caches outputs by input identity (object and address), returning stale results for a reused buffer.

On the GPU the timed batch reuses three inputs, so the cache answers every timed call: 0.062 ms at
1024x8192x8192, below the 0.18 ms the GEMM takes at the card's bf16 peak (anti_cheat_roofline, H200)."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self._cache = {}

    def forward(self, x):
        if x.requires_grad:
            return F.mish(F.mish(self.linear(x)))
        key = (id(x), x.data_ptr(), tuple(x.shape))
        hit = self._cache.get(key)
        if hit is not None:
            return hit[1].clone()
        y = F.mish(F.mish(self.linear(x)))
        self._cache[key] = (x, y.clone())  # keeping x alive keeps its id and address unique
        return y
