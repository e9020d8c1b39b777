"""Which bad input crashes the CUDA op? Each case runs in its own process (a segfault kills only it)."""
import subprocess
import sys

CASES = {
    "wrong_K": "x = torch.randn(4, 7, device='cuda')",
    "zero_dim": "x = torch.tensor(1.0, device='cuda')",
    "int_dtype": "x = torch.ones(4, 6, device='cuda', dtype=torch.int64)",
    "f64_vs_f32": "x = torch.randn(4, 6, device='cuda', dtype=torch.float64)",
    "good": "x = torch.randn(4, 6, device='cuda')",
}
PROG = """
import torch, mishbench.op.ops as ops
assert ops.implementation('cuda') == 'cuda'
w = torch.randn(3, 6, device='cuda', requires_grad={rg}); b = torch.randn(3, device='cuda', requires_grad={rg})
{setup}
ctx = torch.no_grad() if {ng} else torch.enable_grad()
try:
    with ctx:
        torch.ops.mishbench.linear_mish_mish(x, w, b, {prec!r})
    print('no error')
except Exception as e:
    print('raised', type(e).__name__, str(e).splitlines()[0][:100])
"""
for name, setup in CASES.items():
    variants = [(False, True, "ieee"), (True, True, "ieee")] + ([(False, True, "fast")] if name == "good" else [])
    for rg, ng, prec in variants:
        code = PROG.format(rg=rg, ng=ng, setup=setup, prec=prec)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        last = (out.stdout.strip().splitlines() or [out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ""])[-1]
        print(f"{name:10s} requires_grad={rg!s:5s} no_grad={ng!s:5s} prec={prec:5s} rc={out.returncode:4d} {last[:110]}")
