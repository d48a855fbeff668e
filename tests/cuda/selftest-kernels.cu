/* gst-moshi: kernels that exercise the CUDA execution model (barriers, shuffles, votes, shared
 * memory, atomics, launch geometry) for the emulator's self-tests (tests/cuda/test-cuda-emu.c).
 * The same file runs on a GPU in the gpu suite, where the results must be the same. */
#include "common.cuh"

#include "selftest-kernels.h"

namespace {

/* Each thread publishes a value, waits at the barrier, then reads its neighbours'. Static and
 * dynamic shared memory are both per block. */
__global__ void
barrier_kernel (int *out, int with_barrier)
{
  __shared__ int stat[1024];
  MOSHI_DYNAMIC_SHARED (int, dyn);
  const int n = blockDim.x * blockDim.y;
  const int t = threadIdx.y * blockDim.x + threadIdx.x;
  stat[t] = (int) blockIdx.x * 1000 + t;
  dyn[t] = 7 * t + 1;
  if (with_barrier)
    __syncthreads ();
  const int a = stat[(t + 1) % n];
  const int b = dyn[(t + n - 1) % n];
  /* second phase over the same memory: needs the barrier before it is overwritten */
  if (with_barrier)
    __syncthreads ();
  stat[t] = a + b;
  if (with_barrier)
    __syncthreads ();
  out[(size_t) blockIdx.x * n + t] = stat[(t + 5) % n];
}

__global__ void
shuffle_kernel (int *out)
{
  const int lane = threadIdx.x % 32;
  const int base = (blockIdx.x * blockDim.x + threadIdx.x) * SELFTEST_SHUFFLE_OUTPUTS;
  const int v = 100 * (int) (threadIdx.x / 32) + lane * lane;
  out[base + 0] = __shfl_sync (MOSHI_FULL_MASK, v, (lane * 7) % 32);
  out[base + 1] = __shfl_xor_sync (MOSHI_FULL_MASK, v, 5);
  out[base + 2] = __shfl_down_sync (MOSHI_FULL_MASK, v, 3);
  out[base + 3] = __shfl_up_sync (MOSHI_FULL_MASK, v, 2);
  out[base + 4] = __shfl_sync (MOSHI_FULL_MASK, v, lane + 3, 8);
  out[base + 5] = __shfl_down_sync (MOSHI_FULL_MASK, v, 3, 8);
  out[base + 6] = (int) __ballot_sync (MOSHI_FULL_MASK, lane % 3 == 0);
  out[base + 7] = __any_sync (MOSHI_FULL_MASK, lane == 17);
  out[base + 8] = __all_sync (MOSHI_FULL_MASK, lane < 31);
  /* the two halves of the warp shuffle separately, with their own masks */
  const unsigned half = lane < 16 ? 0x0000ffffu : 0xffff0000u;
  out[base + 9] = __shfl_xor_sync (half, v, 9);
  out[base + 10] = (int) __ballot_sync (half, lane & 1);
  /* float and 64-bit values */
  const float f = __shfl_xor_sync (MOSHI_FULL_MASK, 0.5f * (float) lane, 1);
  out[base + 11] = (int) (f * 2.0f);
  const long long w = __shfl_sync (MOSHI_FULL_MASK, (long long) lane << 40, 31 - lane);
  out[base + 12] = (int) (w >> 40);
  __syncwarp (MOSHI_FULL_MASK);
}

__global__ void
geometry_kernel (int *out)
{
  const unsigned bx = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned tx = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned nthreads = blockDim.x * blockDim.y * blockDim.z;
  const size_t i = (size_t) bx * nthreads + tx;
  out[4 * i + 0] = (int) (threadIdx.x + 10 * threadIdx.y + 100 * threadIdx.z);
  out[4 * i + 1] = (int) (blockIdx.x + 10 * blockIdx.y + 100 * blockIdx.z);
  out[4 * i + 2] = (int) (blockDim.x + 10 * blockDim.y + 100 * blockDim.z);
  out[4 * i + 3] = (int) (gridDim.x + 10 * gridDim.y + 100 * gridDim.z);
}

__global__ void
atomics_kernel (float *fsum, int *isum, int *imax, const float *x, int n)
{
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n)
    return;
  atomicAdd (fsum, x[i]);
  atomicAdd (isum, i);
  atomicMax (imax, (i * 37) % 1001);
  moshi_k::atomic_max_float (fsum + 1, x[i]);
  moshi_k::atomic_max_float (fsum + 2, -fabsf (x[i]) - 1.0f);
}

/* Reads or writes element `index` of buf: the out-of-bounds tests pass an index past the end. */
__global__ void
touch_kernel (float *buf, long long index, int write)
{
  if (write)
    buf[index] = 1.0f;
  else if (buf[index] == 12345.0f)
    buf[0] = 0.0f;
}

__global__ void
smem_overflow_kernel (int n)
{
  MOSHI_DYNAMIC_SHARED (float, s);
  s[threadIdx.x + n] = 1.0f;
}

