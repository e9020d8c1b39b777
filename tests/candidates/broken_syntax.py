# expect: fail=build
import torch
import torch.nn as nn


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features)
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
