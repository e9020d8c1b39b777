# expect: fail=shapes
# expect-cuda: fail=forward,backward,shapes,anti_cheat_stale_output,inference_mode
"""Broken: a separate path for KernelBench-sized batches (B >= 1024 rows), in chunks of 512 rows, that adds
the bias to the first chunk only. Only the 1024-row shape of the CPU shape list takes it; on the GPU the
test's size is KernelBench's own (1024 rows), so every check at that size sees it (H200, 2026-12-02)."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x):
        if x.dim() < 2 or x.shape[:-1].numel() < 1024:
            return F.mish(F.mish(self.linear(x)))
        rows = x.reshape(-1, x.shape[-1])
        w, b = self.linear.weight, self.linear.bias
        chunks = [F.linear(c, w, b if i == 0 else None) for i, c in enumerate(rows.split(512))]
        z = torch.cat(chunks).reshape(x.shape[:-1] + (w.shape[0],))
        return F.mish(F.mish(z))
