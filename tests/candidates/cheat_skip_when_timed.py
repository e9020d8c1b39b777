# expect: fail=anti_cheat_streams
# expect-cuda: fail=anti_cheat_streams,gradcheck
"""Cheat: notices a timing loop (calls without grad cycling through the same few input buffers, as a
benchmark rotating its inputs does) and then skips the work, returning zeros: fast when timed, right when
checked one call at a time.

On the GPU its detector also fires inside gradcheck: the finite differences run without grad and CUDA's
caching allocator hands the same few addresses back, so zeros come out there too (H200, 2026-12-02)."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.recent = []
        self.streak = 0

    def forward(self, x):
        ptr = x.data_ptr()
        cycling = (not torch.is_grad_enabled() and len(self.recent) >= 2 and ptr != self.recent[-1]
                   and ptr in self.recent[-3:])
        self.streak = self.streak + 1 if cycling else 0
        self.recent = (self.recent + [ptr])[-4:]
        if self.streak > 8:
            return torch.zeros(x.shape[:-1] + (self.linear.out_features,), dtype=x.dtype, device=x.device)
        return F.mish(F.mish(self.linear(x)))
