/* gst-moshi: an LM of random weights for a config (benchmarks, tests), and a config's
 * footprint, from the same list of tensors. */
#include "lm-internal.h"

#include "moshi-error.h"
#include "moshi-safetensors.h"

#include <math.h>
#include <stdarg.h>
#include <string.h>

/* ================================================================ random weights */

typedef struct {
  char *name;
  int ndim;
  int64_t shape[3];
  float fill;                   /* 0: random; else every element this value (norm weights) */
  gboolean zero;                /* biases */
} RandomTensor;

static void
random_add (GArray *a, float fill, gboolean zero, int ndim, int64_t d0, int64_t d1, int64_t d2,
    const char *fmt, ...) G_GNUC_PRINTF (8, 9);

static void
random_add (GArray *a, float fill, gboolean zero, int ndim, int64_t d0, int64_t d1, int64_t d2,
    const char *fmt, ...)
{
  va_list args;
  va_start (args, fmt);
  RandomTensor t = { g_strdup_vprintf (fmt, args), ndim, { d0, d1, d2 }, fill, zero };
  va_end (args);
  g_array_append_val (a, t);
}

static void
random_norm (GArray *a, MoshiNormKind kind, int d, const char *prefix)
{
  if (kind == MOSHI_NORM_RMS_NORM || kind == MOSHI_NORM_RMS_NORM_F32) {
    random_add (a, 1.0f, FALSE, 3, 1, 1, d, "%s.alpha", prefix);
  } else {
    random_add (a, 1.0f, FALSE, 1, d, 0, 0, "%s.weight", prefix);
    random_add (a, 0.0f, TRUE, 1, d, 0, 0, "%s.bias", prefix);
  }
}

/* The tensors load_model reads, in its names (fused attention projections). */
static void
random_transformer (GArray *a, const MoshiTransformerConfig *cfg, const char *name)
{
  int d = cfg->d_model;
  int sets = cfg->n_weight_sets;
  for (int l = 0; l < cfg->num_layers; l++) {
    g_autofree char *p = g_strdup_printf ("%s.layers.%d", name, l);
    random_add (a, 0, FALSE, 2, (int64_t) sets * 3 * d, d, 0, "%s.self_attn.in_proj_weight", p);
    random_add (a, 0, FALSE, 2, (int64_t) sets * d, d, 0, "%s.self_attn.out_proj.weight", p);
    if (cfg->gating == MOSHI_GATING_NONE) {
      random_add (a, 0, FALSE, 2, cfg->dim_feedforward, d, 0, "%s.linear1.weight", p);
      random_add (a, 0, FALSE, 2, d, cfg->dim_feedforward, 0, "%s.linear2.weight", p);
    } else {
      int hidden = cfg->dim_feedforward == 4 * d ? 21 * d / 8 : 2 * cfg->dim_feedforward / 3;
      for (int s = 0; s < (cfg->weights_per_step ? sets : 1); s++) {
        g_autofree char *base = cfg->weights_per_step ? g_strdup_printf ("%s.gating.%d", p, s)
            : g_strdup_printf ("%s.gating", p);
        random_add (a, 0, FALSE, 2, 2 * hidden, d, 0, "%s.linear_in.weight", base);
        random_add (a, 0, FALSE, 2, d, hidden, 0, "%s.linear_out.weight", base);
      }
    }
    g_autofree char *n1 = g_strdup_printf ("%s.norm1", p);
    g_autofree char *n2 = g_strdup_printf ("%s.norm2", p);
    random_norm (a, cfg->norm, d, n1);
    random_norm (a, cfg->norm, d, n2);
    if (cfg->layer_scale) {
      random_add (a, 0.1f, FALSE, 1, d, 0, 0, "%s.layer_scale_1.scale", p);
      random_add (a, 0.1f, FALSE, 1, d, 0, 0, "%s.layer_scale_2.scale", p);
    }
  }
}

static void
random_embedding (GArray *a, int64_t vocab, int d, int low_rank, const char *prefix)
{
  random_add (a, 0, FALSE, 2, vocab, low_rank ? low_rank : d, 0, "%s.weight", prefix);
  if (low_rank)
    random_add (a, 0, FALSE, 2, d, low_rank, 0, "%s.low_rank.weight", prefix);
}

