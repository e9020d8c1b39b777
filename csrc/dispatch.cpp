// The dispatch table (dispatch.h). Every threshold below for the gemv / splitk / gemv+dz routes is a
// prediction from bytes and FLOPs on an H200 (132 SMs, 4.0 TB/s measured copy rate, ~67 TFLOP/s fp32 FMA
// peak) and must be re-set from the crossovers measured by scripts/route_probe.py and the sweep; the
// existing routes' thresholds were measured (their comments say where).
#include "dispatch.h"

#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#include <cstdlib>
#include <cstring>

#include "checks.h"
#include "device.h"
#include "elementwise.h"
#include "gemm.h"
#include "msg.h"
#include "skinny.h"

namespace mishbench {
namespace {

// ieee at large shapes runs cuBLAS (at::addmm / at::mm, what eager runs) with our fused epilogue and dz
// prologue. Measured on an H100 at 1024x8192x8192: the SIMT kernel took 3.81 ms against eager's 2.75 ms,
// and its long fp32 FMA chains erred 2.2x eager's error at 64x4096x4096 (1.4e-6 vs 6.3e-7) on all-positive
// inputs. Below this much work (128x10x20, the odd test shapes) the single SIMT launch wins: host overhead
// dominates there.
constexpr int64_t kCublasMinWork = int64_t(1) << 24;  // M*N*K

// ---- gemv (forward) and gemv+dz (backward): M <= skinny::kGemvMaxM = 16, every dtype and mode --------------
// Prediction: at K = N = 8192 reading W once takes 67 µs in fp32 (268 MB / 4.0 TB/s), 34 µs in fp16/bf16,
// 134 µs in fp64. The FMA work 2·M·K·N is 2.1 GFLOP at M = 16: ~32 µs at the fp32 FMA peak, so fp32 stays
// memory-bound up to M ≈ 30, fp16/bf16 reach the crossover at M ≈ 16 (34 µs of W against ~32 µs of FMA),
// fp64 (~34 TFLOP/s) stays below W's time. Hence 16 for every dtype. Against eager (H200, 3xtf32 class):
// 1x8192x8192 gemv ~70 µs (67 + launch) vs 122 µs (1.7x); 1x4096x4096 ~20 µs vs 54 µs. The tile routes
// there: 359 and 195 µs (N/128 blocks, each walking all of K).
// Backward: dx reads W once, dW writes W's size once: ~2 x 67 µs at 8192² fp32, against the tile route's
// Wᵀ copy (2 x 67 µs more) plus two skinny tile GEMMs. The one-block small backward keeps the problems it
// fits (launch-bound: one launch against three to five here).
bool gemv_fits(const Problem& p) { return p.M >= 1 && p.M <= skinny::kGemvMaxM && p.K >= 1 && p.N >= 1; }

// ---- splitk (forward): fp32 in ieee / 3xtf32, and fp64; 17 <= M <= 64; at least two K-slices ------------
// Prediction at K = N = 8192: FMA work 2·M·K·N = 4.3 GFLOP at M = 32, at the ~36 TFLOP/s the SIMT tiles
// reached on the H100 (137 GFLOP in 3.81 ms): ~120 µs, + ~3 µs for the reduction (5 slices of 32 x 8192
// fp32) -- against eager fp32 318 µs (2.6x) and today's 3xtf32 tiles ~0.40 ms (0.80x eager: 64 tiles of
// 128 x 128 on 132 SMs, each walking K, whatever the number of real rows). At M = 64: ~245 µs, still below
// the tiles' ~0.40 ms; at M = 128: ~490 µs, above them: hence 64. tf32 / fp16 / bf16 stay on the tensor-core
// tiles: one tf32 product of a 128 x 128 x 8192 tile at 397/132 TFLOP/s per SM is ~90 µs, below FMA's 120.
// Below 2^21 multiply-adds (the tensor-core kMinMacs) the single SIMT launch wins: a second launch costs
// more (~2 µs) than the whole product (< 0.1 µs of FMA).
constexpr int64_t kSplitKMaxM = 64;
constexpr double kSplitKMinMacs = 2097152.0;  // 2^21

bool splitk_fits(const Problem& p, int sm_count) {
  const bool fp32_mode = p.dtype == c10::ScalarType::Float && (p.prec == Precision::kIeee || p.prec == Precision::k3xTf32);
  if (!fp32_mode && p.dtype != c10::ScalarType::Double) return false;
  if (p.M <= skinny::kGemvMaxM || p.M > kSplitKMaxM) return false;
  if (static_cast<double>(p.M) * static_cast<double>(p.N) * static_cast<double>(p.K) < kSplitKMinMacs) return false;
  return skinny::splitk_plan(p.M, p.N, p.K, sm_count).k.splits >= 2;
}

// The family run_gemm picks for a TN GEMM of these sizes (tensor cores where gemm_tc takes it, else SIMT).
const char* gemm_family(int64_t M, int64_t N, int64_t K, c10::ScalarType dtype, Precision prec, int dev) {
  const bool tc_candidate = prec == Precision::k3xTf32 || prec == Precision::kTf32 ||
                            dtype == c10::ScalarType::Half || dtype == c10::ScalarType::BFloat16;
  if (!tc_candidate) return "simt";
  switch (tc_family(M, N, K, dtype, prec, dev)) {
    case TcFamily::kWgmma:
      return "wgmma";
    case TcFamily::kMma:
      return "mma";
    case TcFamily::kNone:
      break;
  }
  return "simt";
}

c10::ScalarType parse_dtype_name(const std::string& s) {
  if (s == "fp32" || s == "float32" || s == "float") return c10::ScalarType::Float;
  if (s == "fp16" || s == "float16" || s == "half") return c10::ScalarType::Half;
  if (s == "bf16" || s == "bfloat16") return c10::ScalarType::BFloat16;
  if (s == "fp64" || s == "float64" || s == "double") return c10::ScalarType::Double;
  TORCH_CHECK_VALUE(false, "mishbench.route: unknown dtype '", s,
                    "'; expected fp32, fp16, bf16, fp64 (or float32, float16, bfloat16, float64)");
}

}  // namespace

bool next_routes() {
  static const bool on = [] {
    const char* v = std::getenv("MISHBENCH_ROUTES");
    return v != nullptr && std::strcmp(v, "next") == 0;
  }();
  return on;
}

bool use_cublas(Precision prec, c10::ScalarType dtype, int64_t M, int64_t N, int64_t K) {
  return prec == Precision::kIeee && dtype == c10::ScalarType::Float &&
         static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K) >= static_cast<double>(kCublasMinWork);
}

