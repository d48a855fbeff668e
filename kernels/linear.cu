/* gst-moshi CUDA kernels: the parts of a linear layer cuBLAS does not do.
 *
 * cuBLAS cannot multiply BF16 weights by F32 activations (A and B must share a type), so:
 *  - for up to 64 rows (decode, batched over sessions), a GEMV that reads each BF16 weight from
 *    memory once, converts it exactly and accumulates in f32: one warp per output feature, each
 *    lane striding over the inputs (16-byte loads of 8 weights when the row is aligned), a
 *    shuffle reduction, 8 rows at a time;
 *  - for many rows, the backend converts blocks of weight rows to f32 (moshi_k_bf16_to_f32) and
 *    calls cublasSgemm on each block, as the CPU backend does with BLAS;
 *  - a bias added to every row after a GEMM. */
#include "common.cuh"

namespace {

const int THREADS = 256;
const int WARPS = THREADS / 32;

__device__ __forceinline__ void
unpack_bf16x2 (unsigned v, float &lo, float &hi)
{
  lo = __uint_as_float (v << 16);
  hi = __uint_as_float (v & 0xffff0000u);
}

/* dst[r, n] = beta * dst[r, n] + sum_k src[r, k] * w[n, k] (+ bias[n]) for r < rows, in chunks
 * of R rows: the warp reads its weight row from memory for the first chunk and, for later ones,
 * again from L1/L2 (a row is at most a few tens of KiB), so DRAM sees each weight once per call
 * whatever the row count -- the decode batch of many sessions. */
template <int R>
__global__ void __launch_bounds__ (THREADS)
gemv_bf16_kernel (float *dst, int ld_dst, const float *src, int ld_src, const uint16_t *w,
    int n_out, int n_in, const float *bias, float beta, int vec, int rows)
{
  const int lane = threadIdx.x % 32;
  const int n = blockIdx.x * WARPS + threadIdx.x / 32;
  if (n >= n_out)
    return;                     /* the whole warp: the shuffles below see full warps only */
  const uint16_t *wr = w + (size_t) n * n_in;
  const float b = bias ? bias[n] : 0.0f;
  for (int r0 = 0; r0 < rows; r0 += R) {
    const int nr = rows - r0 < R ? rows - r0 : R;
    const float *x0 = src + (size_t) r0 * ld_src;
    float acc[R];
MOSHI_UNROLL
    for (int r = 0; r < R; r++)
      acc[r] = 0.0f;
    int k0 = 0;
    if (vec) {
      /* 8 weights per 16-byte load; the row start is 16-byte aligned (checked by the caller) */
      const uint4 *w8 = reinterpret_cast<const uint4 *> (wr);
      const int n8 = n_in / 8;
      for (int j = lane; j < n8; j += 32) {
        const uint4 p = w8[j];
        float wf[8];
        unpack_bf16x2 (p.x, wf[0], wf[1]);
        unpack_bf16x2 (p.y, wf[2], wf[3]);
        unpack_bf16x2 (p.z, wf[4], wf[5]);
        unpack_bf16x2 (p.w, wf[6], wf[7]);
MOSHI_UNROLL
        for (int r = 0; r < R; r++) {
          if (r < nr) {
            const float *x = x0 + (size_t) r * ld_src + (size_t) j * 8;
            float a = acc[r];
MOSHI_UNROLL
            for (int e = 0; e < 8; e++)
              a += wf[e] * x[e];
            acc[r] = a;
          }
        }
      }
      k0 = n8 * 8;
    }
    for (int k = k0 + lane; k < n_in; k += 32) {
      const float wv = moshi_k::bf16_bits_to_float (wr[k]);
MOSHI_UNROLL
      for (int r = 0; r < R; r++)
        if (r < nr)
          acc[r] += wv * x0[(size_t) r * ld_src + k];
    }
MOSHI_UNROLL
    for (int r = 0; r < R; r++) {
      const float s = moshi_k::warp_sum (acc[r]);
      if (lane == r && r < nr) {
        float *y = dst + (size_t) (r0 + r) * ld_dst + n;
        /* beta == 0 never reads dst (it may hold NaN) */
        const float v = beta == 0.0f ? s : beta * *y + s;
        *y = bias ? v + b : v;
      }
    }
  }
}

/* The int8 form: 16 weights per 16-byte load, the row's scale applied to the warp's sum. */
template <int R>
__global__ void __launch_bounds__ (THREADS)
gemv_i8_kernel (float *dst, int ld_dst, const float *src, int ld_src, const int8_t *w,
    const float *scales, int n_out, int n_in, const float *bias, float beta, int vec, int rows)
{
  const int lane = threadIdx.x % 32;
  const int n = blockIdx.x * WARPS + threadIdx.x / 32;
  if (n >= n_out)
    return;
  const int8_t *wr = w + (size_t) n * n_in;
  const float b = bias ? bias[n] : 0.0f;
  const float scale = scales[n];
  for (int r0 = 0; r0 < rows; r0 += R) {
    const int nr = rows - r0 < R ? rows - r0 : R;
    const float *x0 = src + (size_t) r0 * ld_src;
    float acc[R];
MOSHI_UNROLL
    for (int r = 0; r < R; r++)
      acc[r] = 0.0f;
    int k0 = 0;
    if (vec) {
      const uint4 *w16 = reinterpret_cast<const uint4 *> (wr);
      const int n16 = n_in / 16;
      for (int j = lane; j < n16; j += 32) {
        const uint4 p = w16[j];
        const unsigned words[4] = { p.x, p.y, p.z, p.w };
        float wf[16];
MOSHI_UNROLL
        for (int e = 0; e < 16; e++)
          wf[e] = (float) (int8_t) (words[e / 4] >> (8 * (e % 4)));
MOSHI_UNROLL
        for (int r = 0; r < R; r++) {
          if (r < nr) {
            const float *x = x0 + (size_t) r * ld_src + (size_t) j * 16;
            float a = acc[r];
MOSHI_UNROLL
            for (int e = 0; e < 16; e++)
              a += wf[e] * x[e];
            acc[r] = a;
          }
        }
      }
      k0 = n16 * 16;
    }
    for (int k = k0 + lane; k < n_in; k += 32) {
      const float wv = (float) wr[k];
MOSHI_UNROLL
      for (int r = 0; r < R; r++)
        if (r < nr)
          acc[r] += wv * x0[(size_t) r * ld_src + k];
    }
MOSHI_UNROLL
    for (int r = 0; r < R; r++) {
      const float s = moshi_k::warp_sum (acc[r]) * scale;
      if (lane == r && r < nr) {
        float *y = dst + (size_t) (r0 + r) * ld_dst + n;
        const float v = beta == 0.0f ? s : beta * *y + s;
        *y = bias ? v + b : v;
      }
    }
  }
}

template <int R>
cudaError_t
launch_gemv_i8 (cudaStream_t stream, float *dst, int ld_dst, const float *src, int ld_src,
    const int8_t *w, const float *scales, int n_out, int n_in, const float *bias, float beta,
    int vec, int rows)
{
  auto kernel = gemv_i8_kernel<R>;
  return MOSHI_LAUNCH (kernel, moshi_k::ceil_div ((size_t) n_out, WARPS), THREADS, 0, stream,
      dst, ld_dst, src, ld_src, w, scales, n_out, n_in, bias, beta, vec, rows);
}

__global__ void __launch_bounds__ (THREADS)
i8_to_f32_kernel (float *dst, const int8_t *w, const float *scales, int rows, int cols)
{
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols)
    return;
  for (int r = blockIdx.y; r < rows; r += gridDim.y)
    dst[(size_t) r * cols + c] = (float) w[(size_t) r * cols + c] * scales[r];
}

