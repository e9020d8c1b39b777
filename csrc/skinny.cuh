// Device helpers shared by the skinny-shape kernels (gemv.cu, splitk.cu, skinny_bwd.cu): the accumulator
// type, aligned vectors, predicated loads that fall back to scalars, and the dtype switch.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace mishbench {
namespace skinny {

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

// V consecutive elements, aligned so that one (double x 4: two) vector instruction moves them.
template <typename T, int V>
struct alignas(V * sizeof(T)) Vec {
  T v[V];
};

template <typename T, int V>
inline bool vec_ok(const void* ptr, int64_t ld) {
  return reinterpret_cast<uintptr_t>(ptr) % (V * sizeof(T)) == 0 && ld % V == 0;
}

// row[k .. k+V) as accumulator values, zeros past `end` or everywhere when !ok. `vec` (uniform over the
// grid, so no divergence) says the base and leading dimension allow the vector load; k is a multiple of V
// there. Otherwise: V predicated scalar loads, which still coalesce across a warp's consecutive lanes.
template <typename T, int V, typename A>
__device__ __forceinline__ void load_vec(const T* __restrict__ row, int64_t k, int64_t end, bool ok, bool vec,
                                         A (&r)[V]) {
  if (vec && ok && k + V <= end) {
    const Vec<T, V> v = *reinterpret_cast<const Vec<T, V>*>(row + k);
#pragma unroll
    for (int i = 0; i < V; ++i) r[i] = static_cast<A>(v.v[i]);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) r[i] = (ok && k + i < end) ? static_cast<A>(row[k + i]) : A(0);
  }
}

// row[k .. k+V) = r, rounded once to T; elements past `end` are not written.
template <typename T, int V, typename A>
__device__ __forceinline__ void store_vec(T* __restrict__ row, int64_t k, int64_t end, bool vec, const A (&r)[V]) {
  if (vec && k + V <= end) {
    Vec<T, V> v;
#pragma unroll
    for (int i = 0; i < V; ++i) v.v[i] = static_cast<T>(r[i]);
    *reinterpret_cast<Vec<T, V>*>(row + k) = v;
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i)
      if (k + i < end) row[k + i] = static_cast<T>(r[i]);
  }
}

}  // namespace skinny
}  // namespace mishbench

// Runs the statement list with `T` bound to the element type of `dtype` (float, double, c10::Half,
// c10::BFloat16); any other dtype is a TORCH_CHECK error naming `what`. Usage:
//   MISHBENCH_SKINNY_DTYPE_SWITCH(dtype, "gemv", T, launch_typed<T>(args));
#define MISHBENCH_SKINNY_DTYPE_SWITCH(dtype, what, T, ...)                                                  \
  switch (dtype) {                                                                                        \
    case c10::ScalarType::Float: {                                                                        \
      using T = float;                                                                                    \
      __VA_ARGS__;                                                                                        \
      break;                                                                                              \
    }                                                                                                     \
    case c10::ScalarType::Double: {                                                                       \
      using T = double;                                                                                   \
      __VA_ARGS__;                                                                                        \
      break;                                                                                              \
    }                                                                                                     \
    case c10::ScalarType::Half: {                                                                         \
      using T = c10::Half;                                                                                \
      __VA_ARGS__;                                                                                        \
      break;                                                                                              \
    }                                                                                                     \
    case c10::ScalarType::BFloat16: {                                                                     \
      using T = c10::BFloat16;                                                                            \
      __VA_ARGS__;                                                                                        \
      break;                                                                                              \
    }                                                                                                     \
    default:                                                                                              \
      TORCH_CHECK(false, "mishbench: ", what, " supports float32, float64, float16 and bfloat16, got ", dtype); \
  }
