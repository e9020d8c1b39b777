"""The rank entry point (`python -m mishbench.distributed.worker`) that verify and bench share. Floor 2."""
