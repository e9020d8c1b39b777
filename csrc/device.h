// Facts about a CUDA device that the dispatch reads on every call: compute capability, the opt-in shared
// memory per block and the SM count. Queried once per device and cached, because the launch-bound shapes
// pay every host microsecond (three cudaDeviceGetAttribute calls cost ~1 µs per forward otherwise).
#pragma once

namespace mishbench {

struct DeviceCaps {
  int major = 0;
  int minor = 0;
  int smem_optin = 0;  // cudaDevAttrMaxSharedMemoryPerBlockOptin, bytes
  int sm_count = 0;    // cudaDevAttrMultiProcessorCount
};

// The current device (cudaGetDevice; the host code's CUDAGuard has set it).
int current_device();

// Capabilities of device `dev`, cached for indices 0..63 (a benign race: two first callers both query and
// store the same values); other indices are queried every time. Throws (C10_CUDA_CHECK) for a bad index.
DeviceCaps device_caps(int dev);

}  // namespace mishbench
