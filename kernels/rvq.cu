/* gst-moshi CUDA kernels: residual vector quantisation (nearest codeword search, decode).
 *
 * rvq_encode_kernel: one block per row, all levels in one launch. The residual lives in shared
 * memory; each warp scores whole codewords (lanes read consecutive floats of a codeword:
 * coalesced) and keeps its best (distance, index); the block then takes the lexicographic
 * minimum, so the lowest index wins ties as in the CPU op, subtracts the chosen codeword and
 * moves to the next level. */
#include "common.cuh"

namespace {

const int ENC_THREADS = 256;

/* (d, i) < (d2, i2) lexicographically */
__device__ __forceinline__ bool
better (float d, int i, float d2, int i2)
{
  return d < d2 || (d == d2 && i < i2);
}

__global__ void __launch_bounds__ (ENC_THREADS)
rvq_encode_kernel (int32_t *codes, int ld_codes, float *residual, int ld,
    const float *codebooks, const float *sq_norms, int n_levels, int bins, int dim)
{
  MOSHI_DYNAMIC_SHARED (float, x);
  __shared__ float best_d[32];
  __shared__ int best_i[32];
  __shared__ int chosen;
  const int row = blockIdx.x;
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
  float *res = residual + (size_t) row * ld;

  for (int k = threadIdx.x; k < dim; k += blockDim.x)
    x[k] = res[k];
  __syncthreads ();

  for (int l = 0; l < n_levels; l++) {
    const float *book = codebooks + (size_t) l * bins * dim;
    const float *norms = sq_norms + (size_t) l * bins;
    float bd = INFINITY;
    int bi = 0x7fffffff;
    for (int b = warp; b < bins; b += n_warps) {
      const float *e = book + (size_t) b * dim;
      float dot = 0.0f;
      for (int k = lane; k < dim; k += 32)
        dot += x[k] * e[k];
      dot = moshi_k::warp_sum (dot);
      const float dist = norms[b] - 2.0f * dot;
      if (dist < bd) {          /* b grows: a tie keeps the lower index */
        bd = dist;
        bi = b;
      }
    }
    if (lane == 0) {
      best_d[warp] = bd;
      best_i[warp] = bi;
    }
    __syncthreads ();
    if (warp == 0) {
      float d = lane < n_warps ? best_d[lane] : INFINITY;
      int i = lane < n_warps ? best_i[lane] : 0x7fffffff;
MOSHI_UNROLL
      for (int o = 16; o > 0; o >>= 1) {
        const float d2 = __shfl_xor_sync (MOSHI_FULL_MASK, d, o);
        const int i2 = __shfl_xor_sync (MOSHI_FULL_MASK, i, o);
        if (better (d2, i2, d, i)) {
          d = d2;
          i = i2;
        }
      }
      if (lane == 0) {
        /* every distance NaN (a NaN input): code 0, as the CPU op leaves it */
        chosen = i == 0x7fffffff ? 0 : i;
        codes[(size_t) l * ld_codes + row] = chosen;
      }
    }
    __syncthreads ();
    const float *e = book + (size_t) chosen * dim;
    for (int k = threadIdx.x; k < dim; k += blockDim.x)
      x[k] -= e[k];
    __syncthreads ();
  }
  for (int k = threadIdx.x; k < dim; k += blockDim.x)
    res[k] = x[k];
}

/* dst[row, k] = sum over levels of codebooks[l, code, k]: a thread per (row, k). */
__global__ void __launch_bounds__ (256)
rvq_decode_kernel (float *dst, int ld, const int32_t *codes, int ld_codes,
    const float *codebooks, int n_levels, int bins, int dim, int t)
{
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= dim)
    return;
  for (int row = blockIdx.y; row < t; row += gridDim.y) {
    float acc = 0.0f;
    for (int l = 0; l < n_levels; l++) {
      const int c = codes[(size_t) l * ld_codes + row];
      if (c >= 0 && c < bins)
        acc += codebooks[((size_t) l * bins + c) * dim + k];
    }
    dst[(size_t) row * ld + k] = acc;
  }
}

}  // namespace

extern "C" cudaError_t
moshi_k_rvq_encode (cudaStream_t stream, int32_t *codes, int ld_codes, float *residual, int ld,
    const float *codebooks, const float *sq_norms, int n_levels, int bins, int dim, int t)
{
  if (t < 0 || n_levels < 0 || bins <= 0 || dim < 0 || ld < dim || (n_levels > 1 && ld_codes < t)
      || (size_t) dim * sizeof (float) > 48 * 1024)
    return cudaErrorInvalidValue;
  if (t == 0 || n_levels == 0)
    return cudaSuccess;
  return MOSHI_LAUNCH (rvq_encode_kernel, (unsigned) t, ENC_THREADS, (size_t) dim * sizeof (float),
      stream, codes, ld_codes, residual, ld, codebooks, sq_norms, n_levels, bins, dim);
}

extern "C" cudaError_t
moshi_k_rvq_decode (cudaStream_t stream, float *dst, int ld, const int32_t *codes, int ld_codes,
    const float *codebooks, int n_levels, int bins, int dim, int t)
{
  if (t < 0 || n_levels < 0 || bins <= 0 || dim < 0 || ld < dim
      || (n_levels > 1 && ld_codes < t))
    return cudaErrorInvalidValue;
  if (t == 0 || dim == 0)
    return cudaSuccess;
  dim3 grid (moshi_k::ceil_div ((size_t) dim, 256), t < 65535 ? (unsigned) t : 65535u);
  return MOSHI_LAUNCH (rvq_decode_kernel, grid, 256, 0, stream, dst, ld, codes, ld_codes,
      codebooks, n_levels, bins, dim, t);
}
