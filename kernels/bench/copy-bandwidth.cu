/* moshi-copy-bandwidth: the device memory bandwidth of the GPU it runs on, measured once, as the
 * floor for weight reads (docs/cuda.md, "The device bundle").
 *
 *   moshi-copy-bandwidth [MiB]     (default 2048 MiB per buffer)
 *
 * Two figures, each the best and the mean of 20 timed repetitions after 3 warm-ups (CUDA events):
 *  - cudaMemcpyAsync device to device: bytes read + bytes written over the time;
 *  - a read-only kernel (16-byte loads, grid-stride, one XOR per block kept so that nothing is
 *    optimised away): bytes read over the time, the figure for a step that only reads weights.
 * The source is filled with a non-zero pattern first (zeros can run faster than real data).
 * Exits 77 with "SKIP: no CUDA device: ..." where there is no usable GPU or driver, 1 on any
 * other CUDA error, and prints one machine-readable line last:
 *   RESULT copy_gbs=<best D2D GB/s> read_gbs=<best read GB/s>
 */
#include <cuda_runtime.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

namespace {

const int THREADS = 256;
const int WARMUP = 3;
const int REPS = 20;

#define CHECK(call)                                                                       \
  do {                                                                                    \
    cudaError_t err_ = (call);                                                            \
    if (err_ != cudaSuccess) {                                                            \
      fprintf (stderr, "moshi-copy-bandwidth: %s failed: %s (%s)\n", #call,              \
          cudaGetErrorName (err_), cudaGetErrorString (err_));                           \
      exit (1);                                                                           \
    }                                                                                     \
  } while (0)

__global__ void __launch_bounds__ (THREADS)
fill_kernel (uint4 *dst, size_t n)
{
  for (size_t i = blockIdx.x * (size_t) blockDim.x + threadIdx.x; i < n;
       i += (size_t) gridDim.x * blockDim.x) {
    unsigned v = (unsigned) i * 2654435761u + 12345u;
    dst[i] = make_uint4 (v, v ^ 0x9e3779b9u, v + 0x7f4a7c15u, ~v);
  }
}

__global__ void __launch_bounds__ (THREADS)
read_kernel (const uint4 *src, size_t n, unsigned *sink)
{
  __shared__ unsigned partial[THREADS];
  unsigned acc = 0;
  const size_t stride = (size_t) gridDim.x * blockDim.x;
  size_t i = blockIdx.x * (size_t) blockDim.x + threadIdx.x;
  for (; i + 3 * stride < n; i += 4 * stride) {
    uint4 a = src[i], b = src[i + stride], c = src[i + 2 * stride], d = src[i + 3 * stride];
    acc ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w ^ c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y
        ^ d.z ^ d.w;
  }
  for (; i < n; i += stride) {
    uint4 a = src[i];
    acc ^= a.x ^ a.y ^ a.z ^ a.w;
  }
  partial[threadIdx.x] = acc;
  __syncthreads ();
  for (int s = THREADS / 2; s > 0; s /= 2) {
    if ((int) threadIdx.x < s)
      partial[threadIdx.x] ^= partial[threadIdx.x + s];
    __syncthreads ();
  }
  if (threadIdx.x == 0)
    sink[blockIdx.x] = partial[0];
}

struct Timing {
  float best_ms, mean_ms;
};

template <typename F>
Timing
time_reps (cudaEvent_t start, cudaEvent_t stop, F body)
{
  Timing t = { 1e30f, 0.0f };
  for (int r = 0; r < WARMUP + REPS; r++) {
    CHECK (cudaEventRecord (start));
    body ();
    CHECK (cudaGetLastError ());
    CHECK (cudaEventRecord (stop));
    CHECK (cudaEventSynchronize (stop));
    float ms = 0;
    CHECK (cudaEventElapsedTime (&ms, start, stop));
    if (r >= WARMUP) {
      t.best_ms = ms < t.best_ms ? ms : t.best_ms;
      t.mean_ms += ms / REPS;
    }
  }
  return t;
}

}  // namespace

int
main (int argc, char **argv)
{
  long mib = argc > 1 ? atol (argv[1]) : 2048;
  if (mib < 1) {
    fprintf (stderr, "usage: moshi-copy-bandwidth [MiB per buffer, default 2048]\n");
    return 2;
  }
  int count = 0;
  cudaError_t err = cudaGetDeviceCount (&count);
  if (err != cudaSuccess || count == 0) {
    printf ("SKIP: no CUDA device: %s\n",
        err != cudaSuccess ? cudaGetErrorString (err) : "cudaGetDeviceCount found none");
    return 77;
  }
  cudaDeviceProp prop;
  CHECK (cudaGetDeviceProperties (&prop, 0));
  printf ("device 0: %s, sm_%d%d, %d SMs, %.1f GiB, L2 %.1f MiB\n", prop.name, prop.major,
      prop.minor, prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0,
      prop.l2CacheSize / 1048576.0);

  const size_t bytes = (size_t) mib << 20;
  const size_t n = bytes / sizeof (uint4);
  uint4 *a = NULL, *b = NULL;
  unsigned *sink = NULL;
  const int blocks = prop.multiProcessorCount * 8;
  CHECK (cudaMalloc (&a, bytes));
  CHECK (cudaMalloc (&b, bytes));
  CHECK (cudaMalloc (&sink, blocks * sizeof (unsigned)));
  fill_kernel<<<blocks, THREADS>>> (a, n);
  CHECK (cudaGetLastError ());
  CHECK (cudaDeviceSynchronize ());

  cudaEvent_t start, stop;
  CHECK (cudaEventCreate (&start));
  CHECK (cudaEventCreate (&stop));
  Timing copy = time_reps (start, stop, [&] () {
    CHECK (cudaMemcpyAsync (b, a, bytes, cudaMemcpyDeviceToDevice, 0));
  });
  Timing read = time_reps (start, stop, [&] () {
    read_kernel<<<blocks, THREADS>>> (a, n, sink);
  });
  /* the copy must have copied: spot-check a few 16-byte words */
  uint4 head[4], tail[4];
  CHECK (cudaMemcpy (head, a, sizeof head, cudaMemcpyDeviceToHost));
  CHECK (cudaMemcpy (tail, b, sizeof tail, cudaMemcpyDeviceToHost));
  for (int i = 0; i < 4; i++)
    if (head[i].x != tail[i].x || head[i].w != tail[i].w) {
      fprintf (stderr, "moshi-copy-bandwidth: the copy differs from its source at word %d\n", i);
      return 1;
    }

  double copy_gbs = 2.0 * bytes / (copy.best_ms * 1e-3) / 1e9;
  double read_gbs = (double) bytes / (read.best_ms * 1e-3) / 1e9;
  printf ("memcpy D2D, %ld MiB: best %.3f ms, mean %.3f ms: %.0f GB/s (read + write), mean %.0f GB/s\n",
      mib, copy.best_ms, copy.mean_ms, copy_gbs, 2.0 * bytes / (copy.mean_ms * 1e-3) / 1e9);
  printf ("read kernel, %ld MiB: best %.3f ms, mean %.3f ms: %.0f GB/s (read), mean %.0f GB/s\n",
      mib, read.best_ms, read.mean_ms, read_gbs, (double) bytes / (read.mean_ms * 1e-3) / 1e9);
  printf ("RESULT copy_gbs=%.0f read_gbs=%.0f\n", copy_gbs, read_gbs);
  CHECK (cudaFree (a));
  CHECK (cudaFree (b));
  CHECK (cudaFree (sink));
  return 0;
}
