/* gst-moshi CUDA kernels: the ring KV cache and causal attention over it.
 *
 * Slot s of a cache with capacity C, after writes up to position end - 1, holds position
 * s + C * floor((end - 1 - s) / C); a query at q_pos sees it when 0 <= q_pos - k_pos < context
 * (the CPU op's rule, which also covers slots never written: they hold a negative position).
 *
 * attention_kernel: one block per (head, query[, chunk of slots]). The query is staged in
 * shared memory; each warp scores whole keys (its lanes read consecutive floats of a key row:
 * coalesced) and reduces the dot product with shuffles; the scores stay in shared memory for the
 * softmax (block max, exp, block sum) and for the weighted sum of values, where consecutive
 * threads read consecutive floats of a value row and groups of threads split the slots. For a
 * long cache and few (head, query) pairs -- one decode step -- the slots are split into chunks
 * over more blocks and a second kernel merges the chunks' partial softmaxes.
 *
 * The *_rows entry points run one decode step of many sequences in one launch: query row i takes
 * its cache, position and end from a device table (MoshiKRowCache), so that sessions are
 * batched and a recorded step replays with new positions. Their caches may hold BF16 or FP8
 * E4M3 with a scale per (position, head) (the kernels are templates over the cache element:
 * float, uint16_t BF16 bits, uint8_t FP8 codes), which halves or quarters what a decode step
 * reads; scores, softmax and sums stay f32. */
#include "common.cuh"

