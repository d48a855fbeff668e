/* gst-moshi CUDA kernels: elementwise ops (ELU, GELU, gated activations, scaled residual add).
 *
 * 2-D ops map threadIdx.x/blockIdx.x to columns, so a warp reads 32 consecutive floats of a row
 * (coalesced whatever the leading dimension), and blockIdx.y strides over rows. */
#include "common.cuh"

namespace {

const int THREADS = 256;
const unsigned MAX_GRID_Y = 65535;

__device__ __forceinline__ float
elu (float x)
{
  return x > 0.0f ? x : expm1f (x);
}

__device__ __forceinline__ float
gelu (float x)
{
  return 0.5f * x * (1.0f + erff (x * 0.70710678118654752440f));
}

__device__ __forceinline__ float
silu (float x)
{
  return x / (1.0f + expf (-x));
}

__global__ void __launch_bounds__ (THREADS)
elu_2d_kernel (float *dst, int ld_dst, const float *src, int ld_src, int rows, int cols)
{
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
#if defined(MOSHI_PLANT_OOB)
  /* planted bug: an off-by-one tail check writes one column too many */
  if (c > cols)
#else
  if (c >= cols)
#endif
    return;
  for (int r = blockIdx.y; r < rows; r += gridDim.y)
    dst[(size_t) r * ld_dst + c] = elu (src[(size_t) r * ld_src + c]);
}

/* x = GELU(x) over n floats; float4 loads when x is 16-byte aligned. */
__global__ void __launch_bounds__ (THREADS)
gelu_kernel (float *x, size_t n)
{
  const size_t stride = (size_t) gridDim.x * blockDim.x;
  size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x;
  size_t head = 0;
  if (((uintptr_t) x & 15) == 0) {
    float4 *x4 = reinterpret_cast<float4 *> (x);
    const size_t n4 = n / 4;
    for (size_t j = i; j < n4; j += stride) {
      float4 v = x4[j];
      v.x = gelu (v.x);
      v.y = gelu (v.y);
      v.z = gelu (v.z);
      v.w = gelu (v.w);
      x4[j] = v;
    }
    head = n4 * 4;
  }
  for (size_t j = head + i; j < n; j += stride)
    x[j] = gelu (x[j]);
}

__global__ void __launch_bounds__ (THREADS)
add_scaled_kernel (float *x, int ld_x, const float *y, int ld_y, const float *scale, int rows,
    int cols)
{
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols)
    return;
  const float s = scale ? scale[c] : 1.0f;
  for (int r = blockIdx.y; r < rows; r += gridDim.y) {
    const float v = y[(size_t) r * ld_y + c];
    /* the CPU op adds y itself when there is no scale: 1.0f * y is the same float */
    x[(size_t) r * ld_x + c] += s * v;
  }
}

__global__ void __launch_bounds__ (THREADS)
gated_act_kernel (float *dst, int ld_dst, const float *src, int ld_src, int act, int rows,
    int hidden)
{
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= hidden)
    return;
  for (int r = blockIdx.y; r < rows; r += gridDim.y) {
    const float *row = src + (size_t) r * ld_src;
    const float g = row[i];
    const float a = act == MOSHI_K_ACT_SILU ? silu (g) : gelu (g);
    dst[(size_t) r * ld_dst + i] = a * row[hidden + i];
  }
}

dim3
grid_2d (int rows, int cols)
{
  return dim3 (moshi_k::ceil_div ((size_t) cols, THREADS),
      rows < (int) MAX_GRID_Y ? (unsigned) rows : MAX_GRID_Y);
}

}  // namespace

extern "C" cudaError_t
moshi_k_elu_2d (cudaStream_t stream, float *dst, int ld_dst, const float *src, int ld_src,
    int rows, int cols)
{
  if (rows < 0 || cols < 0 || ld_dst < cols || ld_src < cols)
    return cudaErrorInvalidValue;
  if (rows == 0 || cols == 0)
    return cudaSuccess;
  return MOSHI_LAUNCH (elu_2d_kernel, grid_2d (rows, cols), THREADS, 0, stream, dst, ld_dst, src,
      ld_src, rows, cols);
}

extern "C" cudaError_t
moshi_k_gelu (cudaStream_t stream, float *x, size_t n)
{
  if (n == 0)
    return cudaSuccess;
  unsigned blocks = moshi_k::ceil_div ((n + 3) / 4, THREADS);
  if (blocks > 4096)
    blocks = 4096;
  return MOSHI_LAUNCH (gelu_kernel, blocks, THREADS, 0, stream, x, n);
}

extern "C" cudaError_t
moshi_k_add_scaled (cudaStream_t stream, float *x, int ld_x, const float *y, int ld_y,
    const float *scale, int rows, int cols)
{
  if (rows < 0 || cols < 0 || ld_x < cols || ld_y < cols)
    return cudaErrorInvalidValue;
  if (rows == 0 || cols == 0)
    return cudaSuccess;
  return MOSHI_LAUNCH (add_scaled_kernel, grid_2d (rows, cols), THREADS, 0, stream, x, ld_x, y,
      ld_y, scale, rows, cols);
}

extern "C" cudaError_t
moshi_k_gated_act (cudaStream_t stream, float *dst, int ld_dst, const float *src, int ld_src,
    MoshiKernelAct act, int rows, int hidden)
{
  if (rows < 0 || hidden < 0 || ld_dst < hidden || ld_src < 2 * hidden
      || (act != MOSHI_K_ACT_SILU && act != MOSHI_K_ACT_GELU))
    return cudaErrorInvalidValue;
  if (rows == 0 || hidden == 0)
    return cudaSuccess;
  return MOSHI_LAUNCH (gated_act_kernel, grid_2d (rows, hidden), THREADS, 0, stream, dst, ld_dst,
      src, ld_src, (int) act, rows, hidden);
}