/* Lanes 0-15 wait in __syncwarp for lanes 16-31, which wait at __syncthreads for lanes
 * 0-15: a deadlock (a hang on a GPU). */
__global__ void
deadlock_kernel (int *out)
{
  if (threadIdx.x < 16)
    __syncwarp (MOSHI_FULL_MASK);
  else
    __syncthreads ();
  out[threadIdx.x] = 1;
}

/* A shuffle with a mask that leaves out the calling lane. */
__global__ void
bad_mask_kernel (int *out)
{
  out[threadIdx.x] = __shfl_sync (0x1u, (int) threadIdx.x, 0);
}

/* Threads that return early no longer count at __syncthreads. */
__global__ void
early_exit_kernel (int *out)
{
  __shared__ int v[64];
  if (threadIdx.x >= 40)
    return;
  v[threadIdx.x] = (int) threadIdx.x;
  __syncthreads ();
  out[threadIdx.x] = v[39 - threadIdx.x];
}

__global__ void
big_smem_kernel (int *out, int n)
{
  MOSHI_DYNAMIC_SHARED (int, s);
  for (int i = threadIdx.x; i < n; i += blockDim.x)
    s[i] = i;
  __syncthreads ();
  int acc = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x)
    acc += s[n - 1 - i];
  atomicAdd (out, acc);
}

/* y[i] = a x[i] + b: the kernel of the stream capture tests. */
__global__ void
scale_add_kernel (float *y, const float *x, float a, float b, int n)
{
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n)
    y[i] = a * x[i] + b;
}

/* The debug hook: the emulator fails the launch when the range is not device memory (nothing
 * on a GPU). */
__global__ void
check_range_kernel (const float *p, long long n)
{
  MOSHI_CHECK_DEVICE_RANGE (p, (size_t) n * sizeof (float));
}

}  // namespace

extern "C" cudaError_t
selftest_check_range (cudaStream_t stream, const float *p, long long n)
{
  return MOSHI_LAUNCH (check_range_kernel, 1, 32, 0, stream, p, n);
}

extern "C" cudaError_t
selftest_barrier (cudaStream_t stream, int *out, int blocks, int threads_x, int threads_y,
    int with_barrier)
{
  return MOSHI_LAUNCH (barrier_kernel, blocks, dim3 (threads_x, threads_y),
      sizeof (int) * threads_x * threads_y, stream, out, with_barrier);
}

extern "C" cudaError_t
selftest_shuffle (cudaStream_t stream, int *out, int blocks, int threads)
{
  return MOSHI_LAUNCH (shuffle_kernel, blocks, threads, 0, stream, out);
}

extern "C" cudaError_t
selftest_geometry (cudaStream_t stream, int *out, dim3 grid, dim3 block)
{
  return MOSHI_LAUNCH (geometry_kernel, grid, block, 0, stream, out);
}

extern "C" cudaError_t
selftest_atomics (cudaStream_t stream, float *fsum, int *isum, int *imax, const float *x, int n)
{
  return MOSHI_LAUNCH (atomics_kernel, (n + 127) / 128, 128, 0, stream, fsum, isum, imax, x, n);
}

extern "C" cudaError_t
selftest_touch (cudaStream_t stream, float *buf, long long index, int write)
{
  return MOSHI_LAUNCH (touch_kernel, 1, 1, 0, stream, buf, index, write);
}

extern "C" cudaError_t
selftest_smem_overflow (cudaStream_t stream, int smem_floats, int n)
{
  return MOSHI_LAUNCH (smem_overflow_kernel, 1, 32, smem_floats * sizeof (float), stream, n);
}

extern "C" cudaError_t
selftest_deadlock (cudaStream_t stream, int *out)
{
  return MOSHI_LAUNCH (deadlock_kernel, 1, 32, 0, stream, out);
}

extern "C" cudaError_t
selftest_bad_mask (cudaStream_t stream, int *out)
{
  return MOSHI_LAUNCH (bad_mask_kernel, 1, 32, 0, stream, out);
}

extern "C" cudaError_t
selftest_early_exit (cudaStream_t stream, int *out)
{
  return MOSHI_LAUNCH (early_exit_kernel, 1, 64, 0, stream, out);
}

extern "C" cudaError_t
selftest_scale_add (cudaStream_t stream, float *y, const float *x, float a, float b, int n)
{
  return MOSHI_LAUNCH (scale_add_kernel, (n + 63) / 64, 64, 0, stream, y, x, a, b, n);
}

extern "C" cudaError_t
selftest_big_smem (cudaStream_t stream, int *out, int n, int set_attribute)
{
  const size_t bytes = sizeof (int) * (size_t) n;
  if (set_attribute) {
    cudaError_t err = cudaFuncSetAttribute ((const void *) big_smem_kernel,
        cudaFuncAttributeMaxDynamicSharedMemorySize, (int) bytes);
    if (err != cudaSuccess)
      return err;
  }
  return MOSHI_LAUNCH (big_smem_kernel, 1, 256, bytes, stream, out, n);
}