namespace {

const int ATT_THREADS = 128;

__device__ __forceinline__ float
cache_load (const float *p)
{
  return *p;
}

__device__ __forceinline__ float
cache_load (const uint16_t *p)
{
  return moshi_k::bf16_bits_to_float (*p);
}

__device__ __forceinline__ float
cache_load (const uint8_t *p)
{
  return moshi_k::e4m3_to_float (*p);
}

/* The layouts of lib/backend/moshi-backend.h (moshi_kv_slot_bytes): a slot is the width values
 * (float, BF16 bits or FP8 codes); FP8 slots then hold n_heads f32 scales after the codes,
 * padded to 4 bytes. */
template <typename T>
__device__ __forceinline__ size_t
slot_bytes (int n_heads, int head_dim)
{
  const size_t width = (size_t) n_heads * head_dim;
  return sizeof (T) == 1 ? ((width + 3) & ~(size_t) 3) + 4 * (size_t) n_heads : sizeof (T) * width;
}

template <typename T>
__device__ __forceinline__ float
head_scale (const unsigned char *slot, int n_heads, int head_dim, int h)
{
  if (sizeof (T) != 1)
    return 1.0f;
  const size_t width = (size_t) n_heads * head_dim;
  return reinterpret_cast<const float *> (slot + ((width + 3) & ~(size_t) 3))[h];
}

__device__ __forceinline__ void
cache_store_value (float *slot, int c, const float *, int, float v)
{
  slot[c] = v;
}

/* round to nearest even, as the CPU's moshi_f32_to_bf16; NaN stays a (quiet) NaN */
__device__ __forceinline__ void
cache_store_value (uint16_t *slot, int c, const float *, int, float v)
{
  unsigned u = __float_as_uint (v);
  if ((u & 0x7fffffffu) > 0x7f800000u)
    slot[c] = (uint16_t) ((u >> 16) | 0x40u);
  else
    slot[c] = (uint16_t) ((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* FP8: the code of v scaled by its head's amax / 448, as the CPU op computes it. Each thread
 * finds its head's amax itself (a head is at most a few hundred floats, in cache). */
__device__ __forceinline__ void
cache_store_value (uint8_t *slot, int c, const float *row, int head_dim, float v)
{
  const float *head = row + (c / head_dim) * head_dim;
  float amax = 0.0f;
  for (int d = 0; d < head_dim; d++)
    amax = fmaxf (amax, fabsf (head[d]));
  const float scale = amax / 448.0f;
  slot[c] = amax > 0.0f ? moshi_k::float_to_e4m3 (v / scale) : (uint8_t) 0;
}

template <typename T>
__global__ void __launch_bounds__ (256)
kv_write_kernel (T *k_cache, T *v_cache, int capacity, const float *k, int ld_k,
    const float *v, int ld_v, int n_heads, int head_dim, int pos0, int t,
    const MoshiKRowCache *rc, size_t layer_offset)
{
  const int width = n_heads * head_dim;
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= width)
    return;
  const size_t stride = slot_bytes<T> (n_heads, head_dim);
  /* when t > capacity the later rows own the slots: skip the rows they overwrite (rows of a
   * table go to their own caches and positions) */
  for (int i = blockIdx.y + (rc == nullptr && t > capacity ? t - capacity : 0); i < t;
      i += gridDim.y) {
    unsigned char *kc = reinterpret_cast<unsigned char *> (k_cache);
    unsigned char *vc = reinterpret_cast<unsigned char *> (v_cache);
    int pos = pos0 + i;
    if (rc != nullptr) {
      kc = static_cast<unsigned char *> (rc[i].k_cache) + layer_offset;
      vc = static_cast<unsigned char *> (rc[i].v_cache) + layer_offset;
      pos = rc[i].pos;
    }
    const size_t at = (size_t) (pos % capacity) * stride;
    const bool is_k = blockIdx.z == 0;
    unsigned char *slot = (is_k ? kc : vc) + at;
    const float *row = is_k ? k + (size_t) i * ld_k : v + (size_t) i * ld_v;
    cache_store_value (reinterpret_cast<T *> (slot), c, row, head_dim, row[c]);
    if (sizeof (T) == 1 && c % head_dim == 0) {
      float amax = 0.0f;
      for (int d = 0; d < head_dim; d++)
        amax = fmaxf (amax, fabsf (row[c + d]));
      reinterpret_cast<float *> (slot + ((width + 3) & ~3))[c / head_dim] = amax / 448.0f;
    }
  }
}

/* One block per (head, query, slot chunk). SPLIT = false: the chunk is the whole cache and the
 * block writes the normalised output. SPLIT = true: the block writes its chunk's max score,
 * sum of exponentials and unnormalised output to part[] and attention_combine_kernel merges
 * the chunks (so that a single decode step over a long cache keeps every SM busy). */
template <bool SPLIT, typename T>
__global__ void __launch_bounds__ (ATT_THREADS)
attention_kernel (float *dst, int ld_dst, const float *q, int ld_q, const T *k_cache,
    const T *v_cache, int capacity, int n_heads, int head_dim, int pos0, int end,
    int context, float scale, int chunk, float *part, const MoshiKRowCache *rc,
    size_t layer_offset)
{
  MOSHI_DYNAMIC_SHARED (float, smem);
  __shared__ float scratch[32];
  const int h = blockIdx.x, i = blockIdx.y;
  const int s_begin = SPLIT ? (int) blockIdx.z * chunk : 0;
  const int s_end = SPLIT && s_begin + chunk < capacity ? s_begin + chunk : capacity;
  const int n_slots = s_end - s_begin;
  int q_pos = pos0 + i;
  const unsigned char *k_base = reinterpret_cast<const unsigned char *> (k_cache);
  const unsigned char *v_base = reinterpret_cast<const unsigned char *> (v_cache);
  if (rc != nullptr) {          /* a row of a decode step: its own cache and position */
    k_base = static_cast<const unsigned char *> (rc[i].k_cache) + layer_offset;
    v_base = static_cast<const unsigned char *> (rc[i].v_cache) + layer_offset;
    q_pos = rc[i].pos;
    end = rc[i].end;
  }
  const size_t stride = slot_bytes<T> (n_heads, head_dim);
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
  /* shared: q [head_dim] | scores [n_slots] | partial outputs [blockDim.x] */
  float *q_s = smem;
  float *scores = q_s + head_dim;
  float *partial = scores + n_slots;

  for (int d = threadIdx.x; d < head_dim; d += blockDim.x)
    q_s[d] = q[(size_t) i * ld_q + (size_t) h * head_dim + d];
  __syncthreads ();


  for (int s = s_begin + warp; s < s_end; s += n_warps) {
    bool valid = s < end;
    if (valid) {
      const int k_pos = s + capacity * ((end - 1 - s) / capacity);
      const int delta = q_pos - k_pos;
      valid = delta >= 0 && delta < context;
    }
    if (!valid) {               /* uniform over the warp: s is */
      if (lane == 0)
        scores[s - s_begin] = -INFINITY;
      continue;
    }
    const unsigned char *slot = k_base + (size_t) s * stride;
    const T *key = reinterpret_cast<const T *> (slot) + (size_t) h * head_dim;
    float dot = 0.0f;
    for (int d = lane; d < head_dim; d += 32)
      dot += q_s[d] * cache_load (&key[d]);
    dot = moshi_k::warp_sum (dot);
    /* FP8: the head's scale multiplies the dot product, as on the CPU */
    if (lane == 0)
      scores[s - s_begin] = dot * head_scale<T> (slot, n_heads, head_dim, h) * scale;
  }
  __syncthreads ();

  float m = -INFINITY;
  for (int s = threadIdx.x; s < n_slots; s += blockDim.x)
    m = fmaxf (m, scores[s]);
  m = moshi_k::block_max (m, scratch);

  /* part[]: [n_heads * t * splits] maxima | as many sums | as many outputs of head_dim */
  const size_t n_parts = (size_t) gridDim.x * gridDim.y * gridDim.z;
  const size_t pi = ((size_t) i * gridDim.x + h) * gridDim.z + blockIdx.z;
  float *out = SPLIT ? part + 2 * n_parts + pi * head_dim
      : dst + (size_t) i * ld_dst + (size_t) h * head_dim;
  if (m == -INFINITY) {         /* no visible key: zeros (the CPU op's output) */
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x)
      out[d] = 0.0f;
    if (SPLIT && threadIdx.x == 0) {
      part[pi] = -INFINITY;
      part[n_parts + pi] = 0.0f;
    }
    return;
  }
  float sum = 0.0f;
  for (int s = threadIdx.x; s < n_slots; s += blockDim.x) {
    const float p = scores[s] == -INFINITY ? 0.0f : expf (scores[s] - m);
    scores[s] = p;
    sum += p;
  }
  sum = moshi_k::block_sum (sum, scratch);    /* its barriers also publish the p values */
  if (SPLIT && threadIdx.x == 0) {
    part[pi] = m;
    part[n_parts + pi] = sum;
  }

  /* Groups of `cols` threads split the slots; each thread of a group owns one dimension.
   * head_dim <= blockDim.x: one pass, blockDim.x / head_dim groups; else passes of blockDim.x
   * dimensions with one group. */
  const int cols = head_dim <= (int) blockDim.x ? head_dim : (int) blockDim.x;
  const int groups = head_dim <= (int) blockDim.x ? (int) blockDim.x / head_dim : 1;
  const int g = (int) threadIdx.x / cols, c = (int) threadIdx.x % cols;

  const float norm = SPLIT ? 1.0f : 1.0f / sum;
  for (int d0 = 0; d0 < head_dim; d0 += cols) {
    const int d = d0 + c;
    if (g < groups && d < head_dim) {
      float acc = 0.0f;
      for (int s = g; s < n_slots; s += groups) {
        const float p = scores[s];
        if (p != 0.0f) {        /* skips invalid slots, whose values may be anything */
          const unsigned char *slot = v_base + (size_t) (s_begin + s) * stride;
          const T *value = reinterpret_cast<const T *> (slot) + (size_t) h * head_dim;
          acc += p * head_scale<T> (slot, n_heads, head_dim, h) * cache_load (&value[d]);
        }
      }
      partial[g * cols + c] = acc;
    }
    __syncthreads ();
    if ((int) threadIdx.x < cols && d0 + (int) threadIdx.x < head_dim) {
      float o = 0.0f;
      for (int gg = 0; gg < groups; gg++)
        o += partial[gg * cols + threadIdx.x];
      out[d0 + threadIdx.x] = SPLIT ? o : o * norm;
    }
    __syncthreads ();
  }
}

/* Merges the chunks of one (head, query): out = sum_b e^(m_b - M) o_b / sum_b e^(m_b - M) l_b. */
__global__ void __launch_bounds__ (ATT_THREADS)
attention_combine_kernel (float *dst, int ld_dst, const float *part, int n_heads, int t,
    int head_dim, int splits)
{
  const int h = blockIdx.x, i = blockIdx.y;
  const size_t n_parts = (size_t) n_heads * t * splits;
  const size_t p0 = ((size_t) i * n_heads + h) * splits;
  float m = -INFINITY;
  for (int b = 0; b < splits; b++)
    m = fmaxf (m, part[p0 + b]);
  float *out = dst + (size_t) i * ld_dst + (size_t) h * head_dim;
  if (m == -INFINITY) {
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x)
      out[d] = 0.0f;
    return;
  }
  float sum = 0.0f;
  for (int b = 0; b < splits; b++)
    if (part[p0 + b] != -INFINITY)
      sum += part[n_parts + p0 + b] * expf (part[p0 + b] - m);
  const float norm = 1.0f / sum;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float o = 0.0f;
    for (int b = 0; b < splits; b++)
      if (part[p0 + b] != -INFINITY)
        o += part[2 * n_parts + (p0 + b) * head_dim + d] * expf (part[p0 + b] - m);
    out[d] = o * norm;
  }
}

