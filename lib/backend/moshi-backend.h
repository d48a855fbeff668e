/* gst-moshi: the backend op table.
 *
 * Models are written once against these ops; the CPU backend implements them on host memory, the
 * CUDA backend on device memory. A MoshiBackend is a device (shared, reference-counted); a
 * MoshiExec is an execution context on it (a CUDA stream, or the CPU thread pool), owned by one
 * session at a time, with its own scratch memory. Every pointer an op takes is a device pointer
 * of the exec's backend; activations are f32, row-major, with explicit leading dimensions.
 *
 * Layouts: convolution activations are channel-major [C, T] (row c holds T time steps, row
 * stride ld >= T); transformer activations are time-major [T, D]. */
#pragma once

#include <glib.h>
#include <stdint.h>

#include "moshi-api.h"
#include "moshi-device.h"
#include "moshi-dtype.h"
#include "moshi-safetensors.h"

G_BEGIN_DECLS

typedef struct _MoshiBackend MoshiBackend;

typedef enum {
  MOSHI_ACT_SILU,
  MOSHI_ACT_GELU,          /* exact erf form */
} MoshiActivation;
typedef struct _MoshiExec MoshiExec;
typedef struct _MoshiBackendOps MoshiBackendOps;
typedef struct _MoshiGraph MoshiGraph;

/* One row of a decode step over many sequences (the *_rows ops): where its sequence's KV cache
 * is and where the row sits in it. Lives in device memory (an array, one per row), so that a
 * recorded step (capture_begin below) can be replayed with new positions and caches. */
typedef struct {
  void *k_cache, *v_cache;      /* the sequence's cache of layer 0 (device; laid out as the op's
                                 * cache_dtype says: moshi_kv_slot_bytes) */
  int32_t pos;                  /* the row's position */
  int32_t end;                  /* one past the last position the step writes to the cache */
} MoshiRowCache;

/* Bytes of one slot (one position) of a KV cache of n_heads * head_dim values in dtype (F32,
 * BF16 or F8_E4M3, see kv_write_rows). */
static inline gsize
moshi_kv_slot_bytes (MoshiDType dtype, int n_heads, int head_dim)
{
  gsize width = (gsize) n_heads * head_dim;
  switch (dtype) {
    case MOSHI_DTYPE_BF16:
      return 2 * width;
    case MOSHI_DTYPE_F8_E4M3:
      return ((width + 3) & ~(gsize) 3) + 4 * (gsize) n_heads;
    default:
      return 4 * width;
  }
}

/* What the sample op draws for one session (device memory, one per session). */
typedef struct {
  float text_temperature;       /* <= 0: greedy */
  int32_t text_top_k;           /* <= 0: the whole vocabulary */
  float audio_temperature;
  int32_t audio_top_k;
  float cfg_coef;               /* 1: no classifier-free guidance */
  int32_t row;                  /* its logits row (the conditioned one with guidance) */
  int32_t n_rows;               /* rows of the session: 1, or 2 with guidance (row + 1 = null) */
  int32_t reserved;
  uint64_t seed;
  int64_t step;                 /* the session's step counter: with seed, the random draws */
} MoshiSampler;

/* A weight resident on a backend. data is a device pointer; on the CPU it may point straight
 * into a memory-mapped checkpoint. Matrices (2-D: linear weights, embedding tables) keep BF16
 * as stored; everything else is F32 on the device. */
typedef struct {
  MoshiDType dtype;
  int ndim;
  int64_t shape[MOSHI_MAX_DIMS];
  const void *data;
  void *owned;          /* backend allocation to release, or NULL for a borrowed view */
  /* I8 matrices (weight-only int8, linear only): w[o, i] = data[o, i] * scales[o] (device) */
  const float *scales;
} MoshiWeight;

/* The packed host image of an int8 matrix [n_out, n_in]: the codes (row-major), padded to 16
 * bytes, then n_out f32 scales. */
static inline gsize
moshi_int8_scales_offset (int64_t n_out, int64_t n_in)
{
  return ((gsize) n_out * (gsize) n_in + 15) & ~(gsize) 15;
}

/* What the ops of an exec have queued (get_stats / reset_stats below): the public counters. */
typedef MoshiDeviceStats MoshiExecStats;

