# expect: fail=build
"""Broken: exits the process while being imported."""
import os

import torch.nn as nn

print("candidate: exiting with code 3")
os._exit(3)


class ModelNew(nn.Module):
    pass