FwdRoute forward_route(const Problem& p) {
  if (p.M == 0 || p.N == 0) return FwdRoute::kEmpty;
  if (p.K == 0) return FwdRoute::kBias;
  if (next_routes()) {
    if (gemv_fits(p)) return FwdRoute::kGemv;
    if (splitk_fits(p, device_caps(p.device).sm_count)) return FwdRoute::kSplitK;
  }
  if (use_cublas(p.prec, p.dtype, p.M, p.N, p.K)) return FwdRoute::kCublas;
  return FwdRoute::kTiles;
}

BwdRoute backward_route(const Problem& p) {
  if (p.M == 0 || p.N == 0) return BwdRoute::kEmpty;
  if (small_bwd_fits(p.M, p.N, p.K)) return BwdRoute::kSmall;
  if (p.K == 0) return BwdRoute::kDzOnly;
  if (next_routes() && gemv_fits(p)) return BwdRoute::kGemv;
  if (use_cublas(p.prec, p.dtype, p.M, p.N, p.K)) return BwdRoute::kCublas;
  return BwdRoute::kTiles;
}

std::string forward_route_name(const Problem& p) {
  switch (forward_route(p)) {
    case FwdRoute::kEmpty:
      return "empty";
    case FwdRoute::kBias:
      return "bias";
    case FwdRoute::kCublas:
      return "cublas";
    case FwdRoute::kGemv:
      return "gemv";
    case FwdRoute::kSplitK:
      return "splitk";
    case FwdRoute::kTiles:
      break;
  }
  return gemm_family(p.M, p.N, p.K, p.dtype, p.prec, p.device);
}

std::string backward_route_name(const Problem& p) {
  switch (backward_route(p)) {
    case BwdRoute::kEmpty:
      return "empty";
    case BwdRoute::kSmall:
      return "small";
    case BwdRoute::kDzOnly:
      return "dz";
    case BwdRoute::kCublas:
      return "cublas+dz";
    case BwdRoute::kGemv:
      return "gemv+dz";
    case BwdRoute::kTiles:
      break;
  }
  // dx = dz·W as (M, K) over N; dW = dzᵀ·x as (N, K) over M (mishbench_cuda.cpp's two run_tn_store calls).
  const std::string dx = gemm_family(p.M, p.K, p.N, p.dtype, p.prec, p.device);
  const std::string dw = gemm_family(p.N, p.K, p.M, p.dtype, p.prec, p.device);
  return dx == dw ? dx + "+dz" : dx + "+" + dw + "+dz";
}

std::string route_name(int64_t M, int64_t K, int64_t N, const std::string& dtype_name, const std::string& precision,
                       int64_t device_index, bool backward) {
  TORCH_CHECK_VALUE(M >= 0 && K >= 0 && N >= 0, "mishbench.route: M, K, N must be >= 0, got M=", num(M), " K=",
                    num(K), " N=", num(N));
  Problem p;
  p.M = M;
  p.K = K;
  p.N = N;
  p.dtype = parse_dtype_name(dtype_name);
  p.prec = checked_precision(precision, p.dtype);
  if (device_index < 0) return "cpu";  // the CPU kernel (ATen ops), for every shape and mode
  int count = 0;
  C10_CUDA_CHECK(cudaGetDeviceCount(&count));
  TORCH_CHECK_VALUE(device_index < count, "mishbench.route: device_index ", num(device_index), " is not one of the ",
                    num(count), " CUDA devices");
  p.device = static_cast<int>(device_index);
  return backward ? backward_route_name(p) : forward_route_name(p);
}

}  // namespace mishbench