struct _MoshiBackendOps {
  void (*destroy) (MoshiBackend *be);

  MoshiExec *(*exec_new) (MoshiBackend *be, int n_threads, GError **error);
  void (*exec_free) (MoshiExec *ex);

  /* Memory. alloc returns zero-filled memory. */
  void *(*alloc) (MoshiBackend *be, gsize bytes, GError **error);
  void (*free) (MoshiBackend *be, void *ptr);
  void (*upload) (MoshiExec *ex, void *dst, const void *host_src, gsize bytes);
  /* Copies and waits for it, as synchronize. */
  gboolean (*download) (MoshiExec *ex, void *host_dst, const void *src, gsize bytes,
      GError **error);
  void (*zero) (MoshiExec *ex, void *dst, gsize bytes);
  /* Waits for queued work (a no-op on the CPU). Ops queue work and return nothing: a device
   * fault, or an op the device refused, since the last wait comes back here as an error
   * (MOSHI_ERROR_DEVICE), and the results of that work are not to be used. */
  gboolean (*synchronize) (MoshiExec *ex, GError **error);
  /* Host memory the device copies from and to asynchronously (pinned on CUDA); zero-filled.
   * Only such memory may be the host side of copies in a recorded step. */
  void *(*host_alloc) (MoshiBackend *be, gsize bytes, GError **error);
  void (*host_free) (MoshiBackend *be, void *ptr);
  /* Queues a copy into host_dst (from host_alloc) and returns; synchronize before reading. */
  void (*download_async) (MoshiExec *ex, void *host_dst, const void *src, gsize bytes);
  /* Device memory free now and in all, and the device's name for messages ("CUDA device 0
   * (name)"). Optional: NULL where memory is the host's. An allocation that does not fit fails
   * with MOSHI_ERROR_NO_MEMORY, which is no fault: later calls work. */
  gboolean (*memory_info) (MoshiBackend *be, guint64 *free_bytes, guint64 *total_bytes,
      const char **device_name);

  /* ---- recorded steps (optional: NULL where a backend runs every op as it comes) ----
   * Between capture_begin and capture_end the ops of ex are recorded instead of run (no
   * synchronize, download or allocation in between); graph_launch replays them with the
   * arguments they had, reading host_alloc memory and device memory as it is at replay time.
   * capture_end fails (error set, NULL) when something in between could not be recorded. */
  gboolean (*capture_begin) (MoshiExec *ex, GError **error);
  MoshiGraph *(*capture_end) (MoshiExec *ex, GError **error);
  gboolean (*graph_launch) (MoshiExec *ex, MoshiGraph *graph, GError **error);
  void (*graph_free) (MoshiBackend *be, MoshiGraph *graph);

  /* Makes a device weight from a host tensor. keep_alive is the object that owns host memory
   * (the CPU backend may keep a view instead of a copy and then refs keep_alive). */
  gboolean (*weight_from_host) (MoshiBackend *be, MoshiWeight *w, const MoshiTensorEntry *host,
      MoshiSafetensors *keep_alive, GError **error);
  /* An I8 matrix [n_out, n_in] from its packed host image (moshi_int8_scales_offset); copied.
   * Only linear takes I8 weights. */
  gboolean (*weight_from_int8) (MoshiBackend *be, MoshiWeight *w, const void *packed,
      int64_t n_out, int64_t n_in, GError **error);
  /* A device weight from f32 host data the caller computed (always copied). */
  gboolean (*weight_from_f32) (MoshiBackend *be, MoshiWeight *w, const float *host, int ndim,
      const int64_t *shape, GError **error);
  void (*weight_release) (MoshiBackend *be, MoshiWeight *w);

  /* ---- data movement ---- */
  /* dst[r, c] = src[r, c] for rows x cols floats. Rows may overlap as memmove allows when
   * dst == src + k with k <= 0 within the same buffer (shifting history to the front). */
  void (*copy_2d) (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src,
      int rows, int cols);
  /* dst[c, r] = src[r, c] */
  void (*transpose) (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src,
      int rows, int cols);

