"""mishbench: a fused Linear -> Mish -> Mish CUDA op for PyTorch, and the tool that verifies and times it."""

__version__ = "0.1.0"
