"""The condition-aware floor at the KernelBench shape (1024x8192x8192), against eager fp32's bar, on the CPU.

DESIGN.md ("Errors and tolerances") requires that at the KernelBench shape the floor not exceed today's bar:
for fp32, 4·ε·(‖S‖/‖R‖ + 1) should lie below 2·e_eager. This computes, for one seed and KernelBench's own
inputs (torch.rand x, nn.Linear init, randn upstream gradient as verify's backward check draws it), the
float64 reference, the rounding scales, the floor for y, dx, dW, db and eager fp32's error, and prints
them with the old fixed floor (8·ε) beside. Not part of the test suite: ~8 float64 GEMMs of 1024x8192x8192
(about 1.1 TFLOP) take minutes on a 2-core CPU and ~3 GB of memory.

    PYTHONPATH=. python scripts/floor_at_kernelbench.py [--seed 0] [--json out.json]

Eager here is CPU eager (MKL sgemm); on a GPU eager's error differs somewhat (cuBLAS's reduction order), so
the GPU bars come from a device run of verify. The half-class floors are estimated from the same S and R
(the fp32 inputs): rounding x and W to bf16/fp16 changes ‖S‖/‖R‖ by about that rounding, not the floor's size.
κ = ‖S‖/‖R‖ hardly depends on K and N here (z = x·Wᵀ + b has the same spread, ≈ 1/3, for every K under
nn.Linear's U(±1/√K) init, and S_z ≈ 1/3 as well), so `--features 1024` estimates the floors in seconds.
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mishbench import rounding  # noqa: E402

NAMES = ("y", "dx", "dW", "db")


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    num = float(torch.linalg.vector_norm(out.to(torch.float64) - ref))
    den = float(torch.linalg.vector_norm(ref))
    return num / den if den else num


def fp64_reference(x, w, b, gy):
    """y and the grads in float64, as nn.Linear's forward and backward compute them (dz by autograd)."""
    z = torch.addmm(b, x, w.t())
    zz = z.requires_grad_(True)
    with torch.enable_grad():
        y = F.mish(F.mish(zz))
        (dz,) = torch.autograd.grad(y, zz, gy)
    return {"y": y.detach(), "dx": dz @ w, "dW": dz.t() @ x, "db": dz.sum(0)}


def eager_fp32(x, w, b, gy):
    xx, ww, bb = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
    y = F.mish(F.mish(F.linear(xx, ww, bb)))
    y.backward(gy)
    return {"y": y.detach(), "dx": xx.grad, "dW": ww.grad, "db": bb.grad}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--features", type=int, default=8192, help="in_features = out_features")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    m, k = args.batch, args.features
    t0 = time.time()
    torch.manual_seed(args.seed)
    lin = torch.nn.Linear(k, k)  # Model's own init, in fp32
    x = torch.rand(m, k)  # KernelBench's get_inputs
    gy = torch.randn(m, k, generator=torch.Generator().manual_seed(args.seed + 1), dtype=torch.float64).float()
    w, b = lin.weight.detach(), lin.bias.detach()
    del lin
    eager = eager_fp32(x, w, b, gy)
    print(f"eager fp32 done ({time.time() - t0:.0f} s)", flush=True)
    x64, w64, b64, gy64 = (t.to(torch.float64) for t in (x, w, b, gy))
    ref = fp64_reference(x64, w64, b64, gy64)
    print(f"float64 reference done ({time.time() - t0:.0f} s)", flush=True)
    scales = rounding.rounding_scales(x64, w64, b64, gy64)
    # Half classes also count z stored in the half dtype (rounding.rounding_scales, storage_dtype).
    half = {dt: rounding.rounding_scales(x64, w64, b64, gy64, storage_dtype=dt)
            for dt in (torch.bfloat16, torch.float16)}
    print(f"rounding scales done ({time.time() - t0:.0f} s)", flush=True)
    eps32 = torch.finfo(torch.float32).eps
    rows = {}
    for name in NAMES:
        e = rel_err(eager[name], ref[name])
        kap = rounding.kappa(scales[name], ref[name])
        row = {"e_eager": e, "2e_eager": 2 * e, "kappa": kap,
               "floor_fp32": rounding.floor(scales[name], ref[name], torch.float32),
               "old_floor_fp32": 8 * eps32,
               "floor_bf16_est": rounding.floor(half[torch.bfloat16][name], ref[name], torch.bfloat16),
               "floor_fp16_est": rounding.floor(half[torch.float16][name], ref[name], torch.float16)}
        row["old_bar_fp32"] = max(2 * e, row["old_floor_fp32"])
        row["new_bar_fp32"] = max(2 * e, row["floor_fp32"])
        rows[name] = row
    print(f"\n{m}x{k}x{k} fp32, seed {args.seed}, CPU eager; {time.time() - t0:.0f} s in all")
    print(f"{'':>3} {'e_eager':>9} {'2e_eager':>9} {'kappa':>7} {'floor':>9} {'old 8eps':>9} {'old bar':>9} "
          f"{'new bar':>9} {'bf16 fl.':>9} {'fp16 fl.':>9}")
    for name, r in rows.items():
        print(f"{name:>3} {r['e_eager']:9.3g} {r['2e_eager']:9.3g} {r['kappa']:7.3g} {r['floor_fp32']:9.3g} "
              f"{r['old_floor_fp32']:9.3g} {r['old_bar_fp32']:9.3g} {r['new_bar_fp32']:9.3g} "
              f"{r['floor_bf16_est']:9.3g} {r['floor_fp16_est']:9.3g}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"shape": [m, k, k], "seed": args.seed, "device": "cpu", "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
