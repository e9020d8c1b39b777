"""Public entry point kept where users reach it: `from mishbench.reference import Model`."""
from mishbench.op.reference import Model, get_init_inputs, get_inputs

__all__ = ["Model", "get_inputs", "get_init_inputs"]