static GArray *
random_tensors (const MoshiLmConfig *cfg)
{
  GArray *a = g_array_new (FALSE, FALSE, sizeof (RandomTensor));
  int d = cfg->dim;
  for (int j = 0; j < cfg->n_q; j++) {
    g_autofree char *p = g_strdup_printf ("emb.%d", j);
    random_embedding (a, cfg->card + 1, d, 0, p);
  }
  random_embedding (a, cfg->text_card + 1, d, 0, "text_emb");
  random_transformer (a, &cfg->transformer, "transformer");
  random_norm (a, cfg->transformer.norm, d, "out_norm");
  random_add (a, 0, FALSE, 2, cfg->text_card_out, d, 0, "text_linear.weight");
  if (cfg->dep_q == 0)
    return a;
  int dd = cfg->depformer_dim;
  int n_in = cfg->depformer_multi_linear ? cfg->depformer.n_weight_sets : 1;
  if (cfg->depformer_multi_linear && !cfg->depformer.weights_per_step)
    n_in = cfg->dep_q;
  for (int i = 0; i < n_in; i++)
    random_add (a, 0, FALSE, 2, dd, d, 0, "depformer_in.%d.weight", i);
  random_embedding (a, cfg->text_card + 1, dd, cfg->depformer_low_rank, "depformer_text_emb");
  for (int k = 0; k < cfg->dep_q - 1; k++) {
    g_autofree char *p = g_strdup_printf ("depformer_emb.%d", k);
    random_embedding (a, cfg->card + 1, dd, cfg->depformer_low_rank, p);
  }
  random_transformer (a, &cfg->depformer, "depformer");
  for (int k = 0; k < cfg->dep_q; k++) {
    random_add (a, 0, FALSE, 2, cfg->card, dd, 0, "linears.%d.weight", k);
    if (cfg->has_depformer_norm) {
      g_autofree char *p = g_strdup_printf ("depformer_norms.%d", k);
      random_norm (a, cfg->depformer_norm, dd, p);
    }
  }
  return a;
}

static inline uint64_t
random_next (uint64_t *state)
{
  uint64_t x = *state;          /* xorshift64* */
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *state = x;
  return x * 0x2545F4914F6CDD1Dull;
}

