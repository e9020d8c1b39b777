"""`mishbench bench`: the local runner on a CUDA GPU, or the DDP runner with --distributed N."""
import torch

from mishbench.bench.ddp import run_distributed_bench
from mishbench.bench.local import run_guarded
from mishbench.bench.plan import BenchOptions
from mishbench.bench.providers import cuda_free_bytes
from mishbench.clock import peak_tflops, time_cuda
from mishbench.op.precision import eager_matmul_mode


def run_bench(opts: BenchOptions, console) -> int:
    """Exit code 0 ok, 1 failed (or no GPU), 2 usage, 130 interrupted."""
    if opts.distributed:
        return run_distributed_bench(opts, console)
    if not torch.cuda.is_available():
        console.print("bench needs a CUDA GPU: none is visible here", highlight=False)
        return 1
    device = torch.device("cuda", torch.cuda.current_device())
    return run_guarded(opts, console, device, timer=time_cuda, peak_fn=lambda kind: peak(device, kind),
                       free_memory=lambda: cuda_free_bytes(device))


def peak(device: torch.device, kind: str) -> float:
    """The measured GEMM peak of `kind`, TF32 off for fp32 and on for tf32 (PyTorch's matmul setting)."""
    return peak_tflops(device, kind, lambda: eager_matmul_mode(kind == "tf32"))
