/* gst-moshi kernels: what every .cu file includes.
 *
 * Under nvcc: the CUDA runtime. For a host C++ compiler (the tests): the same headers plus the
 * CPU emulator of the runtime, so the kernel sources below are compiled unchanged in both. */
#pragma once

#if defined(__CUDACC__)
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#else
#include "cuda-emu.h"     /* tests/cuda-emu */
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

/* FP8 E4M3 ("fn"), bit for bit lib/core/moshi-dtype.c's moshi_e4m3_to_f32 and
 * moshi_f32_to_e4m3: to nearest even, saturating at +-448, every step exact. */
static __device__ __forceinline__ float
e4m3_to_float (uint8_t v)
{
  const int e = (v >> 3) & 15, m = v & 7;
  float a;
  if ((v & 0x7f) == 0x7f)
    a = __uint_as_float (0x7fc00000u);
  else if (e == 0)
    a = ldexpf ((float) m, -9);
  else
    a = ldexpf (1.0f + (float) m * 0.125f, e - 7);
  return (v & 0x80) ? -a : a;
}

static __device__ __forceinline__ uint8_t
float_to_e4m3 (float f)
{
  const unsigned u = __float_as_uint (f);
  const uint8_t sign = (uint8_t) ((u >> 24) & 0x80u);
  if ((u & 0x7fffffffu) > 0x7f800000u)
    return sign | 0x7f;
  const float a = fabsf (f);
  if (a < 0.015625f)
    return sign | (uint8_t) rintf (a * 512.0f);
  if (a >= 464.0f)
    return sign | 0x7e;
  int e;
  frexpf (a, &e);
  e -= 1;
  float q = rintf ((ldexpf (a, -e) - 1.0f) * 8.0f);
  if (q == 8.0f) {
    q = 0.0f;
    e++;
  }
  if (e + 7 > 15 || (e + 7 == 15 && q == 7.0f))
    return sign | 0x7e;
  return sign | (uint8_t) (((e + 7) << 3) | (int) q);
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