/* splitmix64's finaliser: decorrelates the seeds of neighbouring chunks */
static inline uint64_t
random_mix (uint64_t x)
{
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/* The 7B image is 7.7 G values: one xorshift stream on one core takes most of a minute, time a
 * benchmark on a lent GPU machine cannot spare. So the values come in fixed chunks, each from a
 * stream seeded by (seed, tensor, chunk), and threads take chunks as they come: the image is the
 * same for a seed whatever the number of threads, and each thread first-touches the pages it
 * fills. */
#define RANDOM_CHUNK_VALUES (1 << 20)

typedef struct {
  const RandomTensor *tensor;
  guint tensor_index;
  int64_t first, count;         /* values of the tensor */
  guint8 *dst;                  /* the first value's bytes in the image */
} RandomChunk;

typedef struct {
  GArray *chunks;               /* RandomChunk */
  MoshiDType dtype;
  guint64 seed;
  gint next;                    /* the next chunk to take, atomically */
} RandomFill;

static void
random_fill_chunk (const RandomFill *fill, const RandomChunk *c)
{
  const RandomTensor *t = c->tensor;
  float amp = t->ndim == 2 ? 1.0f / sqrtf ((float) t->shape[1]) : 0.0f;
  uint64_t state = random_mix (fill->seed ^ random_mix (((uint64_t) c->tensor_index << 32)
          ^ (uint64_t) (c->first / RANDOM_CHUNK_VALUES)));
  if (state == 0)               /* xorshift's one absorbing state */
    state = 1;
  guint8 *p = c->dst;
  for (int64_t k = 0; k < c->count; k++) {
    float v = t->zero ? 0.0f : t->fill != 0.0f ? t->fill
        : amp * ((float) (random_next (&state) >> 40) * (2.0f / 16777216.0f) - 1.0f);
    if (fill->dtype == MOSHI_DTYPE_BF16) {
      guint32 bits;
      memcpy (&bits, &v, 4);
      guint16 h = GUINT16_TO_LE ((guint16) (bits >> 16));
      memcpy (p, &h, 2);
      p += 2;
    } else {
      memcpy (p, &v, 4);
      p += 4;
    }
  }
}

static gpointer
random_fill_worker (gpointer data)
{
  RandomFill *fill = data;
  for (;;) {
    guint i = (guint) g_atomic_int_add (&fill->next, 1);
    if (i >= fill->chunks->len)
      return NULL;
    random_fill_chunk (fill, &g_array_index (fill->chunks, RandomChunk, i));
  }
}

static void
random_fill (RandomFill *fill, guint threads)
{
  if (threads == 0)
    threads = (guint) g_get_num_processors ();
  threads = MAX (1u, MIN (threads, MIN (fill->chunks->len, 64u)));
  GThread *workers[64];
  guint started = 0;
  for (guint i = 1; i < threads; i++) {
    /* a thread that cannot start leaves its chunks to the others */
    workers[started] = g_thread_try_new ("moshi-random", random_fill_worker, fill, NULL);
    if (workers[started] != NULL)
      started++;
  }
  random_fill_worker (fill);
  for (guint i = 0; i < started; i++)
    g_thread_join (workers[i]);
}

GBytes *
moshi_lm_random_image (const MoshiLmConfig *cfg, MoshiDType dtype, guint64 seed, guint threads)
{
  g_autoptr (GArray) tensors = random_tensors (cfg);
  gsize esize = moshi_dtype_size (dtype);
  GString *header = g_string_new ("{");
  guint64 offset = 0;
  for (guint i = 0; i < tensors->len; i++) {
    RandomTensor *t = &g_array_index (tensors, RandomTensor, i);
    guint64 bytes = (guint64) moshi_shape_numel (t->shape, t->ndim) * esize;
    g_string_append_printf (header, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", i ? "," : "",
        t->name, moshi_dtype_name (dtype));
    for (int k = 0; k < t->ndim; k++)
      g_string_append_printf (header, "%s%" G_GINT64_FORMAT, k ? "," : "", t->shape[k]);
    g_string_append_printf (header, "],\"data_offsets\":[%" G_GUINT64_FORMAT ",%" G_GUINT64_FORMAT
        "]}", offset, offset + bytes);
    offset += bytes;
  }
  g_string_append (header, "}");
  while ((header->len + 8) % 64 != 0)      /* spaces are JSON whitespace */
    g_string_append_c (header, ' ');
  gsize total = 8 + header->len + offset;
  guint8 *buf = g_malloc (total);
  guint64 hlen = GUINT64_TO_LE ((guint64) header->len);
  memcpy (buf, &hlen, 8);
  memcpy (buf + 8, header->str, header->len);

  RandomFill fill = { g_array_new (FALSE, FALSE, sizeof (RandomChunk)), dtype, seed, 0 };
  guint8 *p = buf + 8 + header->len;
  for (guint i = 0; i < tensors->len; i++) {
    const RandomTensor *t = &g_array_index (tensors, RandomTensor, i);
    int64_t n = moshi_shape_numel (t->shape, t->ndim);
    for (int64_t first = 0; first < n; first += RANDOM_CHUNK_VALUES) {
      RandomChunk c = { t, i, first, MIN (n - first, (int64_t) RANDOM_CHUNK_VALUES),
        p + (gsize) first * esize };
      g_array_append_val (fill.chunks, c);
    }
    p += (gsize) n * esize;
  }
  random_fill (&fill, threads);
  g_array_unref (fill.chunks);
  for (guint i = 0; i < tensors->len; i++)
    g_free (g_array_index (tensors, RandomTensor, i).name);
  g_string_free (header, TRUE);
  return g_bytes_new_take (buf, total);
}

MoshiLm *
moshi_lm_new_random (const MoshiLmConfig *cfg, MoshiDType dtype, guint64 seed,
    MoshiDevice device, GError **error)
{
  MoshiLmLoadOptions options = { .device = device };
  return moshi_lm_new_random_full (cfg, dtype, seed, &options, error);
}

MoshiLm *
moshi_lm_new_random_full (const MoshiLmConfig *cfg, MoshiDType dtype, guint64 seed,
    const MoshiLmLoadOptions *options, GError **error)
{
  g_return_val_if_fail (cfg != NULL, NULL);
  if (dtype != MOSHI_DTYPE_BF16 && dtype != MOSHI_DTYPE_F32) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
        "random LM weights are BF16 or F32, not %s", moshi_dtype_name (dtype));
    return NULL;
  }
  MoshiLm *lm = g_new0 (MoshiLm, 1);
  lm->ref_count = 1;
  lm->path = g_strdup_printf ("random %s weights (seed %" G_GUINT64_FORMAT ")",
      moshi_dtype_name (dtype), seed);
  lm->cfg = *cfg;
  MoshiBackend *be = NULL;
  if (!lm_check_config (&lm->cfg, lm->path, error))
    goto fail;
  /* the device before the weights: without one, gigabytes of them would be made for nothing */
  be = moshi_backend_open (options ? options->device : MOSHI_DEVICE_AUTO, error);
  if (be == NULL)
    goto fail;
  GBytes *image = moshi_lm_random_image (cfg, dtype, seed, 0);
  lm->st = moshi_safetensors_new_from_bytes (image, lm->path, error);
  g_bytes_unref (image);
  if (lm->st == NULL)
    goto fail;
  MoshiLm *loaded = lm_finish_load (lm, be, options, error);
  moshi_backend_unref (be);
  return loaded;

