/* gst-moshi CUDA kernels: the C ABI.
 *
 * One function per backend op (lib/backend/moshi-backend.h gives the exact semantics; each
 * function here computes the same thing on device memory). Every pointer is a device pointer;
 * activations are f32, row-major, with explicit leading dimensions (in elements). Each call
 * queues its kernel(s) on stream and returns the launch error (cudaSuccess when nothing was
 * queued because the problem is empty); cudaErrorInvalidValue for a shape the kernels do not
 * handle. Built with nvcc into the CUDA module, and as host C++ against the CPU emulator of the
 * runtime for the tests. Usable from C. */
#pragma once

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Element type of a weight table (values as MoshiDType's F32 and BF16). */
typedef enum {
  MOSHI_K_F32 = 0,
  MOSHI_K_BF16 = 1,
} MoshiKernelDType;

/* Gate activation (values as MoshiActivation). */
typedef enum {
  MOSHI_K_ACT_SILU = 0,
  MOSHI_K_ACT_GELU = 1,           /* exact erf form */
} MoshiKernelAct;

/* One row of a decode step over many sequences (the *_rows functions): the same layout as the
 * backend's MoshiRowCache. */
typedef struct {
  void *k_cache, *v_cache;        /* the sequence's layer-0 cache (float, or BF16 bits) */
  int32_t pos;                    /* the row's position */
  int32_t end;                    /* one past the last position written by the step */
} MoshiKRowCache;

/* Sampling settings of one session: the same layout as the backend's MoshiSampler. */
typedef struct {
  float text_temperature;
  int32_t text_top_k;
  float audio_temperature;
  int32_t audio_top_k;
  float cfg_coef;
  int32_t row;
  int32_t n_rows;
  int32_t reserved;
  uint64_t seed;
  int64_t step;
} MoshiKSampler;

/* Kernel launches (MOSHI_LAUNCH, kernels/launch.h) issued so far by the calling thread, over all
 * kernels of this library, successful or not. cuBLAS calls and memory copies are not launches
 * of this library and are not counted. */
unsigned long long moshi_k_launch_count (void);

/* ---- data movement ---- */

/* dst[r, c] = src[r, c]; the two ranges must not overlap (the backend stages an overlapping
 * shift through scratch). */
cudaError_t moshi_k_copy_2d (cudaStream_t stream, float *dst, int ld_dst, const float *src,
    int ld_src, int rows, int cols);
/* dst[c, r] = src[r, c] (32 x 32 tiles through shared memory); no overlap. */
cudaError_t moshi_k_transpose (cudaStream_t stream, float *dst, int ld_dst, const float *src,
    int ld_src, int rows, int cols);

/* ---- linear layers (F32 weights go to cublasSgemm) ---- */

#define MOSHI_K_GEMV_MAX_ROWS 64

/* BF16 weights w [n_out, n_in] (row stride n_in), 1..MOSHI_K_GEMV_MAX_ROWS rows of f32 input
 * (8 at a time; the weight row is re-read from cache for each further 8):
 * dst[r, n] = beta * dst[r, n] + sum_k src[r, k] * w[n, k] (+ bias[n]), f32 accumulation.
 * One warp per output feature; beta == 0 does not read dst; bias may be NULL. */
cudaError_t moshi_k_linear_bf16_gemv (cudaStream_t stream, float *dst, int ld_dst,
    const float *src, int ld_src, const uint16_t *w, int n_out, int n_in, const float *bias,
    int rows, float beta);
/* The same for weight-only int8 weights w [n_out, n_in] with a scale per output feature:
 * dst[r, n] = beta * dst[r, n] + scales[n] * sum_k src[r, k] * w[n, k] (+ bias[n]). */
cudaError_t moshi_k_linear_i8_gemv (cudaStream_t stream, float *dst, int ld_dst,
    const float *src, int ld_src, const int8_t *w, const float *scales, int n_out, int n_in,
    const float *bias, int rows, float beta);
/* dst[r, c] = w[r, c] * scales[r] for rows x cols int8 weights (row stride cols). */
cudaError_t moshi_k_i8_to_f32 (cudaStream_t stream, float *dst, const int8_t *w,
    const float *scales, int rows, int cols);
/* dst[r, c] = src[r, c] rounded to BF16 (to nearest even, as moshi_f32_to_bf16). */
cudaError_t moshi_k_f32_to_bf16_2d (cudaStream_t stream, uint16_t *dst, int ld_dst,
    const float *src, int ld_src, int rows, int cols);
/* dst[i] = src[i] as f32 (exact) for n BF16 values. */
cudaError_t moshi_k_bf16_to_f32 (cudaStream_t stream, float *dst, const uint16_t *src, size_t n);
/* x[r, c] += bias[c]. */
cudaError_t moshi_k_add_bias (cudaStream_t stream, float *x, int ld, const float *bias, int rows,
    int cols);

/* ---- elementwise ---- */

/* dst = ELU(src) (alpha 1) over rows x cols; dst may equal src. */
cudaError_t moshi_k_elu_2d (cudaStream_t stream, float *dst, int ld_dst, const float *src,
    int ld_src, int rows, int cols);
/* x = GELU(x), exact erf form. */
cudaError_t moshi_k_gelu (cudaStream_t stream, float *x, size_t n);
/* x[r, c] += scale[c] * y[r, c]; scale may be NULL (plain add). */
cudaError_t moshi_k_add_scaled (cudaStream_t stream, float *x, int ld_x, const float *y,
    int ld_y, const float *scale, int rows, int cols);
/* dst[r, i] = act(src[r, i]) * src[r, hidden + i]. */
cudaError_t moshi_k_gated_act (cudaStream_t stream, float *dst, int ld_dst, const float *src,
    int ld_src, MoshiKernelAct act, int rows, int hidden);

/* ---- normalisation: one block per row ---- */

/* weight and bias (d floats each) may be NULL. */
cudaError_t moshi_k_layer_norm (cudaStream_t stream, float *dst, int ld_dst, const float *src,
    int ld_src, const float *weight, const float *bias, float eps, int rows, int d);
/* dst = src * alpha / sqrt(mean(src^2) + eps). */
cudaError_t moshi_k_rms_norm (cudaStream_t stream, float *dst, int ld_dst, const float *src,
    int ld_src, const float *alpha, float eps, int rows, int d);

/* ---- embeddings and positions ---- */

/* dst[r] = beta * dst[r] + table[ids[r]]; a negative id (and, unlike the CPU op, which
 * asserts, an id >= vocab) contributes zero. table is [vocab, d] of dtype. beta == 0 does not
 * read dst. */
cudaError_t moshi_k_embedding (cudaStream_t stream, float *dst, int ld, const void *table,
    MoshiKernelDType dtype, int vocab, int d, const int32_t *ids, int rows, float beta);
/* x[r] += scale * [cos(phase), sin(phase)], phase = (pos0 + r) / max_period^(i / (d/2 - 1)). */
cudaError_t moshi_k_add_sin_embedding (cudaStream_t stream, float *x, int ld, int rows, int d,
    int pos0, float max_period, float scale);
/* Interleaved RoPE in place on t rows of n_heads * head_dim; row i at position pos0 + i. */
cudaError_t moshi_k_rope (cudaStream_t stream, float *x, int ld, int t, int n_heads,
    int head_dim, int pos0, float max_period);

/* The same for rows from a table: row r at position rc[r].pos. */
cudaError_t moshi_k_add_sin_embedding_rows (cudaStream_t stream, float *x, int ld, int rows,
    int d, const MoshiKRowCache *rc, float max_period, float scale);
cudaError_t moshi_k_rope_rows (cudaStream_t stream, float *x, int ld, int rows, int n_heads,
    int head_dim, const MoshiKRowCache *rc, float max_period);

/* ---- attention over a ring KV cache ---- */

/* Writes the t new rows of k and v at slots (pos0 + i) mod capacity (a later row wins when
 * t > capacity). */
cudaError_t moshi_k_kv_write (cudaStream_t stream, float *k_cache, float *v_cache, int capacity,
    const float *k, int ld_k, const float *v, int ld_v, int width, int pos0, int t);
/* Causal attention of t queries at positions pos0.. over the ring cache; see the backend op.
 * One block per (query, head); with scratch of at least moshi_k_attention_scratch_floats()
 * floats (0 when it would not help), a long cache is split over more blocks and merged by a
 * second kernel. Without the split, the scores of a query live in shared memory, which limits
 * capacity to about 12000 slots. */
cudaError_t moshi_k_attention (cudaStream_t stream, float *dst, int ld_dst, const float *q,
    int ld_q, const float *k_cache, const float *v_cache, int capacity, int n_heads,
    int head_dim, int pos0, int t, int context, float scale, float *scratch,
    size_t scratch_floats);
size_t moshi_k_attention_scratch_floats (int capacity, int n_heads, int head_dim, int t);
/* The element of a decode step's caches (the layouts of the backend's kv_write_rows). */
typedef enum {
  MOSHI_K_CACHE_F32 = 0,
  MOSHI_K_CACHE_BF16 = 1,
  MOSHI_K_CACHE_FP8 = 2,          /* E4M3 codes, then an f32 scale per head */
} MoshiKCache;

/* One decode step of many sequences, each launch covering every row: row r is written to slot
 * rc[r].pos mod capacity of the cache at rc[r].k_cache/v_cache + layer_offset BYTES, and
 * attends over that cache with q_pos = rc[r].pos and end = rc[r].end. Scratch as above with
 * t = rows. */
cudaError_t moshi_k_kv_write_rows (cudaStream_t stream, const MoshiKRowCache *rc,
    MoshiKCache cache, size_t layer_offset, int capacity, const float *k, int ld_k,
    const float *v, int ld_v, int n_heads, int head_dim, int rows);
cudaError_t moshi_k_attention_rows (cudaStream_t stream, float *dst, int ld_dst, const float *q,
    int ld_q, const MoshiKRowCache *rc, MoshiKCache cache, size_t layer_offset, int capacity,
    int n_heads, int head_dim, int rows, int context, float scale, float *scratch,
    size_t scratch_floats);

/* ---- sampling (the rule of lib/backend/moshi-sampling.h) ---- */

/* One block per session: classifier-free guidance combined in place into logits[row] when
 * n_rows is 2, then the token of stream (0: text settings, else audio) into
 * tokens[s * ld_tokens] and, when ids is not NULL, ids[row .. row + n_rows). */
cudaError_t moshi_k_sample (cudaStream_t stream, int32_t *tokens, int ld_tokens, int32_t *ids,
    float *logits, int ld_logits, int vocab, const MoshiKSampler *sessions, int n,
    int stream_index);

/* ---- convolutions (channel-major rows) ---- */

/* Causal Conv1d: src [c_in, (t_out - 1) * stride + (k - 1) * dilation + 1] (history and new
 * input), w [c_out, c_in / groups, k] F32, bias [c_out] or NULL;
 * dst[o, t] = beta * dst[o, t] + sum_{i, j} w[o, i, j] src[g * c_in/groups + i, t * stride +
 * j * dilation] + bias[o]. beta == 0 does not read dst. n streams (n <= 65535) through the same
 * weight in one launch: stream s reads src + s * src_step and writes dst + s * dst_step. */
cudaError_t moshi_k_conv1d (cudaStream_t stream, float *dst, int ld_dst, const float *src,
    int ld_src, const float *w, const float *bias, int c_in, int c_out, int k, int stride,
    int dilation, int groups, int t_out, float beta, int n, size_t src_step, size_t dst_step);
/* Streaming causal ConvTranspose1d: w [c_in, c_out / groups, k] F32; emits t_in * stride
 * columns into dst, adds carry [c_out, k - stride] (the overlap of the previous call) to the first
 * ones and replaces carry with the new bias-free overlap. scratch holds c_out * (k - stride)
 * floats of device memory per stream (the new overlap before it is copied over carry). n
 * streams (n <= 65535) in one launch: stream s reads src + s * src_step and writes dst + s *
 * dst_step and its carry at carry + s * carry_step. */
cudaError_t moshi_k_conv_transpose1d (cudaStream_t stream, float *dst, int ld_dst,
    const float *src, int ld_src, const float *w, const float *bias, float *carry, float *scratch,
    int c_in, int c_out, int k, int stride, int groups, int t_in, int n, size_t src_step,
    size_t dst_step, size_t carry_step);

/* ---- residual vector quantisation ---- */

/* codebooks [n_levels, bins, dim], sq_norms [n_levels, bins]; for each row of residual [t, dim]
 * and each level: codes[l * ld_codes + row] = argmin_j |e_j|^2 - 2 x.e_j (lowest j on ties),
 * x -= e_code. residual is consumed. */
cudaError_t moshi_k_rvq_encode (cudaStream_t stream, int32_t *codes, int ld_codes,
    float *residual, int ld, const float *codebooks, const float *sq_norms, int n_levels,
    int bins, int dim, int t);
/* dst[row] = sum over levels of codebooks[l, codes[l * ld_codes + row]]; a code outside
 * [0, bins) contributes zero. */
cudaError_t moshi_k_rvq_decode (cudaStream_t stream, float *dst, int ld, const int32_t *codes,
    int ld_codes, const float *codebooks, int n_levels, int bins, int dim, int t);

#ifdef __cplusplus
}
#endif
