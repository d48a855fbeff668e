/* gst-moshi CUDA kernels: embedding gathers, sinusoidal embeddings and interleaved RoPE.
 *
 * Angles follow the CPU op exactly: frequencies and angles are rounded to f32 where the
 * reference rounds them, and the sines and cosines of those f32 angles are taken in double, so
 * that positions in the thousands do not lose the low bits of the phase. Frequencies and
 * powers are computed in double and rounded once (correctly rounded in all but rare cases,
 * like the CPU's expf/powf), not with the 2-ulp single-precision device functions. */
#include "common.cuh"

namespace {

const int THREADS = 256;

/* dst[r] = beta * dst[r] + table[ids[r]]: one row per blockIdx.y, a column per thread. */
template <typename T>
__device__ __forceinline__ float load_table (const T *p);

template <>
__device__ __forceinline__ float
load_table<float> (const float *p)
{
  return __ldg (p);
}

template <>
__device__ __forceinline__ float
load_table<uint16_t> (const uint16_t *p)
{
  return moshi_k::bf16_bits_to_float (__ldg (p));
}

template <typename T>
__global__ void __launch_bounds__ (THREADS)
embedding_kernel (float *dst, int ld, const T *table, int vocab, int d, const int32_t *ids,
    int rows, float beta)
{
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= d)
    return;
  for (int r = blockIdx.y; r < rows; r += gridDim.y) {
    const int id = ids[r];
    float *y = dst + (size_t) r * ld + c;
    float v = beta == 0.0f ? 0.0f : beta == 1.0f ? *y : beta * *y;
    if (id >= 0 && id < vocab)
      v += load_table (table + (size_t) id * d + c);
    *y = v;
  }
}

__global__ void __launch_bounds__ (THREADS)
add_sin_embedding_kernel (float *x, int ld, int rows, int d, int pos0, const MoshiKRowCache *rc,
    float max_period, float scale)
{
  const int half = d / 2;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= half)
    return;
  const float expo = half > 1 ? (float) i / (float) (half - 1) : 0.0f;
  const float period = (float) pow ((double) max_period, (double) expo);
  for (int r = blockIdx.y; r < rows; r += gridDim.y) {
    const float pos = (float) (rc != nullptr ? rc[r].pos : pos0 + r);
    const float phase = pos / period;
    double s, c;
    sincos ((double) phase, &s, &c);
    float *y = x + (size_t) r * ld;
    y[i] += scale * (float) c;
    y[half + i] += scale * (float) s;
  }
}

/* One block per row; threadIdx.x walks the frequency pairs (the angle is computed once per
 * pair), threadIdx.y the heads. Consecutive threads touch consecutive float pairs. */
__global__ void __launch_bounds__ (THREADS)
rope_kernel (float *x, int ld, int n_heads, int head_dim, int pos0, const MoshiKRowCache *rc,
    float coef)
{
  const int half = head_dim / 2;
  const int r = blockIdx.x;
  const float pos = (float) (rc != nullptr ? rc[r].pos : pos0 + r);
  float *row = x + (size_t) r * ld;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const float freq = (float) exp ((double) ((float) i * coef));
    const float angle = pos * freq;
    double sd, cd;
    sincos ((double) angle, &sd, &cd);
    const float c = (float) cd, s = (float) sd;
    for (int h = threadIdx.y; h < n_heads; h += blockDim.y) {
      float *p = row + (size_t) h * head_dim + 2 * i;
      const float re = p[0], im = p[1];
      p[0] = re * c - im * s;
      p[1] = re * s + im * c;
    }
  }
}

}  // namespace