fail:
  if (be)
    moshi_backend_unref (be);
  lm_free (lm);
  return NULL;
}
/* ================================================================ footprint */

void
moshi_lm_config_footprint (const MoshiLmConfig *cfg, MoshiDType weight_dtype, MoshiDType kv_dtype,
    MoshiLmFootprint *fp)
{
  memset (fp, 0, sizeof (*fp));
  /* int8: the linear matrices quantized (a byte a weight and an f32 scale a row), the
   * embedding tables as stored (BF16) */
  gboolean int8 = weight_dtype == MOSHI_DTYPE_I8;
  gsize wsize = moshi_dtype_size (int8 ? MOSHI_DTYPE_BF16 : weight_dtype);
  GArray *tensors = random_tensors (cfg);
  for (guint i = 0; i < tensors->len; i++) {
    RandomTensor *t = &g_array_index (tensors, RandomTensor, i);
    guint64 n = 1;
    for (int k = 0; k < t->ndim; k++)
      n *= (guint64) t->shape[k];
    /* matrices keep the checkpoint's dtype on the device, the rest is f32 */
    gboolean matrix = t->ndim == 2;
    /* a step gathers a few rows of each embedding table and reads every other matrix */
    gboolean table = strstr (t->name, "emb") != NULL && !g_str_has_suffix (t->name, "low_rank.weight");
    guint64 bytes = !matrix ? n * 4 : int8 && !table ? n + (guint64) t->shape[0] * 4 : n * wsize;
    fp->weight_bytes += bytes;
    if (matrix && !table) {
      fp->weight_bytes_per_step += bytes;
      fp->flops_per_step += 2 * n;
    }
    g_free (t->name);
  }
  g_array_free (tensors, TRUE);

  const MoshiTransformerConfig *tr = &cfg->transformer;
  int context = tr->context > 0 ? tr->context : 0;
  fp->kv_bytes = (guint64) tr->num_layers * context * 2
      * moshi_kv_slot_bytes (kv_dtype, tr->num_heads, tr->d_model / MAX (tr->num_heads, 1));
  /* attention at a full cache: q.k and p.v over every position of every layer */
  fp->flops_per_step += (guint64) 4 * tr->num_layers * context * cfg->dim;
  fp->kv_bytes_per_step = fp->kv_bytes;

  /* one batch row: the runner's activations (moshi_lm_batch_new) and its depth caches */
  int width = MAX (cfg->dim, cfg->dep_q > 0 ? cfg->depformer_dim : 0);
  int hidden = MAX (tr->dim_feedforward, cfg->dep_q > 0 ? cfg->depformer.dim_feedforward : 0);
  int logits = MAX (cfg->text_card_out, cfg->card);
  guint64 row_floats = (guint64) width * 7 + (guint64) MAX (hidden, 1) * 2 + cfg->dim
      + MAX (cfg->depformer_low_rank, 1) + logits + moshi_lm_config_num_streams (cfg)
      + (guint64) (cfg->dep_q > 0 ? cfg->depformer.num_layers * cfg->dep_q * cfg->depformer_dim * 2 : 0);
  fp->scratch_bytes = row_floats * 4;
}
