/* gst-moshi CUDA kernels: streaming causal 1-D convolutions (channel-major [C, T] rows).
 *
 * conv1d_tiled_kernel: a block computes a tile of TO output channels x TT output steps. The
 * input channels are consumed in chunks of CI: the chunk's input window (TT steps at the stride,
 * plus the dilated kernel span) and its weights [TO, CI, k] are staged in shared memory with
 * coalesced loads, then every thread accumulates TO / 8 outputs of one time step in registers.
 * Used when a tile stays within one group (groups == 1, or a multiple of TO channels per group)
 * and the staged window fits in shared memory; otherwise conv1d_direct_kernel computes one output
 * per thread straight from global memory (depthwise and small grouped convolutions).
 *
 * conv_transpose1d_kernel: a thread per output column of one channel gathers the (step, tap)
 * pairs that land on it, adds the carried overlap of the previous call to the first columns,
 * emits the first t_in * stride columns (plus bias) and writes the new overlap (bias-free) to a
 * scratch row, which the host copies over the carry afterwards (reading the old carry and
 * writing the new one in one kernel would race when the overlap is longer than the output).
 *
 * Every kernel takes n streams through one weight as blockIdx.z (a batch of Mimi sessions):
 * each block offsets its pointers by its stream's steps, so a launch reads the weight for all
 * of them. */
#include "common.cuh"

namespace {

const int TO = 32;              /* output channels per tile */
const int TT = 32;              /* output steps per tile */
const int CI = 8;               /* input channels per staged chunk */
const int TILE_THREADS = TT * 8;

__global__ void __launch_bounds__ (TILE_THREADS)
conv1d_tiled_kernel (float *dst, int ld_dst, const float *src, int ld_src, const float *w,
    const float *bias, int cin_g, int cout_g, int k, int stride, int dilation, int t_out,
    int t_in, float beta, size_t src_step, size_t dst_step)
{
  MOSHI_DYNAMIC_SHARED (float, smem);
  src += blockIdx.z * src_step;
  dst += blockIdx.z * dst_step;
  const int span = (TT - 1) * stride + (k - 1) * dilation + 1;
  float *xs = smem;                     /* [CI][span] */
  float *ws = smem + CI * span;         /* [TO][CI][k] */
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int tid = ty * TT + tx;
  const int t0 = blockIdx.x * TT;
  const int o0 = blockIdx.y * TO;       /* first output channel of the tile */
  const int g = o0 / cout_g;            /* the tile lies in one group */
  const float *x = src + (size_t) g * cin_g * ld_src;

  float acc[TO / 8];
  MOSHI_UNROLL
  for (int r = 0; r < TO / 8; r++)
    acc[r] = 0.0f;

  for (int c0 = 0; c0 < cin_g; c0 += CI) {
    for (int idx = tid; idx < CI * span; idx += TILE_THREADS) {
      const int c = idx / span, u = idx % span;
      const int tt = t0 * stride + u;
      xs[idx] = c0 + c < cin_g && tt < t_in ? x[(size_t) (c0 + c) * ld_src + tt] : 0.0f;
    }
    for (int idx = tid; idx < TO * CI * k; idx += TILE_THREADS) {
      const int o = idx / (CI * k), rem = idx % (CI * k);
      const int c = rem / k, j = rem % k;
      ws[idx] = c0 + c < cin_g ? w[((size_t) (o0 + o) * cin_g + c0 + c) * k + j] : 0.0f;
    }
    __syncthreads ();
    for (int c = 0; c < CI; c++) {
      const float *xr = xs + c * span + tx * stride;
      for (int j = 0; j < k; j++) {
        const float xv = xr[j * dilation];
        MOSHI_UNROLL
        for (int r = 0; r < TO / 8; r++)
          acc[r] += ws[((ty + 8 * r) * CI + c) * k + j] * xv;
      }
    }
    __syncthreads ();
  }

  const int t = t0 + tx;
  if (t >= t_out)
    return;
  MOSHI_UNROLL
  for (int r = 0; r < TO / 8; r++) {
    const int o = o0 + ty + 8 * r;
    float *y = dst + (size_t) o * ld_dst + t;
    const float prev = beta == 0.0f ? 0.0f : beta * *y;
    *y = prev + acc[r] + (bias ? bias[o] : 0.0f);
  }
}

__global__ void __launch_bounds__ (256)
conv1d_direct_kernel (float *dst, int ld_dst, const float *src, int ld_src, const float *w,
    const float *bias, int cin_g, int cout_g, int k, int stride, int dilation, int t_out,
    float beta, size_t src_step, size_t dst_step)
{
  src += blockIdx.z * src_step;
  dst += blockIdx.z * dst_step;
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  const int o = blockIdx.y;
  if (t >= t_out)
    return;
  const int g = o / cout_g;
  const float *x = src + (size_t) g * cin_g * ld_src + (size_t) t * stride;
  const float *wo = w + (size_t) o * cin_g * k;
  float acc = 0.0f;
  for (int i = 0; i < cin_g; i++)
    for (int j = 0; j < k; j++)
      acc += wo[i * k + j] * x[(size_t) i * ld_src + j * dilation];
  float *y = dst + (size_t) o * ld_dst + t;
  const float prev = beta == 0.0f ? 0.0f : beta * *y;
  *y = prev + acc + (bias ? bias[o] : 0.0f);
}

__global__ void __launch_bounds__ (128)
conv_transpose1d_kernel (float *dst, int ld_dst, const float *src, int ld_src, const float *w,
    const float *bias, const float *carry, float *carry_out, int cin_g, int cout_g, int k,
    int stride, int t_in, size_t src_step, size_t dst_step, size_t carry_step)
{
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  const int o = blockIdx.y;
  const int overlap = k - stride, emitted = t_in * stride;
  src += blockIdx.z * src_step;
  dst += blockIdx.z * dst_step;
  carry += blockIdx.z * carry_step;
  carry_out += (size_t) blockIdx.z * gridDim.y * overlap;
  if (n >= emitted + overlap)
    return;
  const int g = o / cout_g, ol = o % cout_g;
  /* steps t with 0 <= n - t * stride < k */
  int t_lo = n - k + 1 <= 0 ? 0 : (n - k + stride) / stride;
  int t_hi = n / stride;
  if (t_hi > t_in - 1)
    t_hi = t_in - 1;
  float acc = 0.0f;
  for (int i = 0; i < cin_g; i++) {
    const float *xi = src + (size_t) (g * cin_g + i) * ld_src;
    const float *wi = w + ((size_t) (g * cin_g + i) * cout_g + ol) * k;
    for (int t = t_lo; t <= t_hi; t++)
      acc += wi[n - t * stride] * xi[t];
  }
  if (n < overlap)
    acc += carry[(size_t) o * overlap + n];
  if (n < emitted)
    dst[(size_t) o * ld_dst + n] = acc + (bias ? bias[o] : 0.0f);
  else
    carry_out[(size_t) o * overlap + (n - emitted)] = acc;
}

}  // namespace

