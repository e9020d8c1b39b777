"""The op: the reference Model, ModelNew, its ops (registration, autograd, composite path), precision
modes and the build of csrc/. Floor 1: uses floor 0 only. Empty of imports on purpose (see architecture.md)."""
