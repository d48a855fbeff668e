/* gst-moshi CUDA kernels: data movement (2-D copy with leading dimensions, transpose). */
#include "common.cuh"

namespace {

const int THREADS = 256;
const int TILE = 32;
const int TILE_ROWS = 8;          /* a block of 32 x 8 threads moves a 32 x 32 tile */
const unsigned MAX_GRID_Y = 65535;

__global__ void __launch_bounds__ (THREADS)
copy_2d_kernel (float *dst, int ld_dst, const float *src, int ld_src, int rows, int cols)
{
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols)
    return;
  for (int r = blockIdx.y; r < rows; r += gridDim.y)
    dst[(size_t) r * ld_dst + c] = src[(size_t) r * ld_src + c];
}

/* dst[c, r] = src[r, c] through a padded shared tile: reads and writes both coalesced. */
__global__ void __launch_bounds__ (TILE * TILE_ROWS)
transpose_kernel (float *dst, int ld_dst, const float *src, int ld_src, int rows, int cols)
{
  __shared__ float tile[TILE][TILE + 1];
  const int c0 = blockIdx.x * TILE;
  const int tiles_r = (rows + TILE - 1) / TILE;
  for (int tr = blockIdx.y; tr < tiles_r; tr += gridDim.y) {
    const int r0 = tr * TILE;
    for (int i = threadIdx.y; i < TILE; i += TILE_ROWS) {
      const int r = r0 + i, c = c0 + threadIdx.x;
      if (r < rows && c < cols)
        tile[i][threadIdx.x] = src[(size_t) r * ld_src + c];
    }
    __syncthreads ();
    for (int i = threadIdx.y; i < TILE; i += TILE_ROWS) {
      const int c = c0 + i, r = r0 + threadIdx.x;
      if (r < rows && c < cols)
        dst[(size_t) c * ld_dst + r] = tile[threadIdx.x][i];
    }
    __syncthreads ();             /* the tile is refilled on the next pass */
  }
}

/* MOSHI_LAUNCH's counter (launch.h): per OS thread, since launches are issued by the thread
 * that calls the op. */
thread_local unsigned long long launches_issued = 0;

}  // namespace

extern "C" void
moshi_k_count_launch (void)
{
  launches_issued++;
}

extern "C" unsigned long long
moshi_k_launch_count (void)
{
  return launches_issued;
}

extern "C" cudaError_t
moshi_k_copy_2d (cudaStream_t stream, float *dst, int ld_dst, const float *src, int ld_src,
    int rows, int cols)
{
  if (rows < 0 || cols < 0 || (rows > 1 && (ld_dst < cols || ld_src < cols)))
    return cudaErrorInvalidValue;
  if (rows == 0 || cols == 0)
    return cudaSuccess;
  const dim3 grid (moshi_k::ceil_div ((size_t) cols, THREADS),
      rows < (int) MAX_GRID_Y ? (unsigned) rows : MAX_GRID_Y);
  return MOSHI_LAUNCH (copy_2d_kernel, grid, THREADS, 0, stream, dst, ld_dst, src, ld_src, rows,
      cols);
}

extern "C" cudaError_t
moshi_k_transpose (cudaStream_t stream, float *dst, int ld_dst, const float *src, int ld_src,
    int rows, int cols)
{
  if (rows < 0 || cols < 0 || (rows > 1 && ld_src < cols) || (cols > 1 && ld_dst < rows))
    return cudaErrorInvalidValue;
  if (rows == 0 || cols == 0)
    return cudaSuccess;
  const unsigned tiles_r = moshi_k::ceil_div ((size_t) rows, TILE);
  const dim3 grid (moshi_k::ceil_div ((size_t) cols, TILE),
      tiles_r < MAX_GRID_Y ? tiles_r : MAX_GRID_Y);
  return MOSHI_LAUNCH (transpose_kernel, grid, dim3 (TILE, TILE_ROWS), 0, stream, dst, ld_dst, src,
      ld_src, rows, cols);
}