template <int R>
cudaError_t
launch_gemv (cudaStream_t stream, float *dst, int ld_dst, const float *src, int ld_src,
    const uint16_t *w, int n_out, int n_in, const float *bias, float beta, int vec, int rows)
{
  auto kernel = gemv_bf16_kernel<R>;
  return MOSHI_LAUNCH (kernel, moshi_k::ceil_div ((size_t) n_out, WARPS), THREADS, 0, stream,
      dst, ld_dst, src, ld_src, w, n_out, n_in, bias, beta, vec, rows);
}

__global__ void __launch_bounds__ (THREADS)
bf16_to_f32_kernel (float *dst, const uint16_t *src, size_t n)
{
  const size_t stride = (size_t) gridDim.x * blockDim.x;
  for (size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    dst[i] = moshi_k::bf16_bits_to_float (src[i]);
}

__global__ void __launch_bounds__ (THREADS)
f32_to_bf16_2d_kernel (uint16_t *dst, int ld_dst, const float *src, int ld_src, int rows,
    int cols)
{
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols)
    return;
  for (int r = blockIdx.y; r < rows; r += gridDim.y) {
    const unsigned u = __float_as_uint (src[(size_t) r * ld_src + c]);
    dst[(size_t) r * ld_dst + c] = (u & 0x7fffffffu) > 0x7f800000u
        ? (uint16_t) ((u >> 16) | 0x40u) : (uint16_t) ((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
}

__global__ void __launch_bounds__ (THREADS)
add_bias_kernel (float *x, int ld, const float *bias, int rows, int cols)
{
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols)
    return;
  const float b = bias[c];
  for (int r = blockIdx.y; r < rows; r += gridDim.y)
    x[(size_t) r * ld + c] += b;
}

}  // namespace

extern "C" cudaError_t
moshi_k_linear_bf16_gemv (cudaStream_t stream, float *dst, int ld_dst, const float *src,
    int ld_src, const uint16_t *w, int n_out, int n_in, const float *bias, int rows, float beta)
{
  if (rows < 0 || rows > MOSHI_K_GEMV_MAX_ROWS || n_out < 0 || n_in < 0
      || (rows > 1 && (ld_dst < n_out || ld_src < n_in)))
    return cudaErrorInvalidValue;
  if (rows == 0 || n_out == 0)
    return cudaSuccess;
  const int vec = n_in % 8 == 0 && ((uintptr_t) w & 15) == 0;
#define GEMV(R) launch_gemv<R> (stream, dst, ld_dst, src, ld_src, w, n_out, n_in, bias, beta, vec, rows)
  switch (rows) {
    case 1: return GEMV (1);
    case 2: return GEMV (2);
    case 3: return GEMV (3);
    case 4: return GEMV (4);
    case 5: return GEMV (5);
    case 6: return GEMV (6);
    case 7: return GEMV (7);
    default: return GEMV (8);   /* 8 rows, or chunks of 8 */
  }
#undef GEMV
}

extern "C" cudaError_t
moshi_k_bf16_to_f32 (cudaStream_t stream, float *dst, const uint16_t *src, size_t n)
{
  if (n == 0)
    return cudaSuccess;
  unsigned blocks = moshi_k::ceil_div (n, THREADS);
  if (blocks > 8192)
    blocks = 8192;
  return MOSHI_LAUNCH (bf16_to_f32_kernel, blocks, THREADS, 0, stream, dst, src, n);
}

extern "C" cudaError_t
moshi_k_linear_i8_gemv (cudaStream_t stream, float *dst, int ld_dst, const float *src,
    int ld_src, const int8_t *w, const float *scales, int n_out, int n_in, const float *bias,
    int rows, float beta)
{
  if (rows < 0 || rows > MOSHI_K_GEMV_MAX_ROWS || n_out < 0 || n_in < 0 || scales == NULL
      || (rows > 1 && (ld_dst < n_out || ld_src < n_in)))
    return cudaErrorInvalidValue;
  if (rows == 0 || n_out == 0)
    return cudaSuccess;
  const int vec = n_in % 16 == 0 && ((uintptr_t) w & 15) == 0;
#define GEMV(R) launch_gemv_i8<R> (stream, dst, ld_dst, src, ld_src, w, scales, n_out, n_in, \
    bias, beta, vec, rows)
  switch (rows) {
    case 1: return GEMV (1);
    case 2: return GEMV (2);
    case 3: return GEMV (3);
    case 4: return GEMV (4);
    case 5: return GEMV (5);
    case 6: return GEMV (6);
    case 7: return GEMV (7);
    default: return GEMV (8);
  }
#undef GEMV
}