  /* ---- elementwise ---- */
  /* dst = ELU(src) (alpha 1) over rows x cols; dst may equal src. */
  void (*elu_2d) (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src,
      int rows, int cols);
  /* x = GELU(x), exact erf form. */
  void (*gelu) (MoshiExec *ex, float *x, gsize n);
  /* x[t, d] += scale[d] * y[t, d]; scale may be NULL (plain add). */
  void (*add_scaled) (MoshiExec *ex, float *x, int ld_x, const float *y, int ld_y,
      const MoshiWeight *scale, int rows, int cols);

  /* dst[r, i] = act(src[r, i]) * src[r, hidden + i] (gated feed-forward). */
  void (*gated_act) (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src,
      MoshiActivation act, int rows, int hidden);

  /* ---- normalisation (time-major rows of width d) ---- */
  void (*layer_norm) (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src,
      const MoshiWeight *weight, const MoshiWeight *bias, float eps, int rows, int d);
  /* dst = src * alpha / sqrt(mean(src^2) + eps), in f32; alpha has d elements. */
  void (*rms_norm) (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src,
      const MoshiWeight *alpha, float eps, int rows, int d);

  /* ---- embeddings and positions ----
   * dst[r] = beta * dst[r] + table[ids[r]] for ids[r] >= 0; a negative id contributes zero
   * (upstream's zero token -1). table is [V, d] (F32 or BF16); ids is a device int32 array. */
  void (*embedding) (MoshiExec *ex, float *dst, int ld, const MoshiWeight *table,
      const int32_t *ids, int rows, float beta);
  /* x[r] += scale * [cos(p / max_period^(i / (d/2 - 1))), sin(...)] for p = pos0 + r: the
   * upstream sinusoidal embedding (halves concatenated, not interleaved). */
  void (*add_sin_embedding) (MoshiExec *ex, float *x, int ld, int rows, int d, int pos0,
      float max_period, float scale);

  /* ---- linear algebra ---- */
  /* dst[t, n] = beta * dst[t, n] + sum_k src[t, k] * w[n, k] (+ bias[n]).
   * w is [n_out, n_in] (any trailing dims of size 1 ignored), F32 or BF16 (f32 accumulation). */
  void (*linear) (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src,
      const MoshiWeight *w, const MoshiWeight *bias, int rows, float beta);

  /* ---- convolutions (channel-major) ----
   * Both run n independent streams through one weight at once (one product on the CPU, one
   * launch on CUDA): stream s reads src + s * src_step, writes dst + s * dst_step (and keeps its
   * carry at carry + s * carry_step), with the leading dimensions shared; n = 1 is one stream
   * (the steps are then unused). Streams laid side by side in one matrix (src_step = the input
   * columns of a stream, dst_step = its output columns) are the cheap case.
   *
   * Causal Conv1d: each stream's src holds the history and the new input, [c_in, (t_out - 1) *
   * stride + (k - 1) * dilation + 1] columns; dst[o, t] = beta * dst[o, t] + bias[o] + sum over
   * the group's inputs i and taps j of w[o, i, j] * src[i, t * stride + j * dilation].
   * w is [c_out, c_in / groups, k]. */
  void (*conv1d) (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src,
      const MoshiWeight *w, const MoshiWeight *bias, int stride, int dilation, int groups,
      int t_out, float beta, int n, gsize src_step, gsize dst_step);
  /* Streaming causal ConvTranspose1d with k - stride columns of carried overlap.
   * w is [c_in, c_out / groups, k]. Emits t_in * stride columns into each stream's dst, adds
   * the carry to the first columns and stores the new (bias-free) overlap in the stream's
   * carry [c_out, k - stride] (contiguous rows). */
  void (*conv_transpose1d) (MoshiExec *ex, float *dst, int ld_dst, const float *src, int ld_src,
      const MoshiWeight *w, const MoshiWeight *bias, float *carry, int stride, int groups,
      int t_in, int n, gsize src_step, gsize dst_step, gsize carry_step);