extern "C" cudaError_t
moshi_k_conv1d (cudaStream_t stream, float *dst, int ld_dst, const float *src, int ld_src,
    const float *w, const float *bias, int c_in, int c_out, int k, int stride, int dilation,
    int groups, int t_out, float beta, int n, size_t src_step, size_t dst_step)
{
  if (c_in <= 0 || c_out <= 0 || k <= 0 || stride <= 0 || dilation <= 0 || groups <= 0
      || c_in % groups || c_out % groups || t_out < 0 || ld_dst < t_out || c_out > 65535
      || n < 1 || n > 65535)
    return cudaErrorInvalidValue;
  if (t_out == 0)
    return cudaSuccess;
  const int t_in = (t_out - 1) * stride + (k - 1) * dilation + 1;
  if (ld_src < t_in)
    return cudaErrorInvalidValue;
  const int cin_g = c_in / groups, cout_g = c_out / groups;
  const int span = (TT - 1) * stride + (k - 1) * dilation + 1;
  const size_t smem = sizeof (float) * ((size_t) CI * span + (size_t) TO * CI * k);
  if (cout_g % TO == 0 && smem <= 48 * 1024) {
    dim3 grid (moshi_k::ceil_div ((size_t) t_out, TT), (unsigned) (c_out / TO), (unsigned) n);
    return MOSHI_LAUNCH (conv1d_tiled_kernel, grid, dim3 (TT, 8), smem, stream, dst, ld_dst,
        src, ld_src, w, bias, cin_g, cout_g, k, stride, dilation, t_out, t_in, beta, src_step,
        dst_step);
  }
  dim3 grid (moshi_k::ceil_div ((size_t) t_out, 256), (unsigned) c_out, (unsigned) n);
  return MOSHI_LAUNCH (conv1d_direct_kernel, grid, 256, 0, stream, dst, ld_dst, src, ld_src, w,
      bias, cin_g, cout_g, k, stride, dilation, t_out, beta, src_step, dst_step);
}

extern "C" cudaError_t
moshi_k_conv_transpose1d (cudaStream_t stream, float *dst, int ld_dst, const float *src,
    int ld_src, const float *w, const float *bias, float *carry, float *scratch, int c_in,
    int c_out, int k, int stride, int groups, int t_in, int n, size_t src_step, size_t dst_step,
    size_t carry_step)
{
  if (c_in <= 0 || c_out <= 0 || k <= 0 || stride <= 0 || k < stride || groups <= 0
      || c_in % groups || c_out % groups || t_in < 0 || ld_src < t_in
      || ld_dst < t_in * stride || c_out > 65535 || n < 1 || n > 65535)
    return cudaErrorInvalidValue;
  if (t_in == 0)
    return cudaSuccess;
  const int overlap = k - stride;
  const int cols = t_in * stride + overlap;
  dim3 grid (moshi_k::ceil_div ((size_t) cols, 128), (unsigned) c_out, (unsigned) n);
  cudaError_t err = MOSHI_LAUNCH (conv_transpose1d_kernel, grid, 128, 0, stream, dst, ld_dst,
      src, ld_src, w, bias, carry, scratch, c_in / groups, c_out / groups, k, stride, t_in,
      src_step, dst_step, carry_step);
  if (err != cudaSuccess || overlap == 0)
    return err;
  const size_t carry_bytes = sizeof (float) * (size_t) c_out * overlap;
  if (n == 1 || carry_step == (size_t) c_out * overlap)
    return cudaMemcpyAsync (carry, scratch, carry_bytes * n, cudaMemcpyDeviceToDevice, stream);
  return cudaMemcpy2DAsync (carry, carry_step * sizeof (float), scratch, carry_bytes,
      carry_bytes, n, cudaMemcpyDeviceToDevice, stream);
}