extern "C" cudaError_t
moshi_k_embedding (cudaStream_t stream, float *dst, int ld, const void *table,
    MoshiKernelDType dtype, int vocab, int d, const int32_t *ids, int rows, float beta)
{
  if (rows < 0 || d < 0 || ld < d || vocab < 0)
    return cudaErrorInvalidValue;
  if (rows == 0 || d == 0)
    return cudaSuccess;
  dim3 grid (moshi_k::ceil_div ((size_t) d, THREADS), rows < 65535 ? (unsigned) rows : 65535u);
  switch (dtype) {
    case MOSHI_K_F32:
      return MOSHI_LAUNCH (embedding_kernel<float>, grid, THREADS, 0, stream, dst, ld,
          (const float *) table, vocab, d, ids, rows, beta);
    case MOSHI_K_BF16:
      return MOSHI_LAUNCH (embedding_kernel<uint16_t>, grid, THREADS, 0, stream, dst, ld,
          (const uint16_t *) table, vocab, d, ids, rows, beta);
  }
  return cudaErrorInvalidValue;
}

static cudaError_t
add_sin_embedding (cudaStream_t stream, float *x, int ld, int rows, int d, int pos0,
    const MoshiKRowCache *rc, float max_period, float scale)
{
  if (rows < 0 || d < 0 || ld < d)
    return cudaErrorInvalidValue;
  if (rows == 0 || d < 2)
    return cudaSuccess;
  dim3 grid (moshi_k::ceil_div ((size_t) (d / 2), THREADS), rows < 65535 ? (unsigned) rows : 65535u);
  return MOSHI_LAUNCH (add_sin_embedding_kernel, grid, THREADS, 0, stream, x, ld, rows, d, pos0,
      rc, max_period, scale);
}

extern "C" cudaError_t
moshi_k_add_sin_embedding (cudaStream_t stream, float *x, int ld, int rows, int d, int pos0,
    float max_period, float scale)
{
  return add_sin_embedding (stream, x, ld, rows, d, pos0, nullptr, max_period, scale);
}

extern "C" cudaError_t
moshi_k_add_sin_embedding_rows (cudaStream_t stream, float *x, int ld, int rows, int d,
    const MoshiKRowCache *rc, float max_period, float scale)
{
  if (rc == nullptr)
    return cudaErrorInvalidValue;
  return add_sin_embedding (stream, x, ld, rows, d, 0, rc, max_period, scale);
}

static cudaError_t
rope (cudaStream_t stream, float *x, int ld, int t, int n_heads, int head_dim, int pos0,
    const MoshiKRowCache *rc, float max_period)
{
  if (t < 0 || n_heads < 0 || head_dim < 0 || (head_dim & 1) || ld < n_heads * head_dim)
    return cudaErrorInvalidValue;
  if (t == 0 || n_heads == 0 || head_dim == 0)
    return cudaSuccess;
  /* as the CPU op: the log in double, the coefficient rounded to f32 */
  const float coef = (float) (-log ((double) max_period) * 2.0 / head_dim);
  const int half = head_dim / 2;
  unsigned tx = half >= 32 ? 32u * (unsigned) ((half + 31) / 32) : 32u;
  if (tx > THREADS)
    tx = THREADS;
  unsigned ty = THREADS / tx;
  if (ty > (unsigned) n_heads)
    ty = (unsigned) n_heads;
  return MOSHI_LAUNCH (rope_kernel, (unsigned) t, dim3 (tx, ty), 0, stream, x, ld, n_heads,
      head_dim, pos0, rc, coef);
}

extern "C" cudaError_t
moshi_k_rope (cudaStream_t stream, float *x, int ld, int t, int n_heads, int head_dim, int pos0,
    float max_period)
{
  return rope (stream, x, ld, t, n_heads, head_dim, pos0, nullptr, max_period);
}

extern "C" cudaError_t
moshi_k_rope_rows (cudaStream_t stream, float *x, int ld, int rows, int n_heads, int head_dim,
    const MoshiKRowCache *rc, float max_period)
{
  if (rc == nullptr)
    return cudaErrorInvalidValue;
  return rope (stream, x, ld, rows, n_heads, head_dim, 0, rc, max_period);
}
