/* gst-moshi CUDA emulator: what a .cu file needs to compile as host C++ and run on the CPU.
 *
 * Included (through kernels/common.cuh) after the toolkit's own headers, so the runtime API,
 * vector types and bf16/fp16 types are the real ones; this header redefines the CUDA keywords
 * and supplies the device built-ins:
 *   - __global__/__device__/__host__ vanish: kernels become host functions;
 *   - threadIdx is the running fiber's index; blockIdx, blockDim, gridDim belong to the block
 *     the calling OS thread is running (the threads of a block are fibers on one OS thread, see
 *     scheduler.cc);
 *   - static __shared__ variables are thread_local statics: blocks run one after another on an
 *     OS thread, so they are per block; dynamic shared memory (MOSHI_DYNAMIC_SHARED in
 *     common.cuh) is a fresh buffer per block, filled with NaN bytes and followed by a guard page;
 *   - __syncthreads is a barrier over the block's fibers; warp shuffles and votes exchange values
 *     through per-warp slots at a barrier over the lanes of the mask;
 *   - atomics are plain read-modify-write (fibers switch only at barriers).
 * Launch with MOSHI_LAUNCH (kernels/launch.h): the arguments are converted and checked at the
 * call; a launch on a capturing stream keeps its own copy of them for the graph to replay. */
#pragma once

#if defined(__CUDACC__)
#error "cuda-emu.h is for host compilers; nvcc builds against the real runtime"
#endif

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#include "moshi-cuda-emu.h"

#define MOSHI_CUDA_EMU 1

#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __constant__
#undef __forceinline__
#define __global__
#define __device__
#define __host__
#define __constant__ static const
#define __shared__ static thread_local
#define __forceinline__ inline __attribute__ ((always_inline))
#define __launch_bounds__(...)
#define warpSize 32

