/* gst-moshi CUDA kernels: LayerNorm and RMSNorm over time-major rows.
 *
 * One block per row. Each thread accumulates a strided slice of the row in f32 (consecutive
 * threads read consecutive floats: coalesced), then the block reduces the partial sums with
 * warp shuffles and one shared-memory exchange between warps (moshi_k::block_sum). LayerNorm
 * takes two passes (mean, then the mean of squared deviations, as the CPU op does in double);
 * the second pass re-reads the row from L1/L2. */
#include "common.cuh"

namespace {

__global__ void __launch_bounds__ (1024)
layer_norm_kernel (float *dst, int ld_dst, const float *src, int ld_src, const float *weight,
    const float *bias, float eps, int d)
{
  __shared__ float scratch[32];
  const float *x = src + (size_t) blockIdx.x * ld_src;
  float *y = dst + (size_t) blockIdx.x * ld_dst;

  float sum = 0.0f;
  for (int i = threadIdx.x; i < d; i += blockDim.x)
    sum += x[i];
  const float mean = moshi_k::block_sum (sum, scratch) / (float) d;

  float sq = 0.0f;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    const float t = x[i] - mean;
    sq += t * t;
  }
  const float var = moshi_k::block_sum (sq, scratch) / (float) d;
  const float inv = 1.0f / sqrtf (var + eps);

  /* dst may alias src: every thread has read its elements (the barrier in block_sum) */
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    float v = (x[i] - mean) * inv;
    if (weight)
      v *= weight[i];
    if (bias)
      v += bias[i];
    y[i] = v;
  }
}

__global__ void __launch_bounds__ (1024)
rms_norm_kernel (float *dst, int ld_dst, const float *src, int ld_src, const float *alpha,
    float eps, int d)
{
  __shared__ float scratch[32];
  const float *x = src + (size_t) blockIdx.x * ld_src;
  float *y = dst + (size_t) blockIdx.x * ld_dst;

  float sq = 0.0f;
  for (int i = threadIdx.x; i < d; i += blockDim.x)
    sq += x[i] * x[i];
  const float ms = moshi_k::block_sum (sq, scratch) / (float) d;
  const float inv = 1.0f / sqrtf (ms + eps);
  for (int i = threadIdx.x; i < d; i += blockDim.x)
    y[i] = x[i] * (alpha[i] * inv);
}

/* Enough threads for a few elements each, a whole number of warps, at most 256. */
unsigned
row_threads (int d)
{
  unsigned t = (unsigned) (d + 31) / 32 * 32;
  return t > 256 ? 256 : t;
}

}  // namespace

extern "C" cudaError_t
moshi_k_layer_norm (cudaStream_t stream, float *dst, int ld_dst, const float *src, int ld_src,
    const float *weight, const float *bias, float eps, int rows, int d)
{
  if (rows < 0 || d < 0 || ld_dst < d || ld_src < d || rows > 0x7fffffff)
    return cudaErrorInvalidValue;
  if (rows == 0 || d == 0)
    return cudaSuccess;
  return MOSHI_LAUNCH (layer_norm_kernel, rows, row_threads (d), 0, stream, dst, ld_dst, src,
      ld_src, weight, bias, eps, d);
}

extern "C" cudaError_t
moshi_k_rms_norm (cudaStream_t stream, float *dst, int ld_dst, const float *src, int ld_src,
    const float *alpha, float eps, int rows, int d)
{
  if (rows < 0 || d < 0 || ld_dst < d || ld_src < d || alpha == NULL)
    return cudaErrorInvalidValue;
  if (rows == 0 || d == 0)
    return cudaSuccess;
  return MOSHI_LAUNCH (rms_norm_kernel, rows, row_threads (d), 0, stream, dst, ld_dst, src,
      ld_src, alpha, eps, d);
}
