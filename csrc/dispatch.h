// The one table that picks a kernel family ("route") for a forward or a backward call, and names it.
//
// mishbench_cuda.cpp runs what forward_route / backward_route say; route_name says the same in words for the
// CSV's `route` column and for tests (the Python module's route()). The families:
//   forward:  empty, bias (K == 0), cublas (ieee at large shapes), simt, mma, wgmma (the tile GEMMs with the
//             fused epilogue; which one is gemm.h's choice), gemv (M <= 16), splitk (few output tiles).
//   backward: empty, small (one launch for tiny problems), dz (K == 0: only db), cublas+dz, <dx>+dz or
//             <dx>+<dW>+dz (the tile GEMMs for dx then dW, named once when they agree), gemv+dz (M <= 16).
// gemv, splitk and gemv+dz are taken only with MISHBENCH_ROUTES=next in the environment (read once per
// process): nobody has run them on a GPU yet. Without it every route is what it was before they existed.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>

#include "precision.h"

namespace mishbench {

// One call as the dispatch sees it: M rows (x's leading dims flattened), K = in_features, N = out_features.
struct Problem {
  int64_t M = 0, K = 0, N = 0;
  c10::ScalarType dtype = c10::ScalarType::Float;
  Precision prec = Precision::kIeee;
  int device = 0;
};

// kTiles: run_gemm (mishbench_cuda.cpp) picks simt / mma / wgmma, with the pointers in hand.
enum class FwdRoute { kEmpty, kBias, kCublas, kTiles, kGemv, kSplitK };
enum class BwdRoute { kEmpty, kSmall, kDzOnly, kCublas, kTiles, kGemv };

// MISHBENCH_ROUTES=next, read once.
bool next_routes();

// ieee fp32 at M·N·K >= 2^24 runs its GEMMs through cuBLAS (dispatch.cpp says why).
bool use_cublas(Precision prec, c10::ScalarType dtype, int64_t M, int64_t N, int64_t K);

FwdRoute forward_route(const Problem& p);
// For a backward that wants all three gradients (the routes do not depend on which are masked off).
BwdRoute backward_route(const Problem& p);

std::string forward_route_name(const Problem& p);
std::string backward_route_name(const Problem& p);

// The Python module's route(M, K, N, dtype_name, precision, device_index, backward): checks the arguments
// like the ops do (ValueError / RuntimeError naming the bad one) and returns the family's name. dtype_name:
// fp32 | fp16 | bf16 | fp64 or torch's float32 | float16 | bfloat16 | float64. A negative device_index
// names the CPU kernel ("cpu"). Assumes contiguous inputs freshly allocated (16-byte aligned), as the ops
// see after their own .contiguous(); a misaligned view can make the tile GEMMs fall back to simt.
std::string route_name(int64_t M, int64_t K, int64_t N, const std::string& dtype_name, const std::string& precision,
                       int64_t device_index, bool backward);

}  // namespace mishbench
