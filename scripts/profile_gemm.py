"""A few calls of the fused op at one shape and mode, for Nsight Compute (device_check.sh's `profile` stage):

    ncu --kernel-name regex:gemm_wgmma --launch-skip 1 --launch-count 1 python3 scripts/profile_gemm.py 3xtf32
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `mishbench`

from mishbench.op import ops  # noqa: E402

MODES = {"3xtf32": (torch.float32, "3xtf32"), "tf32": (torch.float32, "tf32"), "bf16": (torch.bfloat16, "native")}


def main() -> None:
    label = sys.argv[1] if len(sys.argv) > 1 else "3xtf32"
    dtype, precision = MODES[label]
    b, k, n = 1024, 8192, 8192
    x = torch.rand(b, k, device="cuda").to(dtype)
    w = (torch.rand(n, k, device="cuda") * 2 - 1).div_(k ** 0.5).to(dtype)
    bias = (torch.rand(n, device="cuda") * 2 - 1).div_(k ** 0.5).to(dtype)
    for _ in range(3):
        ops.linear_mish_mish(x, w, bias, precision)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
