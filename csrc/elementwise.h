// Host contract of the elementwise kernels (elementwise.cu): the backward's fused dz / dzᵀ / db pass, the
// one-launch backward for tiny problems, and the Mish∘Mish epilogue of the cuBLAS route.
#pragma once

#include <c10/core/ScalarType.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace mishbench {

// Rows of the partial-sum workspace launch_mish_mish_bwd needs for db: (chunks, N) in the accumulator type.
int64_t mish_mish_bwd_chunks(int64_t M);
// Whether launch_small_bwd takes an (M, N, K) backward (one block: dz in shared memory, then dx, dW, db).
bool small_bwd_fits(int64_t M, int64_t N, int64_t K);
void launch_small_bwd(const void* dy, const void* z, const void* x, const void* w, void* dx, void* dw, void* db,
                      int64_t M, int64_t N, int64_t K, c10::ScalarType dtype, cudaStream_t stream);
// dz (M, N), dzᵀ (N, M) and db (N,) from dy and z, each only where its pointer is non-null.
void launch_mish_mish_bwd(const void* dy, const void* z, void* dz, void* dzt, void* db, void* partial, int64_t M,
                          int64_t N, c10::ScalarType dtype, cudaStream_t stream);
// y = mish(mish(z)) over n contiguous elements (y may be z).
void launch_mish_mish_fwd(const void* z, void* y, int64_t n, c10::ScalarType dtype, cudaStream_t stream);

}  // namespace mishbench
