"""Public entry point kept where users reach it: `from mishbench.model import ModelNew`."""
from mishbench.op.model import ModelNew

__all__ = ["ModelNew"]
