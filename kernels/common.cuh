/* gst-moshi kernels: what every .cu file includes.
 *
 * Under nvcc: the CUDA runtime. For a host C++ compiler (the tests): the same headers plus the
 * CPU emulator of the runtime, so the kernel sources below are compiled unchanged in both. */
#pragma once

#if defined(__CUDACC__)
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#else
#include "cuda-emu/cuda-emu.h"
#endif

#include <stdint.h>

#include "launch.h"
#include "moshi-kernels.h"

/* Dynamic shared memory as a typed pointer: `MOSHI_DYNAMIC_SHARED (float, buf);`. */
#if defined(__CUDACC__)
#define MOSHI_DYNAMIC_SHARED(type, name) \
  extern __shared__ __align__ (16) unsigned char moshi_dynamic_smem_[]; \
  type *name = reinterpret_cast<type *> (moshi_dynamic_smem_)
#else
#define MOSHI_DYNAMIC_SHARED(type, name) \
  type *name = reinterpret_cast<type *> (::moshi_emu::dynamic_smem ())
#endif

/* Debug hook: in the emulator, fails the launch unless [p, p + bytes) is device memory;
 * nothing on a GPU. */
#if defined(MOSHI_CUDA_EMU)
#define MOSHI_CHECK_DEVICE_RANGE(p, bytes) \
  ::moshi_emu::check_device_range ((p), (bytes), #p, __FILE__, __LINE__)
#else
#define MOSHI_CHECK_DEVICE_RANGE(p, bytes) ((void) 0)
#endif

#define MOSHI_FULL_MASK 0xffffffffu

/* #pragma unroll for nvcc; a host compiler would warn about an unknown pragma */
#if defined(__CUDACC__)
#define MOSHI_UNROLL _Pragma ("unroll")
#else
#define MOSHI_UNROLL
#endif

namespace moshi_k {

static __device__ __forceinline__ float
bf16_bits_to_float (uint16_t v)
{
  return __uint_as_float ((unsigned) v << 16);
}

static __device__ __forceinline__ float
warp_sum (float v)
{
MOSHI_UNROLL
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_xor_sync (MOSHI_FULL_MASK, v, o);
  return v;
}

static __device__ __forceinline__ float
warp_max (float v)
{
MOSHI_UNROLL
  for (int o = 16; o > 0; o >>= 1)
    v = fmaxf (v, __shfl_xor_sync (MOSHI_FULL_MASK, v, o));
  return v;
}

/* Sum over the block (blockDim.x a multiple of 32, at most 1024), returned to every thread.
 * scratch holds 32 floats of shared memory; it may be reused as soon as this returns. */
static __device__ __forceinline__ float
block_sum (float v, float *scratch)
{
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const unsigned n_warps = blockDim.x / 32;
  v = warp_sum (v);
  if (lane == 0)
    scratch[warp] = v;
#if !defined(MOSHI_PLANT_MISSING_BARRIER)
  __syncthreads ();
#endif
  v = lane < n_warps ? scratch[lane] : 0.0f;
  v = warp_sum (v);
  __syncthreads ();       /* scratch is read by every warp before anyone reuses it */
  return v;
}

static __device__ __forceinline__ float
block_max (float v, float *scratch)
{
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const unsigned n_warps = blockDim.x / 32;
  v = warp_max (v);
  if (lane == 0)
    scratch[warp] = v;
  __syncthreads ();
  v = lane < n_warps ? scratch[lane] : -INFINITY;
  v = warp_max (v);
  __syncthreads ();
  return v;
}

/* atomicMax for floats (CUDA has none): the int order of IEEE floats is their order for
 * non-negative values and the reverse unsigned order for negative ones. No NaNs. */
static __device__ __forceinline__ float
atomic_max_float (float *addr, float v)
{
  return v >= 0.0f ? __int_as_float (atomicMax ((int *) addr, __float_as_int (v)))
      : __uint_as_float (atomicMin ((unsigned *) addr, __float_as_uint (v)));
}

static inline unsigned
ceil_div (size_t a, unsigned b)
{
  return (unsigned) ((a + b - 1) / b);
}

}  // namespace moshi_k
