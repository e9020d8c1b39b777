"""Untrusted candidates: source loading, the wire protocol, the worker process (`python -m
mishbench.candidate.worker`), the remote runner, static and anti-cheat checks. Floor 2.

Empty of imports: the worker imports this package, and it may import only torch, its protocol and the clock."""
