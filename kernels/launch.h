/* gst-moshi kernels: one way to launch a kernel, the same in both builds.
 *
 * MOSHI_LAUNCH (kernel, grid, block, smem_bytes, stream, args...) is
 *   kernel<<<grid, block, smem_bytes, stream>>> (args...)        under nvcc, and
 *   the emulator's launcher (tests/cuda-emu/cuda-emu.h)            for a host compiler,
 * and evaluates to the cudaError_t of the launch (cudaGetLastError) in both, so host code is
 * written once. A kernel template must be named through an alias or in parentheses. */
/* Every launch also increments the calling thread's launch counter (moshi_k_launch_count in
 * moshi-kernels.h; the backend's per-exec accounting takes differences of it around its calls). */
#pragma once

extern "C" void moshi_k_count_launch (void);

#if defined(__CUDACC__)
#define MOSHI_LAUNCH(kernel, grid, block, smem, stream, ...) \
  (moshi_k_count_launch (), \
   (kernel)<<<(grid), (block), (smem), (stream)>>> (__VA_ARGS__), cudaGetLastError ())
#else
#define MOSHI_LAUNCH(kernel, grid, block, smem, stream, ...) \
  (moshi_k_count_launch (), \
   ::moshi_emu::launch (#kernel, (kernel), dim3 (grid), dim3 (block), (size_t) (smem), (stream), \
       ##__VA_ARGS__), cudaGetLastError ())
#endif