/* Slots per chunk of the split path: long enough to amortise a block, short enough that a
 * decode step of a few heads becomes hundreds of blocks. */
const int SPLIT_CHUNK = 256;
const int MAX_SPLITS = 64;

int
attention_splits (int capacity, int n_heads, int t)
{
  if (capacity < 2 * SPLIT_CHUNK || (size_t) n_heads * t >= 512)
    return 1;
  int splits = (capacity + SPLIT_CHUNK - 1) / SPLIT_CHUNK;
  return splits > MAX_SPLITS ? MAX_SPLITS : splits;
}

}  // namespace

template <typename T>
static cudaError_t
kv_write (cudaStream_t stream, T *k_cache, T *v_cache, int capacity, const float *k,
    int ld_k, const float *v, int ld_v, int n_heads, int head_dim, int pos0, int t,
    const MoshiKRowCache *rc, size_t layer_offset)
{
  const int width = n_heads * head_dim;
  if (capacity <= 0 || t < 0 || n_heads < 0 || head_dim < 0 || pos0 < 0 || ld_k < width
      || ld_v < width)
    return cudaErrorInvalidValue;
  if (t == 0 || width == 0)
    return cudaSuccess;
  const int rows = rc != nullptr || t < capacity ? t : capacity;
  dim3 grid (moshi_k::ceil_div ((size_t) width, 256), rows < 65535 ? (unsigned) rows : 65535u, 2);
  return MOSHI_LAUNCH (kv_write_kernel<T>, grid, 256, 0, stream, k_cache, v_cache, capacity, k,
      ld_k, v, ld_v, n_heads, head_dim, pos0, t, rc, layer_offset);
}

