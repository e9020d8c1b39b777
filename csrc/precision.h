// How fp32 operands are multiplied (DESIGN.md, "Precision modes"). Its own header so that host code which
// is not CUDA (mishbench_cpu.cpp, checks.h) can name a mode without pulling in cuda_runtime.h via gemm.h.
#pragma once

namespace mishbench {

// fp16/bf16/fp64 always use kNative.
enum class Precision : int {
  kIeee = 0,    // plain fp32 FMA
  k3xTf32 = 1,  // big+small tf32 split, three tensor-core products, partial sums promoted to fp32
  kTf32 = 2,    // one tf32 product
  kNative = 3,  // the dtype's own arithmetic (fp32 accumulation for half types)
};

}  // namespace mishbench