  /* ---- attention ----
   * Ring KV cache: k_cache and v_cache are [capacity, n_heads * head_dim]; the T new rows of k
   * and v (row strides ld_k, ld_v) are written at slots (pos0 + i) mod capacity. */
  void (*kv_write) (MoshiExec *ex, float *k_cache, float *v_cache, int capacity,
      const float *k, int ld_k, const float *v, int ld_v, int width, int pos0, int t);
  /* Interleaved RoPE in place on t rows of n_heads * head_dim (row stride ld); row i is at
   * position pos0 + i. */
  void (*rope) (MoshiExec *ex, float *x, int ld, int t, int n_heads, int head_dim, int pos0,
      float max_period);
  /* Causal attention of t queries (positions pos0 .. pos0 + t - 1) over the ring cache after
   * kv_write; end = pos0 + t. Key slot s holds position s + capacity * floor((end - 1 - s) /
   * capacity), valid when >= 0 and 0 <= q_pos - k_pos < context. dst is [t, n_heads *
   * head_dim]; scale multiplies q.k. */
  void (*attention) (MoshiExec *ex, float *dst, int ld_dst, const float *q, int ld_q,
      const float *k_cache, const float *v_cache, int capacity, int n_heads, int head_dim,
      int pos0, int t, int context, float scale);

  /* ---- one decode step over many sequences: row r of x belongs to the sequence rc[r] ----
   * The same as rope / add_sin_embedding / kv_write / attention with t = 1, pos0 = rc[r].pos
   * (and end = rc[r].end for the ring), for every row in one call; the caches of a layer are at
   * rc[r].k_cache + layer_offset BYTES. Rows of one sequence at consecutive positions must all
   * be written (kv_write_rows) before attention_rows. A cache is capacity slots of
   * moshi_kv_slot_bytes each, in cache_dtype: F32; BF16 (written rounded to nearest even); or
   * F8_E4M3 scaled per head: the slot's width codes (padded to 4 bytes), then n_heads f32
   * scales, each amax(head) / 448, codes = e4m3(value / scale) (0 when amax is 0). Reads are
   * exact; scores, softmax and sums stay f32. */
  void (*rope_rows) (MoshiExec *ex, float *x, int ld, int rows, int n_heads, int head_dim,
      const MoshiRowCache *rc, float max_period);
  void (*add_sin_embedding_rows) (MoshiExec *ex, float *x, int ld, int rows, int d,
      const MoshiRowCache *rc, float max_period, float scale);
  void (*kv_write_rows) (MoshiExec *ex, const MoshiRowCache *rc, MoshiDType cache_dtype,
      gsize layer_offset, int capacity, const float *k, int ld_k, const float *v, int ld_v,
      int n_heads, int head_dim, int rows);
  void (*attention_rows) (MoshiExec *ex, float *dst, int ld_dst, const float *q, int ld_q,
      const MoshiRowCache *rc, MoshiDType cache_dtype, gsize layer_offset, int capacity,
      int n_heads, int head_dim, int rows, int context, float scale);

  /* ---- sampling (lib/backend/moshi-sampling.h has the rule) ----
   * For each of n sessions: with guidance, logits[row] := null + cfg_coef * (logits[row] - null)
   * (null = logits[row + 1], rounded in that order), then a token drawn from logits[row]
   * (vocab entries, the text settings for stream 0, the audio ones otherwise) into
   * tokens[s * ld_tokens] and, when ids is not NULL, into ids[row .. row + n_rows). */
  void (*sample) (MoshiExec *ex, int32_t *tokens, int ld_tokens, int32_t *ids, float *logits,
      int ld_logits, int vocab, const MoshiSampler *sessions, int n, int stream);

  /* ---- residual vector quantisation ----
   * codebooks: [n_levels, bins, dim]; sq_norms: [n_levels, bins] (|e|^2).
   * rvq_encode: for each row x of residual [t, dim] (row stride ld), for each level l:
   *   codes[l * ld_codes + row] = argmin_j (|e_j|^2 - 2 x.e_j) (lowest j on ties), x -= e_code.
   * residual is consumed. codes is a device int32 buffer. */
  void (*rvq_encode) (MoshiExec *ex, int32_t *codes, int ld_codes, float *residual, int ld,
      const MoshiWeight *codebooks, const MoshiWeight *sq_norms, int n_levels, int t);
  /* dst[row] = sum over levels of codebooks[l, codes[l * ld_codes + row]]. */
  void (*rvq_decode) (MoshiExec *ex, float *dst, int ld, const int32_t *codes, int ld_codes,
      const MoshiWeight *codebooks, int n_levels, int t);