extern "C" cudaError_t
moshi_k_kv_write (cudaStream_t stream, float *k_cache, float *v_cache, int capacity,
    const float *k, int ld_k, const float *v, int ld_v, int width, int pos0, int t)
{
  /* one head of the whole width: the float layout does not depend on the split */
  return kv_write (stream, k_cache, v_cache, capacity, k, ld_k, v, ld_v, 1, width, pos0, t,
      nullptr, 0);
}

extern "C" cudaError_t
moshi_k_kv_write_rows (cudaStream_t stream, const MoshiKRowCache *rc, MoshiKCache cache,
    size_t layer_offset, int capacity, const float *k, int ld_k, const float *v, int ld_v,
    int n_heads, int head_dim, int rows)
{
  if (rc == nullptr)
    return cudaErrorInvalidValue;
  switch (cache) {
    case MOSHI_K_CACHE_BF16:
      return kv_write<uint16_t> (stream, nullptr, nullptr, capacity, k, ld_k, v, ld_v, n_heads,
          head_dim, 0, rows, rc, layer_offset);
    case MOSHI_K_CACHE_FP8:
      return kv_write<uint8_t> (stream, nullptr, nullptr, capacity, k, ld_k, v, ld_v, n_heads,
          head_dim, 0, rows, rc, layer_offset);
    default:
      return kv_write<float> (stream, nullptr, nullptr, capacity, k, ld_k, v, ld_v, n_heads,
          head_dim, 0, rows, rc, layer_offset);
  }
}

extern "C" size_t
moshi_k_attention_scratch_floats (int capacity, int n_heads, int head_dim, int t)
{
  int splits = attention_splits (capacity, n_heads, t);
  return splits == 1 ? 0 : (size_t) n_heads * t * splits * (head_dim + 2);
}

