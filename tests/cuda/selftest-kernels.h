/* gst-moshi: the C entry points of selftest-kernels.cu. */
#pragma once

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SELFTEST_SHUFFLE_OUTPUTS 13

cudaError_t selftest_barrier (cudaStream_t stream, int *out, int blocks, int threads_x,
    int threads_y, int with_barrier);
cudaError_t selftest_shuffle (cudaStream_t stream, int *out, int blocks, int threads);
cudaError_t selftest_geometry (cudaStream_t stream, int *out, dim3 grid, dim3 block);
cudaError_t selftest_atomics (cudaStream_t stream, float *fsum, int *isum, int *imax,
    const float *x, int n);
cudaError_t selftest_touch (cudaStream_t stream, float *buf, long long index, int write);
cudaError_t selftest_smem_overflow (cudaStream_t stream, int smem_floats, int n);
cudaError_t selftest_deadlock (cudaStream_t stream, int *out);
cudaError_t selftest_bad_mask (cudaStream_t stream, int *out);
cudaError_t selftest_early_exit (cudaStream_t stream, int *out);
cudaError_t selftest_check_range (cudaStream_t stream, const float *p, long long n);
cudaError_t selftest_big_smem (cudaStream_t stream, int *out, int n, int set_attribute);
cudaError_t selftest_scale_add (cudaStream_t stream, float *y, const float *x, float a, float b,
    int n);

#ifdef __cplusplus
}
#endif