namespace moshi_emu {

struct Fiber;
extern thread_local Fiber *tls_fiber;
extern thread_local uint3 tls_block_idx;
extern thread_local dim3 tls_block_dim, tls_grid_dim;

/* The running fiber's threadIdx and lane (only valid inside a kernel). */
const uint3 &thread_idx ();
unsigned lane_id ();

void *dynamic_smem ();
void syncthreads ();
/* Every lane of mask (which must hold the caller) deposits bits; returns the bits that lane
 * src deposited, or the caller's own when src < 0. A src outside mask reads as all ones. */
uint64_t warp_exchange (unsigned mask, uint64_t bits, int src);
unsigned warp_ballot (unsigned mask, bool pred);
void warp_sync (unsigned mask);
void check_shuffle_width (int width);

/* Debug hook for kernels: fails the launch unless [p, p + bytes) is device memory. */
void check_device_range (const void *p, size_t bytes, const char *what, const char *file,
    int line);
/* Fails the launch from inside a kernel, as a device-side assert does. */
[[noreturn]] void kernel_trap (cudaError_t err, const char *fmt, ...)
    __attribute__ ((format (printf, 2, 3)));

/* What launch_raw does with the context of a launch (the kernel and its converted arguments):
 * run it in the calling fiber (each thread copies the arguments), and, for a launch on a
 * capturing stream, copy it to the heap for the graph node and free that copy with the node. */
typedef void (*Thunk) (void *ctx);
struct LaunchOps {
  Thunk run;
  void *(*clone) (const void *ctx);
  void (*destroy) (void *ctx);
};
struct PtrArg {
  const void *ptr;
  int index;
};
/* ctx is only borrowed: a captured launch keeps ops->clone (ctx). */
cudaError_t launch_raw (const char *name, const void *func, dim3 grid, dim3 block,
    size_t smem, cudaStream_t stream, const LaunchOps *ops, void *ctx, const PtrArg *ptrs,
    int n_ptrs);

template <typename T>
inline const void *
arg_pointer (T *p)
{
  return (const void *) p;
}

template <typename T>
inline const void *
arg_pointer (const T &)
{
  return nullptr;
}

template <typename Tuple, size_t... I>
inline int
collect_pointers (const Tuple &t, PtrArg *out, std::index_sequence<I...>)
{
  int n = 0;
  ((std::is_pointer<std::tuple_element_t<I, Tuple>>::value
      ? (void) (out[n++] = PtrArg { arg_pointer (std::get<I> (t)), (int) I })
      : (void) 0), ...);
  return n;
}

/* kernel<<<grid, block, smem, stream>>>(args...): the arguments are converted to the kernel's
 * parameter types once, on the host, and every thread gets its own copy, as on a GPU. Pointer
 * arguments must be NULL or device memory. A captured launch replays with the arguments of the
 * call (values, not what pointers point to, as on a GPU). */
template <typename... P, typename... A>
inline cudaError_t
launch (const char *name, void (*kernel) (P...), dim3 grid, dim3 block, size_t smem,
    cudaStream_t stream, A &&... args)
{
  static_assert (sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
  using Params = std::tuple<std::decay_t<P>...>;
  struct Ctx {
    void (*kernel) (P...);
    Params params;
  };
  Ctx ctx { kernel, Params (std::forward<A> (args)...) };
  PtrArg ptrs[sizeof...(P) + 1] = {};
  int n = collect_pointers (ctx.params, ptrs, std::index_sequence_for<P...> ());
  static const LaunchOps ops = {
    [] (void *c) {
      Ctx *x = (Ctx *) c;
      Params copy = x->params;
      std::apply (x->kernel, copy);
    },
    [] (const void *c) -> void * { return new Ctx (*(const Ctx *) c); },
    [] (void *c) { delete (Ctx *) c; },
  };
  return launch_raw (name, (const void *) kernel, grid, block, smem, stream, &ops, &ctx, ptrs, n);
}

template <typename T>
inline uint64_t
to_bits (T v)
{
  static_assert (sizeof (T) <= 8 && std::is_trivially_copyable<T>::value,
      "warp shuffles move values of at most 8 bytes");
  uint64_t b = 0;
  memcpy (&b, &v, sizeof v);
  return b;
}

template <typename T>
inline T
from_bits (uint64_t b)
{
  T v;
  memcpy (&v, &b, sizeof v);
  return v;
}

}  // namespace moshi_emu

#define threadIdx (::moshi_emu::thread_idx ())
#define blockIdx (static_cast<const uint3 &> (::moshi_emu::tls_block_idx))
#define blockDim (static_cast<const dim3 &> (::moshi_emu::tls_block_dim))
#define gridDim (static_cast<const dim3 &> (::moshi_emu::tls_grid_dim))

/* ---- barriers, shuffles, votes ---- */

inline void
__syncthreads ()
{
  ::moshi_emu::syncthreads ();
}

inline void
__syncwarp (unsigned mask = 0xffffffffu)
{
  ::moshi_emu::warp_sync (mask);
}

template <typename T>
inline T
__shfl_sync (unsigned mask, T var, int src_lane, int width = warpSize)
{
  ::moshi_emu::check_shuffle_width (width);
  int lane = (int) ::moshi_emu::lane_id ();
  int src = (lane & ~(width - 1)) + (src_lane & (width - 1));
  return ::moshi_emu::from_bits<T> (::moshi_emu::warp_exchange (mask, ::moshi_emu::to_bits (var), src));
}

template <typename T>
inline T
__shfl_xor_sync (unsigned mask, T var, int lane_mask, int width = warpSize)
{
  ::moshi_emu::check_shuffle_width (width);
  int lane = (int) ::moshi_emu::lane_id ();
  int src = lane ^ lane_mask;
  /* a source in a later group of width lanes gives the caller its own value */
  if (src >= ((lane / width) + 1) * width || src > 31)
    src = -1;
  return ::moshi_emu::from_bits<T> (::moshi_emu::warp_exchange (mask, ::moshi_emu::to_bits (var), src));
}

template <typename T>
inline T
__shfl_down_sync (unsigned mask, T var, unsigned delta, int width = warpSize)
{
  ::moshi_emu::check_shuffle_width (width);
  int lane = (int) ::moshi_emu::lane_id ();
  int src = lane + (int) delta;
  if (src >= ((lane / width) + 1) * width)
    src = -1;
  return ::moshi_emu::from_bits<T> (::moshi_emu::warp_exchange (mask, ::moshi_emu::to_bits (var), src));
}

template <typename T>
inline T
__shfl_up_sync (unsigned mask, T var, unsigned delta, int width = warpSize)
{
  ::moshi_emu::check_shuffle_width (width);
  int lane = (int) ::moshi_emu::lane_id ();
  int src = lane - (int) delta;
  if (src < (lane / width) * width)
    src = -1;
  return ::moshi_emu::from_bits<T> (::moshi_emu::warp_exchange (mask, ::moshi_emu::to_bits (var), src));
}

inline unsigned
__ballot_sync (unsigned mask, int pred)
{
  return ::moshi_emu::warp_ballot (mask, pred != 0);
}

inline int
__any_sync (unsigned mask, int pred)
{
  return (::moshi_emu::warp_ballot (mask, pred != 0) & mask) != 0;
}

inline int
__all_sync (unsigned mask, int pred)
{
  return (::moshi_emu::warp_ballot (mask, pred != 0) & mask) == mask;
}

/* ---- atomics (fibers switch only at barriers, so a read-modify-write is atomic) ---- */

template <typename T>
inline T
__moshi_emu_atomic_add (T *addr, T v)
{
  T old = *addr;
  *addr = old + v;
  return old;
}

inline float atomicAdd (float *a, float v) { return __moshi_emu_atomic_add (a, v); }
inline double atomicAdd (double *a, double v) { return __moshi_emu_atomic_add (a, v); }
inline int atomicAdd (int *a, int v) { return __moshi_emu_atomic_add (a, v); }
inline unsigned atomicAdd (unsigned *a, unsigned v) { return __moshi_emu_atomic_add (a, v); }
inline unsigned long long atomicAdd (unsigned long long *a, unsigned long long v)
{
  return __moshi_emu_atomic_add (a, v);
}

template <typename T>
inline T
__moshi_emu_atomic_max (T *addr, T v)
{
  T old = *addr;
  *addr = old > v ? old : v;
  return old;
}

inline int atomicMax (int *a, int v) { return __moshi_emu_atomic_max (a, v); }
inline unsigned atomicMax (unsigned *a, unsigned v) { return __moshi_emu_atomic_max (a, v); }
inline long long atomicMax (long long *a, long long v) { return __moshi_emu_atomic_max (a, v); }
inline unsigned long long atomicMax (unsigned long long *a, unsigned long long v)
{
  return __moshi_emu_atomic_max (a, v);
}

template <typename T>
inline T
__moshi_emu_atomic_min (T *addr, T v)
{
  T old = *addr;
  *addr = old < v ? old : v;
  return old;
}

inline int atomicMin (int *a, int v) { return __moshi_emu_atomic_min (a, v); }
inline unsigned atomicMin (unsigned *a, unsigned v) { return __moshi_emu_atomic_min (a, v); }

inline int
atomicCAS (int *a, int compare, int v)
{
  int old = *a;
  if (old == compare)
    *a = v;
  return old;
}

inline unsigned
atomicCAS (unsigned *a, unsigned compare, unsigned v)
{
  unsigned old = *a;
  if (old == compare)
    *a = v;
  return old;
}

inline unsigned long long
atomicCAS (unsigned long long *a, unsigned long long compare, unsigned long long v)
{
  unsigned long long old = *a;
  if (old == compare)
    *a = v;
  return old;
}

inline int atomicExch (int *a, int v) { int old = *a; *a = v; return old; }
inline unsigned atomicExch (unsigned *a, unsigned v) { unsigned old = *a; *a = v; return old; }
inline float atomicExch (float *a, float v) { float old = *a; *a = v; return old; }

/* ---- device math and bit built-ins missing from host headers ---- */

inline float rsqrtf (float x) { return 1.0f / sqrtf (x); }
inline double rsqrt (double x) { return 1.0 / sqrt (x); }
inline float __fdividef (float a, float b) { return a / b; }
inline float __saturatef (float x) { return x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x; }
inline float __fmaf_rn (float a, float b, float c) { return fmaf (a, b, c); }
inline float __fmul_rn (float a, float b) { return a * b; }
inline float __fadd_rn (float a, float b) { return a + b; }
inline unsigned __float_as_uint (float f) { return ::moshi_emu::from_bits<unsigned> (::moshi_emu::to_bits (f)); }
inline float __uint_as_float (unsigned u) { return ::moshi_emu::from_bits<float> (::moshi_emu::to_bits (u)); }
inline int __float_as_int (float f) { return ::moshi_emu::from_bits<int> (::moshi_emu::to_bits (f)); }
inline float __int_as_float (int i) { return ::moshi_emu::from_bits<float> (::moshi_emu::to_bits (i)); }
inline int __popc (unsigned x) { return __builtin_popcount (x); }
inline int __clz (int x) { return x == 0 ? 32 : __builtin_clz ((unsigned) x); }
inline int __ffs (int x) { return __builtin_ffs (x); }
inline void __threadfence () {}
inline void __threadfence_block () {}

template <typename T>
inline T
__ldg (const T *p)
{
  return *p;
}