template <typename T>
static cudaError_t
attention (cudaStream_t stream, float *dst, int ld_dst, const float *q, int ld_q,
    const T *k_cache, const T *v_cache, int capacity, int n_heads, int head_dim,
    int pos0, int t, int context, float scale, float *scratch, size_t scratch_floats,
    const MoshiKRowCache *rc, size_t layer_offset)
{
  if (capacity <= 0 || n_heads < 0 || head_dim < 0 || t < 0 || pos0 < 0 || t > 65535
      || n_heads > 0x7fffffff / 2 || ld_dst < n_heads * head_dim || ld_q < n_heads * head_dim)
    return cudaErrorInvalidValue;
  if (t == 0 || n_heads == 0 || head_dim == 0)
    return cudaSuccess;
  const int end = pos0 + t;
  const int splits = attention_splits (capacity, n_heads, t);
  const size_t need = moshi_k_attention_scratch_floats (capacity, n_heads, head_dim, t);
  if (splits > 1 && scratch != NULL && scratch_floats >= need) {
    const int chunk = (capacity + splits - 1) / splits;
    const size_t smem = sizeof (float) * ((size_t) head_dim + chunk + ATT_THREADS);
    if (smem > 48 * 1024)
      return cudaErrorInvalidValue;
    cudaError_t err = MOSHI_LAUNCH ((attention_kernel<true, T>),
        dim3 ((unsigned) n_heads, (unsigned) t, (unsigned) splits), ATT_THREADS, smem, stream,
        dst, ld_dst, q, ld_q, k_cache, v_cache, capacity, n_heads, head_dim, pos0, end, context,
        scale, chunk, scratch, rc, layer_offset);
    if (err != cudaSuccess)
      return err;
    return MOSHI_LAUNCH (attention_combine_kernel, dim3 ((unsigned) n_heads, (unsigned) t),
        ATT_THREADS, 0, stream, dst, ld_dst, (const float *) scratch, n_heads, t, head_dim,
        splits);
  }
  /* q, the scores, and the partial outputs (at most blockDim.x of them) */
  const size_t smem = sizeof (float) * ((size_t) head_dim + capacity + ATT_THREADS);
  if (smem > 48 * 1024)
    return cudaErrorInvalidValue;
  return MOSHI_LAUNCH ((attention_kernel<false, T>), dim3 ((unsigned) n_heads, (unsigned) t),
      ATT_THREADS, smem, stream, dst, ld_dst, q, ld_q, k_cache, v_cache, capacity, n_heads,
      head_dim, pos0, end, context, scale, capacity, (float *) NULL, rc, layer_offset);
}

extern "C" cudaError_t
moshi_k_attention (cudaStream_t stream, float *dst, int ld_dst, const float *q, int ld_q,
    const float *k_cache, const float *v_cache, int capacity, int n_heads, int head_dim,
    int pos0, int t, int context, float scale, float *scratch, size_t scratch_floats)
{
  return attention (stream, dst, ld_dst, q, ld_q, k_cache, v_cache, capacity, n_heads, head_dim,
      pos0, t, context, scale, scratch, scratch_floats, nullptr, 0);
}

extern "C" cudaError_t
moshi_k_attention_rows (cudaStream_t stream, float *dst, int ld_dst, const float *q, int ld_q,
    const MoshiKRowCache *rc, MoshiKCache cache, size_t layer_offset, int capacity, int n_heads,
    int head_dim, int rows, int context, float scale, float *scratch, size_t scratch_floats)
{
  if (rc == nullptr)
    return cudaErrorInvalidValue;
  switch (cache) {
    case MOSHI_K_CACHE_BF16:
      return attention<uint16_t> (stream, dst, ld_dst, q, ld_q, nullptr, nullptr, capacity,
          n_heads, head_dim, 0, rows, context, scale, scratch, scratch_floats, rc, layer_offset);
    case MOSHI_K_CACHE_FP8:
      return attention<uint8_t> (stream, dst, ld_dst, q, ld_q, nullptr, nullptr, capacity,
          n_heads, head_dim, 0, rows, context, scale, scratch, scratch_floats, rc, layer_offset);
    default:
      return attention<float> (stream, dst, ld_dst, q, ld_q, nullptr, nullptr, capacity,
          n_heads, head_dim, 0, rows, context, scale, scratch, scratch_floats, rc, layer_offset);
  }
}