extern "C" cudaError_t
moshi_k_i8_to_f32 (cudaStream_t stream, float *dst, const int8_t *w, const float *scales,
    int rows, int cols)
{
  if (rows < 0 || cols < 0 || (rows > 0 && cols > 0 && scales == NULL))
    return cudaErrorInvalidValue;
  if (rows == 0 || cols == 0)
    return cudaSuccess;
  const dim3 grid (moshi_k::ceil_div ((size_t) cols, THREADS),
      rows < 65535 ? (unsigned) rows : 65535u);
  return MOSHI_LAUNCH (i8_to_f32_kernel, grid, THREADS, 0, stream, dst, w, scales, rows, cols);
}

extern "C" cudaError_t
moshi_k_f32_to_bf16_2d (cudaStream_t stream, uint16_t *dst, int ld_dst, const float *src,
    int ld_src, int rows, int cols)
{
  if (rows < 0 || cols < 0 || (rows > 1 && (ld_dst < cols || ld_src < cols)))
    return cudaErrorInvalidValue;
  if (rows == 0 || cols == 0)
    return cudaSuccess;
  const dim3 grid (moshi_k::ceil_div ((size_t) cols, THREADS),
      rows < 65535 ? (unsigned) rows : 65535u);
  return MOSHI_LAUNCH (f32_to_bf16_2d_kernel, grid, THREADS, 0, stream, dst, ld_dst, src, ld_src,
      rows, cols);
}

extern "C" cudaError_t
moshi_k_add_bias (cudaStream_t stream, float *x, int ld, const float *bias, int rows, int cols)
{
  if (rows < 0 || cols < 0 || (rows > 1 && ld < cols) || (bias == NULL && rows > 0 && cols > 0))
    return cudaErrorInvalidValue;
  if (rows == 0 || cols == 0)
    return cudaSuccess;
  const dim3 grid (moshi_k::ceil_div ((size_t) cols, THREADS),
      rows < 65535 ? (unsigned) rows : 65535u);
  return MOSHI_LAUNCH (add_bias_kernel, grid, THREADS, 0, stream, x, ld, bias, rows, cols);
}