  /* ---- accounting (optional: NULL where a backend keeps none; the CPU has none) ----
   * get_stats: the counters of ex since its creation or its last reset_stats; with ex NULL, the
   * sum over every exec of be (including freed ones) since the last reset_stats (be, NULL).
   * reset_stats (be, ex) zeroes ex's counters; reset_stats (be, NULL) the backend's sum. */
  void (*get_stats) (MoshiBackend *be, MoshiExec *ex, MoshiExecStats *out);
  void (*reset_stats) (MoshiBackend *be, MoshiExec *ex);
};

struct _MoshiBackend {
  const MoshiBackendOps *ops;
  MoshiDevice device;
  const char *name;              /* "cpu", "cuda" */
  char *description;             /* e.g. "cpu (avx512, openblas)" */
  gint ref_count;
};

/* Products of at least this many rows may use tensor cores (MoshiExec.tensor_core_batches). */
#define MOSHI_TENSOR_CORE_MIN_ROWS 16

struct _MoshiExec {
  MoshiBackend *backend;
  /* FALSE (the default): linear computes in f32, as the conformance tests need. TRUE: a linear
   * on BF16 weights with at least MOSHI_TENSOR_CORE_MIN_ROWS rows may round its activations to
   * BF16 and multiply on tensor cores with f32 accumulation (the LM's batched decode steps; the
   * error is stated in tests/cuda/test-cuda-backend.c). Backends without them ignore it. */
  gboolean tensor_core_batches;
};

/* Opens a backend for device. MOSHI_DEVICE_AUTO picks CUDA when a GPU is usable and the CPU
 * otherwise (logging why). Backends are process-wide singletons per device. */
MoshiBackend *moshi_backend_open (MoshiDevice device, GError **error);
/* How many times moshi_backend_open has been called in this process (a debug counter). */
guint moshi_backend_open_count (void);
/* The backend in words: its description, else its name. */
char *moshi_backend_describe (const MoshiBackend *be);
/* When error is MOSHI_ERROR_NO_MEMORY (an allocation for what did not fit), replaces it with
 * the message an operator acts on: "not enough device memory for WHAT: needs N GB, M GB free
 * (DEVICE); FIX", needed being what the whole request asks. Other errors stay as they are. */
void moshi_backend_explain_no_memory (MoshiBackend *be, GError **error, const char *what,
    guint64 needed, const char *fix);
/* The device memory free now; FALSE where the backend cannot tell (the CPU's). */
gboolean moshi_backend_free_memory (MoshiBackend *be, guint64 *free_bytes);
/* Exported (MOSHI_API), like the two weight helpers below, for the CUDA module. */
MOSHI_API MoshiBackend *moshi_backend_ref (MoshiBackend *be);
MOSHI_API void moshi_backend_unref (MoshiBackend *be);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (MoshiBackend, moshi_backend_unref)

MoshiExec *moshi_exec_new (MoshiBackend *be, int n_threads, GError **error);
void moshi_exec_free (MoshiExec *ex);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (MoshiExec, moshi_exec_free)

/* The rule every backend follows for weights read from a checkpoint: F32 stays F32, BF16
 * matrices (2-D) stay BF16, other BF16 and F16 tensors become F32, anything else is an error
 * naming the tensor. Returns the device dtype, or MOSHI_DTYPE_COUNT with error set. */
MOSHI_API MoshiDType moshi_weight_device_dtype (const MoshiTensorEntry *host, GError **error);
/* host's elements as newly allocated F32 (g_free), or NULL with an out-of-memory error. */
MOSHI_API float *moshi_weight_to_f32 (const MoshiTensorEntry *host, GError **error);
/* Weight-only int8 of a 2-D host tensor (F32, BF16 or F16): per output row o, scale[o] =
 * max|w[o, :]| / 127 and codes round(w / scale) (to nearest, ties away from zero), as a device
 * weight of be. */
gboolean moshi_weight_int8_from_host (MoshiBackend *be, MoshiWeight *w,
    const MoshiTensorEntry *host, GError **error);

/* The CPU backend (always available). */
MoshiBackend *moshi_backend_cpu_new (void);

G_END_DECLS
