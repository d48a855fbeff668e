/* gst-moshi: the Moshi LM on the backend op table (see moshi-lm.h and spec/lm.md). */
#include "moshi-lm.h"

#include "moshi-backend.h"
#include "model-load.h"
#include "moshi-error.h"
#include "moshi-registry.h"
#include "moshi-safetensors.h"

#include <stdarg.h>
#include <math.h>
#include <string.h>

/* ================================================================ model */

typedef struct {
  MoshiWeight *in_proj, *out_proj;      /* per weight set: [3d, d], [d, d] */
  MoshiWeight *ffn_in, *ffn_out;        /* per weight set: gating [2h, d], [d, h]; or linear1/2 */
  int *ffn_hidden;
  MoshiWeight norm1_w, norm1_b, norm2_w, norm2_b;
  MoshiWeight scale1, scale2;
} LmLayer;

typedef struct {
  const MoshiTransformerConfig *cfg;
  int n_layers;
  int n_sets;
  LmLayer *layers;
  int max_hidden;
} LmTransformer;

typedef struct {
  MoshiWeight table;                    /* [V, d] or [V, r] */
  MoshiWeight low_rank;                 /* [d, r] when present */
  gboolean has_low_rank;
} LmEmbedding;

struct _MoshiLm {
  gint ref_count;
  char *cache_key;              /* set when the model is in the shared registry */
  MoshiLmConfig cfg;
  char *path;
  MoshiSafetensors *st;
  MoshiBackend *be;
  MoshiDType kv_dtype;                  /* streaming KV caches: BF16, F8_E4M3 or F32 */
  MoshiLmWeights weights;               /* linear matrices as stored, or int8 */

  LmEmbedding *emb;                     /* n_q audio streams */
  LmEmbedding text_emb;
  LmTransformer temporal;
  MoshiWeight out_norm_w, out_norm_b;
  MoshiWeight text_linear;

  int n_depformer_in;
  MoshiWeight *depformer_in;
  LmEmbedding depformer_text_emb;
  LmEmbedding *depformer_emb;           /* dep_q - 1 */
  LmTransformer depformer;
  MoshiWeight *depformer_norm_w, *depformer_norm_b;   /* dep_q, when configured */
  MoshiWeight *linears;                 /* dep_q */

  /* sum conditioners, host f32: embed [n_bins + 1, cdim], output_proj [dim, cdim],
   * learnt_padding [dim] (NULL without learn_padding) */
  float *cond_embed[MOSHI_LM_MAX_CONDITIONERS];
  float *cond_proj[MOSHI_LM_MAX_CONDITIONERS];
  float *cond_pad[MOSHI_LM_MAX_CONDITIONERS];
};

typedef struct {
  MoshiLm *lm;
  GError **error;
} Loader;

static gboolean
load_tensor (Loader *ld, MoshiWeight *w, const char *name, int ndim, const int64_t *shape)
{
  const MoshiTensorEntry *e = moshi_safetensors_require (ld->lm->st, name, MOSHI_DTYPE_COUNT,
      ndim, shape, ld->error);
  if (e == NULL)
    return FALSE;
  if (!ld->lm->be->ops->weight_from_host (ld->lm->be, w, e, ld->lm->st, ld->error)) {
    g_prefix_error (ld->error, "%s: ", ld->lm->path);
    return FALSE;
  }
  return TRUE;
}

/* An embedding table: gathered a few rows a step, kept as stored. */
static gboolean
load_table (Loader *ld, MoshiWeight *w, const char *name, int64_t rows, int64_t cols)
{
  int64_t shape[] = { rows, cols };
  return load_tensor (ld, w, name, 2, shape);
}

/* A linear layer's matrix: as stored, or quantized to int8 at load. */
static gboolean
load_linear (Loader *ld, MoshiWeight *w, const char *name, int64_t rows, int64_t cols)
{
  int64_t shape[] = { rows, cols };
  if (ld->lm->weights != MOSHI_LM_WEIGHTS_INT8)
    return load_tensor (ld, w, name, 2, shape);
  const MoshiTensorEntry *e = moshi_safetensors_require (ld->lm->st, name, MOSHI_DTYPE_COUNT,
      2, shape, ld->error);
  if (e == NULL)
    return FALSE;
  if (moshi_weight_device_dtype (e, ld->error) == MOSHI_DTYPE_COUNT
      || !moshi_weight_int8_from_host (ld->lm->be, w, e, ld->error)) {
    g_prefix_error (ld->error, "%s: ", ld->lm->path);
    return FALSE;
  }
  return TRUE;
}

/* A view of rows [row0, row0 + rows) of a matrix. */
static void
row_view (MoshiWeight *dst, const MoshiWeight *src, int64_t row0, int64_t rows)
{
  *dst = *src;
  dst->owned = NULL;
  dst->shape[0] = rows;
  dst->data = (const guint8 *) src->data + row0 * src->shape[1] * moshi_dtype_size (src->dtype);
  if (src->scales)
    dst->scales = src->scales + row0;
}

/* A norm's weights, checked for infinities and NaNs: they scale every activation, and are
 * cheap to check (d values), where checking all 7 B weights would slow every load. */
static gboolean
load_norm_tensor (Loader *ld, MoshiWeight *w, const char *name, int ndim, const int64_t *shape)
{
  const MoshiTensorEntry *e = moshi_safetensors_lookup (ld->lm->st, name);
  if (e != NULL && !moshi_tensor_check_finite (e, ld->lm->path, ld->error))
    return FALSE;
  return load_tensor (ld, w, name, ndim, shape);
}

static gboolean
load_norm (Loader *ld, MoshiNormKind kind, const char *prefix, int d, MoshiWeight *w, MoshiWeight *b)
{
  g_autofree char *wname = NULL;
  if (kind == MOSHI_NORM_RMS_NORM || kind == MOSHI_NORM_RMS_NORM_F32) {
    wname = g_strdup_printf ("%s.alpha", prefix);
    int64_t shape[] = { 1, 1, d };
    return load_norm_tensor (ld, w, wname, 3, shape);
  }
  wname = g_strdup_printf ("%s.weight", prefix);
  g_autofree char *bname = g_strdup_printf ("%s.bias", prefix);
  int64_t shape[] = { d };
  return load_norm_tensor (ld, w, wname, 1, shape) && load_norm_tensor (ld, b, bname, 1, shape);
}

static gboolean
load_embedding (Loader *ld, LmEmbedding *e, const char *prefix, int64_t vocab, int d, int low_rank)
{
  g_autofree char *name = g_strdup_printf ("%s.weight", prefix);
  if (!load_table (ld, &e->table, name, vocab, low_rank ? low_rank : d))
    return FALSE;
  if (low_rank) {
    g_autofree char *lr = g_strdup_printf ("%s.low_rank.weight", prefix);
    e->has_low_rank = TRUE;
    return load_linear (ld, &e->low_rank, lr, d, low_rank);
  }
  return TRUE;
}

/* The attention projections of all weight sets: either fused (in_proj_weight [sets*3d, d],
 * out_proj.weight [sets*d, d], as in the released checkpoints) or one tensor per set
 * (in_projs.N.weight, out_projs.N.weight, as the module's state_dict has them). */
static gboolean
load_attention (Loader *ld, LmLayer *L, const char *prefix, int d, int sets)
{
  MoshiLm *lm = ld->lm;
  g_autofree char *fused_in = g_strdup_printf ("%s.self_attn.in_proj_weight", prefix);
  g_autofree char *fused_out = g_strdup_printf ("%s.self_attn.out_proj.weight", prefix);
  g_autofree char *split_in0 = g_strdup_printf ("%s.self_attn.in_projs.0.weight", prefix);
  L->in_proj = g_new0 (MoshiWeight, sets + 1);
  L->out_proj = g_new0 (MoshiWeight, sets + 1);
  if (moshi_safetensors_lookup (lm->st, fused_in) || !moshi_safetensors_lookup (lm->st, split_in0)) {
    /* the fused weights live in slot [sets]; the per-set entries are views */
    if (!load_linear (ld, &L->in_proj[sets], fused_in, (int64_t) sets * 3 * d, d)
        || !load_linear (ld, &L->out_proj[sets], fused_out, (int64_t) sets * d, d))
      return FALSE;
    for (int s = 0; s < sets; s++) {
      row_view (&L->in_proj[s], &L->in_proj[sets], (int64_t) s * 3 * d, 3 * d);
      row_view (&L->out_proj[s], &L->out_proj[sets], (int64_t) s * d, d);
    }
    return TRUE;
  }
  for (int s = 0; s < sets; s++) {
    g_autofree char *in_name = g_strdup_printf ("%s.self_attn.in_projs.%d.weight", prefix, s);
    g_autofree char *out_name = g_strdup_printf ("%s.self_attn.out_projs.%d.weight", prefix, s);
    if (!load_linear (ld, &L->in_proj[s], in_name, 3 * d, d)
        || !load_linear (ld, &L->out_proj[s], out_name, d, d))
      return FALSE;
  }
  return TRUE;
}

/* Feed-forward weights. The hidden size of a gated FFN follows from the checkpoint (upstream's
 * rule, 2 * dim_feedforward / 3 or 21 * d / 8, is checked against it). */
static gboolean
load_ffn (Loader *ld, LmLayer *L, const MoshiTransformerConfig *cfg, const char *prefix, int sets,
    int *max_hidden)
{
  int d = cfg->d_model;
  L->ffn_in = g_new0 (MoshiWeight, sets);
  L->ffn_out = g_new0 (MoshiWeight, sets);
  L->ffn_hidden = g_new0 (int, sets);
  if (cfg->gating == MOSHI_GATING_NONE) {
    int ff = cfg->dim_feedforward;
    g_autofree char *l1 = g_strdup_printf ("%s.linear1.weight", prefix);
    g_autofree char *l2 = g_strdup_printf ("%s.linear2.weight", prefix);
    L->ffn_hidden[0] = ff;
    *max_hidden = MAX (*max_hidden, 2 * ff);
    return load_linear (ld, &L->ffn_in[0], l1, ff, d) && load_linear (ld, &L->ffn_out[0], l2, d, ff);
  }
  int hidden = cfg->dim_feedforward == 4 * d ? 21 * d / 8 : 2 * cfg->dim_feedforward / 3;
  for (int s = 0; s < sets; s++) {
    g_autofree char *base = cfg->weights_per_step ? g_strdup_printf ("%s.gating.%d", prefix, s)
        : g_strdup_printf ("%s.gating", prefix);
    g_autofree char *in_name = g_strdup_printf ("%s.linear_in.weight", base);
    g_autofree char *out_name = g_strdup_printf ("%s.linear_out.weight", base);
    L->ffn_hidden[s] = hidden;
    if (!load_linear (ld, &L->ffn_in[s], in_name, 2 * hidden, d)
        || !load_linear (ld, &L->ffn_out[s], out_name, d, hidden))
      return FALSE;
  }
  *max_hidden = MAX (*max_hidden, 2 * hidden);
  return TRUE;
}

static gboolean
load_transformer (Loader *ld, LmTransformer *tr, const MoshiTransformerConfig *cfg,
    const char *name)
{
  tr->cfg = cfg;
  tr->n_layers = cfg->num_layers;
  tr->n_sets = cfg->n_weight_sets;
  tr->layers = g_new0 (LmLayer, tr->n_layers);
  int d = cfg->d_model;
  for (int l = 0; l < tr->n_layers; l++) {
    LmLayer *L = &tr->layers[l];
    g_autofree char *p = g_strdup_printf ("%s.layers.%d", name, l);
    g_autofree char *n1 = g_strdup_printf ("%s.norm1", p);
    g_autofree char *n2 = g_strdup_printf ("%s.norm2", p);
    if (!load_attention (ld, L, p, d, tr->n_sets)
        || !load_ffn (ld, L, cfg, p, cfg->gating == MOSHI_GATING_NONE ? 1 : tr->n_sets, &tr->max_hidden)
        || !load_norm (ld, cfg->norm, n1, d, &L->norm1_w, &L->norm1_b)
        || !load_norm (ld, cfg->norm, n2, d, &L->norm2_w, &L->norm2_b))
      return FALSE;
    if (cfg->layer_scale) {
      g_autofree char *s1 = g_strdup_printf ("%s.layer_scale_1.scale", p);
      g_autofree char *s2 = g_strdup_printf ("%s.layer_scale_2.scale", p);
      int64_t shape[] = { d };
      if (!load_tensor (ld, &L->scale1, s1, 1, shape) || !load_tensor (ld, &L->scale2, s2, 1, shape))
        return FALSE;
    }
  }
  return TRUE;
}

static void
release (MoshiBackend *be, MoshiWeight *w, int n)
{
  for (int i = 0; w && i < n; i++)
    be->ops->weight_release (be, &w[i]);
}

static void
release_embedding (MoshiBackend *be, LmEmbedding *e)
{
  release (be, &e->table, 1);
  release (be, &e->low_rank, 1);
}

static void
release_transformer (MoshiBackend *be, LmTransformer *tr)
{
  for (int l = 0; tr->layers && l < tr->n_layers; l++) {
    LmLayer *L = &tr->layers[l];
    int ffn_sets = tr->cfg->gating == MOSHI_GATING_NONE ? 1 : tr->n_sets;
    release (be, L->in_proj, tr->n_sets + 1);
    release (be, L->out_proj, tr->n_sets + 1);
    release (be, L->ffn_in, ffn_sets);
    release (be, L->ffn_out, ffn_sets);
    release (be, &L->norm1_w, 1);
    release (be, &L->norm1_b, 1);
    release (be, &L->norm2_w, 1);
    release (be, &L->norm2_b, 1);
    release (be, &L->scale1, 1);
    release (be, &L->scale2, 1);
    g_free (L->in_proj);
    g_free (L->out_proj);
    g_free (L->ffn_in);
    g_free (L->ffn_out);
    g_free (L->ffn_hidden);
  }
  g_free (tr->layers);
}

static void
lm_free (MoshiLm *lm)
{
  MoshiBackend *be = lm->be;
  const MoshiLmConfig *cfg = &lm->cfg;
  if (be) {
    for (int j = 0; lm->emb && j < cfg->n_q; j++)
      release_embedding (be, &lm->emb[j]);
    release_embedding (be, &lm->text_emb);
    release_transformer (be, &lm->temporal);
    release (be, &lm->out_norm_w, 1);
    release (be, &lm->out_norm_b, 1);
    release (be, &lm->text_linear, 1);
    release (be, lm->depformer_in, lm->n_depformer_in);
    release_embedding (be, &lm->depformer_text_emb);
    for (int k = 0; lm->depformer_emb && k < cfg->dep_q - 1; k++)
      release_embedding (be, &lm->depformer_emb[k]);
    release_transformer (be, &lm->depformer);
    release (be, lm->depformer_norm_w, cfg->dep_q);
    release (be, lm->depformer_norm_b, cfg->dep_q);
    release (be, lm->linears, cfg->dep_q);
    moshi_backend_unref (be);
  }
  g_free (lm->emb);
  g_free (lm->depformer_in);
  g_free (lm->depformer_emb);
  g_free (lm->depformer_norm_w);
  g_free (lm->depformer_norm_b);
  g_free (lm->linears);
  for (int c = 0; c < MOSHI_LM_MAX_CONDITIONERS; c++) {
    g_free (lm->cond_embed[c]);
    g_free (lm->cond_proj[c]);
    g_free (lm->cond_pad[c]);
  }
  if (lm->st)
    moshi_safetensors_unref (lm->st);
  g_free (lm->cache_key);
  g_free (lm->path);
  g_free (lm);
}

static gboolean
check_config (const MoshiLmConfig *cfg, const char *what, GError **error)
{
  const MoshiTransformerConfig *ts[] = { &cfg->transformer, &cfg->depformer };
  for (int i = 0; i < (cfg->dep_q > 0 ? 2 : 1); i++) {
    if (ts[i]->positional_embedding == MOSHI_POS_ROPE_CONCAT) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_UNSUPPORTED,
          "%s: positional_embedding \"rope_concat\" is not supported", what);
      return FALSE;
    }
  }
  return TRUE;
}

/* A tensor as host f32 (conditioner weights stay f32, as upstream keeps them). */
static float *
load_host_f32 (Loader *ld, const char *name, int ndim, const int64_t *shape)
{
  const MoshiTensorEntry *e = moshi_safetensors_require (ld->lm->st, name, MOSHI_DTYPE_COUNT,
      ndim, shape, ld->error);
  if (e == NULL)
    return NULL;
  gsize n = (gsize) moshi_shape_numel (e->shape, e->ndim);
  float *out = g_new (float, MAX (n, 1));
  moshi_convert_to_f32 (out, e->data, e->dtype, n);
  return out;
}

static gboolean
load_conditioners (Loader *ld)
{
  MoshiLm *lm = ld->lm;
  const MoshiLmConfig *cfg = &lm->cfg;
  for (int c = 0; c < cfg->n_conditioners; c++) {
    const MoshiLmConditioner *mc = &cfg->conditioners[c];
    g_autofree char *p = g_strdup_printf ("condition_provider.conditioners.%s", mc->name);
    g_autofree char *en = g_strdup_printf ("%s.embed.weight", p);
    g_autofree char *pn = g_strdup_printf ("%s.output_proj.weight", p);
    g_autofree char *ln = g_strdup_printf ("%s.learnt_padding", p);
    int64_t es[] = { mc->n_bins + 1, mc->dim }, ps[] = { cfg->dim, mc->dim }, ls[] = { 1, 1, cfg->dim };
    if ((lm->cond_embed[c] = load_host_f32 (ld, en, 2, es)) == NULL
        || (lm->cond_proj[c] = load_host_f32 (ld, pn, 2, ps)) == NULL)
      return FALSE;
    if (mc->learn_padding && (lm->cond_pad[c] = load_host_f32 (ld, ln, 3, ls)) == NULL)
      return FALSE;
  }
  return TRUE;
}

/* The bin of value for conditioner c (NoopTokenizer): its index in possible_values, or the
 * hash trick (sha256 as a big integer, mod n_bins). -1 with error when not a possible value. */
static int
condition_bin (const MoshiLmConditioner *mc, const char *value, GError **error)
{
  if (mc->n_values > 0) {
    for (int i = 0; i < mc->n_values; i++)
      if (strcmp (mc->values[i], value) == 0)
        return i;
    GString *all = g_string_new (NULL);
    for (int i = 0; i < mc->n_values; i++)
      g_string_append_printf (all, "%s%s", i ? ", " : "", mc->values[i]);
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
        "\"%s\" is not a value of condition \"%s\" (one of: %s)", value, mc->name, all->str);
    g_string_free (all, TRUE);
    return -1;
  }
  g_autofree char *hex = g_compute_checksum_for_string (G_CHECKSUM_SHA256, value, -1);
  guint64 r = 0;
  for (const char *h = hex; *h; h++)
    r = (r * 16 + (guint64) g_ascii_xdigit_value (*h)) % (guint64) mc->n_bins;
  return (int) r;
}

/* out[dim] = sum over the sum conditioners of their output for values[c] (NULL: no value,
 * i.e. learnt padding, or zero without it). */
static gboolean
condition_vector (MoshiLm *lm, char *const *values, float *out, GError **error)
{
  const MoshiLmConfig *cfg = &lm->cfg;
  int d = cfg->dim;
  memset (out, 0, (gsize) d * sizeof (float));
  for (int c = 0; c < cfg->n_conditioners; c++) {
    const MoshiLmConditioner *mc = &cfg->conditioners[c];
    if (values[c] == NULL) {
      for (int i = 0; lm->cond_pad[c] && i < d; i++)
        out[i] += lm->cond_pad[c][i];
      continue;
    }
    int bin = condition_bin (mc, values[c], error);
    if (bin < 0)
      return FALSE;
    const float *e = lm->cond_embed[c] + (gsize) bin * mc->dim;
    for (int i = 0; i < d; i++) {
      const float *w = lm->cond_proj[c] + (gsize) i * mc->dim;
      float acc = 0;
      for (int j = 0; j < mc->dim; j++)
        acc += w[j] * e[j];
      out[i] += acc;
    }
  }
  return TRUE;
}

static int
conditioner_index (MoshiLm *lm, const char *name, GError **error)
{
  const MoshiLmConfig *cfg = &lm->cfg;
  for (int c = 0; c < cfg->n_conditioners; c++)
    if (strcmp (cfg->conditioners[c].name, name) == 0)
      return c;
  if (cfg->n_conditioners == 0)
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
        "unknown condition \"%s\": %s has no conditioners", name, lm->path);
  else
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
        "unknown condition \"%s\" (the model's first one is \"%s\")", name,
        cfg->conditioners[0].name);
  return -1;
}

static gboolean
load_model (MoshiLm *lm, GError **error)
{
  const MoshiLmConfig *cfg = &lm->cfg;
  Loader ld = { lm, error };
  int d = cfg->dim;

  lm->emb = g_new0 (LmEmbedding, cfg->n_q);
  for (int j = 0; j < cfg->n_q; j++) {
    g_autofree char *p = g_strdup_printf ("emb.%d", j);
    if (!load_embedding (&ld, &lm->emb[j], p, cfg->card + 1, d, 0))
      return FALSE;
  }
  if (!load_embedding (&ld, &lm->text_emb, "text_emb", cfg->text_card + 1, d, 0)
      || !load_transformer (&ld, &lm->temporal, &cfg->transformer, "transformer")
      || !load_norm (&ld, cfg->transformer.norm, "out_norm", d, &lm->out_norm_w, &lm->out_norm_b)
      || !load_linear (&ld, &lm->text_linear, "text_linear.weight", cfg->text_card_out, d)
      || !load_conditioners (&ld))
    return FALSE;
  if (cfg->dep_q == 0)
    return TRUE;

  int dd = cfg->depformer_dim;
  lm->n_depformer_in = cfg->depformer_multi_linear ? cfg->depformer.n_weight_sets : 1;
  if (cfg->depformer_multi_linear && !cfg->depformer.weights_per_step)
    lm->n_depformer_in = cfg->dep_q;
  lm->depformer_in = g_new0 (MoshiWeight, lm->n_depformer_in);
  for (int i = 0; i < lm->n_depformer_in; i++) {
    g_autofree char *name = g_strdup_printf ("depformer_in.%d.weight", i);
    if (!load_linear (&ld, &lm->depformer_in[i], name, dd, d))
      return FALSE;
  }
  if (!load_embedding (&ld, &lm->depformer_text_emb, "depformer_text_emb", cfg->text_card + 1, dd,
          cfg->depformer_low_rank))
    return FALSE;
  lm->depformer_emb = g_new0 (LmEmbedding, MAX (cfg->dep_q - 1, 1));
  for (int k = 0; k < cfg->dep_q - 1; k++) {
    g_autofree char *p = g_strdup_printf ("depformer_emb.%d", k);
    if (!load_embedding (&ld, &lm->depformer_emb[k], p, cfg->card + 1, dd, cfg->depformer_low_rank))
      return FALSE;
  }
  if (!load_transformer (&ld, &lm->depformer, &cfg->depformer, "depformer"))
    return FALSE;
  lm->linears = g_new0 (MoshiWeight, cfg->dep_q);
  lm->depformer_norm_w = g_new0 (MoshiWeight, cfg->dep_q);
  lm->depformer_norm_b = g_new0 (MoshiWeight, cfg->dep_q);
  for (int k = 0; k < cfg->dep_q; k++) {
    g_autofree char *name = g_strdup_printf ("linears.%d.weight", k);
    if (!load_linear (&ld, &lm->linears[k], name, cfg->card, dd))
      return FALSE;
    if (cfg->has_depformer_norm) {
      g_autofree char *p = g_strdup_printf ("depformer_norms.%d", k);
      if (!load_norm (&ld, cfg->depformer_norm, p, dd, &lm->depformer_norm_w[k], &lm->depformer_norm_b[k]))
        return FALSE;
    }
  }
  return TRUE;
}

MoshiDType
moshi_lm_kv_cache_dtype (MoshiLmKvCache kv)
{
  switch (kv) {
    case MOSHI_LM_KV_F32:
      return MOSHI_DTYPE_F32;
    case MOSHI_LM_KV_FP8:
      return MOSHI_DTYPE_F8_E4M3;
    default:
      return MOSHI_DTYPE_BF16;
  }
}

const char *
moshi_lm_kv_cache_name (MoshiLmKvCache kv)
{
  switch (kv) {
    case MOSHI_LM_KV_F32:
      return "f32";
    case MOSHI_LM_KV_FP8:
      return "fp8";
    default:
      return "bf16";
  }
}

gboolean
moshi_lm_kv_cache_from_name (const char *name, MoshiLmKvCache *out)
{
  static const MoshiLmKvCache all[] = { MOSHI_LM_KV_F32, MOSHI_LM_KV_BF16, MOSHI_LM_KV_FP8 };
  for (guint i = 0; i < G_N_ELEMENTS (all); i++)
    if (g_strcmp0 (name, moshi_lm_kv_cache_name (all[i])) == 0) {
      *out = all[i];
      return TRUE;
    }
  return FALSE;
}

/* Bytes of one position of one layer of a session's temporal KV cache. */
static gsize
kv_slot_bytes (const MoshiLm *lm)
{
  const MoshiTransformerConfig *tr = &lm->cfg.transformer;
  return moshi_kv_slot_bytes (lm->kv_dtype, tr->num_heads, tr->d_model / tr->num_heads);
}

/* Loads the weights of lm->st on be, or on the backend it opens when be is NULL; frees lm on
 * failure. */
static MoshiLm *
finish_load (MoshiLm *lm, MoshiBackend *be, const MoshiLmLoadOptions *options, GError **error)
{
  MoshiLmLoadOptions defaults = { .device = MOSHI_DEVICE_AUTO };
  if (options == NULL)
    options = &defaults;
  MoshiDevice device = options->device;
  lm->kv_dtype = moshi_lm_kv_cache_dtype (options->kv_cache);
  lm->weights = options->weights;
  lm->be = be ? moshi_backend_ref (be) : moshi_backend_open (device, error);
  if (lm->be == NULL || !load_model (lm, error)) {
    lm_free (lm);
    return NULL;
  }
  return lm;
}

static MoshiLm *
lm_load_on (MoshiBackend *be, const char *weights_path, const char *config_path,
    const MoshiLmLoadOptions *options, GError **error)
{
  g_return_val_if_fail (weights_path != NULL, NULL);
  MoshiLm *lm = g_new0 (MoshiLm, 1);
  lm->ref_count = 1;
  lm->path = g_strdup (weights_path);
  if (config_path) {
    if (!moshi_lm_config_load (&lm->cfg, config_path, error))
      goto fail;
  } else {
    moshi_lm_config_init_moshi_7b (&lm->cfg);
  }
  if (!check_config (&lm->cfg, config_path ? config_path : weights_path, error))
    goto fail;
  lm->st = moshi_safetensors_open (weights_path, error);
  if (lm->st == NULL)
    goto fail;
  MoshiLm *loaded = finish_load (lm, be, options, error);
  if (loaded == NULL)
    moshi_model_load_error_hint (error, "LM", "the released Moshi 7B", weights_path, config_path);
  return loaded;

fail:
  lm_free (lm);
  return NULL;
}

MoshiLm *
moshi_lm_load (const char *weights_path, const char *config_path,
    const MoshiLmLoadOptions *options, GError **error)
{
  return lm_load_on (NULL, weights_path, config_path, options, error);
}

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

/* The safetensors image a checkpoint of cfg's shapes would be: matrices uniform in
 * +-1/sqrt(columns), norm weights 1, biases 0, layer scales 0.1; all of dtype. */
static GBytes *
random_image (const MoshiLmConfig *cfg, MoshiDType dtype, guint64 seed)
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
  guint8 *p = buf + 8 + header->len;
  uint64_t state = seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
  for (guint i = 0; i < tensors->len; i++) {
    RandomTensor *t = &g_array_index (tensors, RandomTensor, i);
    int64_t n = moshi_shape_numel (t->shape, t->ndim);
    float amp = t->ndim == 2 ? 1.0f / sqrtf ((float) t->shape[1]) : 0.0f;
    for (int64_t k = 0; k < n; k++) {
      float v = t->zero ? 0.0f : t->fill != 0.0f ? t->fill
          : amp * ((float) (random_next (&state) >> 40) * (2.0f / 16777216.0f) - 1.0f);
      if (dtype == MOSHI_DTYPE_BF16) {
        guint32 bits;
        memcpy (&bits, &v, 4);
        guint16 h = GUINT16_TO_LE ((guint16) (bits >> 16));
        memcpy (p, &h, 2);
      } else {
        memcpy (p, &v, 4);
      }
      p += esize;
    }
    g_free (t->name);
  }
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
  if (!check_config (&lm->cfg, lm->path, error))
    goto fail;
  GBytes *image = random_image (cfg, dtype, seed);
  lm->st = moshi_safetensors_new_from_bytes (image, lm->path, error);
  g_bytes_unref (image);
  if (lm->st == NULL)
    goto fail;
  return finish_load (lm, NULL, options, error);

fail:
  lm_free (lm);
  return NULL;
}

static MoshiRegistry shared_models = MOSHI_REGISTRY_INIT;

static gpointer
load_for_registry (const char *weights, const char *config, gconstpointer shared, GError **error)
{
  const MoshiSharedLoad *s = shared;
  return lm_load_on (s->be, weights, config, s->options, error);
}

static const MoshiRegistryType registry_type = {
  load_for_registry, G_STRUCT_OFFSET (MoshiLm, ref_count), G_STRUCT_OFFSET (MoshiLm, cache_key)
};

MoshiLm *
moshi_lm_load_shared (const char *weights_path, const char *config_path,
    const MoshiLmLoadOptions *options, GError **error)
{
  g_autoptr (MoshiBackend) be = moshi_backend_open (options ? options->device : MOSHI_DEVICE_AUTO,
      error);
  if (be == NULL)
    return NULL;
  /* models with other KV caches are other models */
  g_autofree char *variant = g_strdup_printf ("%s/kv-%s%s", be->name,
      moshi_lm_kv_cache_name (options ? options->kv_cache : MOSHI_LM_KV_DEFAULT),
      options && options->weights == MOSHI_LM_WEIGHTS_INT8 ? "/int8" : "");
  MoshiSharedLoad shared = { options, be };
  return moshi_registry_load (&shared_models, &registry_type, variant, weights_path, config_path,
      &shared, error);
}

MoshiLm *
moshi_lm_ref (MoshiLm *lm)
{
  g_atomic_int_inc (&lm->ref_count);
  return lm;
}

void
moshi_lm_unref (MoshiLm *lm)
{
  if (lm == NULL)
    return;
  if (lm->cache_key ? moshi_registry_unref (&shared_models, lm->cache_key, &lm->ref_count)
      : g_atomic_int_dec_and_test (&lm->ref_count))
    lm_free (lm);
}

const MoshiLmConfig *moshi_lm_get_config (const MoshiLm *lm) { return &lm->cfg; }
const char *moshi_lm_get_path (const MoshiLm *lm) { return lm->path; }
MoshiDevice moshi_lm_get_device (const MoshiLm *lm) { return lm->be->device; }
int moshi_lm_user_codebooks (const MoshiLm *lm) { return lm->cfg.n_q - lm->cfg.dep_q; }
int moshi_lm_generated_codebooks (const MoshiLm *lm) { return lm->cfg.dep_q; }
int moshi_lm_text_padding_id (const MoshiLm *lm) { return lm->cfg.existing_text_padding_id; }
MoshiDType moshi_lm_get_kv_dtype (const MoshiLm *lm) { return lm->kv_dtype; }
MoshiLmWeights moshi_lm_get_weights (const MoshiLm *lm) { return lm->weights; }

/* ================================================================ batch runner */

/* Rows [row0, row0 + rows) of the activations form one sequence with its own KV cache: the
 * cache of layer l is at k_base + l * layer_stride (capacity rows of d floats). Teacher forcing
 * runs one such sequence over many steps; streaming steps use MoshiRowCache tables instead. */
typedef struct {
  int row0, rows;
  float *k_base, *v_base;
  gsize layer_stride;
  int capacity;
  int pos0;
} Segment;

/* What a streaming step uploads, in one copy from pinned host memory to device memory (so that
 * a recorded step reads new inputs at every replay): the row tables, the samplers, the input
 * tokens [streams][rows] and the rows' conditions. Offsets in bytes, fixed for the batch. */
typedef struct {
  gsize rc, samplers, ids, cond, size;
} StepLayout;

struct _MoshiLmBatch {
  MoshiLm *lm;
  MoshiExec *ex;
  int max_rows;
  int max_sessions;             /* max_rows, or max_rows / 2 for a conditioned model (CFG) */
  float *cond, *cond_host;      /* [max_rows, dim]: teacher forcing's condition of each row */
  int *row_of;                  /* [max_sessions + 1]: first row of each session */
  int width;                    /* max(dim, depformer_dim) */
  float *x, *h, *qkv, *attn, *o, *ffn, *ffn_act, *t_out, *low_rank, *logits;
  int32_t *ids;                 /* device, [streams, max_rows] */
  float *dep_k, *dep_v;         /* depth caches [max_rows][layers][dep_q][depformer_dim] */
  MoshiRowCache *depth_rc;      /* device, [dep_q][max_rows]: row r's depth cache at step k */
  int logits_width;
  int32_t *ids_host;

  /* streaming steps */
  StepLayout layout;
  guint8 *step_host, *step_dev; /* pinned host / device copies of the step input */
  int32_t *tokens_dev, *tokens_host;   /* [max_sessions][1 + dep_q] sampled (host pinned) */
  float *text_logits_host;      /* pinned, [max_rows][text_card_out] when asked for */
  gboolean graphs;              /* record steps and replay them (backends that can) */
  MoshiGraph *graph;            /* the recorded step of the last shape, or NULL */
  int *graph_key;               /* that shape: n, want_logits, row_of[0..n] */
  int *warm_key;                /* the last shape run eagerly (recorded when it comes again) */
};

static void
dev_free (MoshiBackend *be, void *p)
{
  if (p)
    be->ops->free (be, p);
}

static void
host_free (MoshiBackend *be, void *p)
{
  if (p)
    be->ops->host_free (be, p);
}

void
moshi_lm_batch_free (MoshiLmBatch *b)
{
  if (b == NULL)
    return;
  MoshiBackend *be = b->lm->be;
  void *bufs[] = { b->x, b->h, b->qkv, b->attn, b->o, b->ffn, b->ffn_act, b->t_out, b->low_rank,
    b->logits, b->ids, b->dep_k, b->dep_v, b->cond, b->depth_rc, b->step_dev, b->tokens_dev };
  for (guint i = 0; i < G_N_ELEMENTS (bufs); i++)
    dev_free (be, bufs[i]);
  host_free (be, b->step_host);
  host_free (be, b->tokens_host);
  host_free (be, b->text_logits_host);
  if (b->graph)
    be->ops->graph_free (be, b->graph);
  g_free (b->graph_key);
  g_free (b->warm_key);
  g_free (b->ids_host);
  g_free (b->cond_host);
  g_free (b->row_of);
  moshi_exec_free (b->ex);
  moshi_lm_unref (b->lm);
  g_free (b);
}

static gsize
align_up (gsize n)
{
  return (n + 15) & ~(gsize) 15;
}

/* The depth caches' row tables: row r's own cache, position k, for every depformer step k. */
static gboolean
upload_depth_tables (MoshiLmBatch *b, GError **error)
{
  const MoshiLmConfig *cfg = &b->lm->cfg;
  MoshiBackend *be = b->lm->be;
  gsize n = (gsize) cfg->dep_q * b->max_rows;
  b->depth_rc = be->ops->alloc (be, n * sizeof (MoshiRowCache), error);
  if (b->depth_rc == NULL)
    return FALSE;
  g_autofree MoshiRowCache *host = g_new0 (MoshiRowCache, n);
  gsize row_stride = (gsize) b->lm->depformer.n_layers * cfg->dep_q * cfg->depformer_dim;
  for (int k = 0; k < cfg->dep_q; k++)
    for (int r = 0; r < b->max_rows; r++)
      host[(gsize) k * b->max_rows + r] = (MoshiRowCache) { b->dep_k + r * row_stride,
        b->dep_v + r * row_stride, k, k + 1 };
  be->ops->upload (b->ex, b->depth_rc, host, n * sizeof (MoshiRowCache));
  return be->ops->synchronize (b->ex, error);
}

MoshiLmBatch *
moshi_lm_batch_new (MoshiLm *lm, int max_rows, int n_threads, GError **error)
{
  if (max_rows < 1 || max_rows > 65536) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
        "batch size %d is out of range [1, 65536]", max_rows);
    return NULL;
  }
  MoshiExec *ex = moshi_exec_new (lm->be, n_threads, error);
  if (ex == NULL)
    return NULL;
  const MoshiLmConfig *cfg = &lm->cfg;
  MoshiLmBatch *b = g_new0 (MoshiLmBatch, 1);
  b->lm = moshi_lm_ref (lm);
  b->ex = ex;
  b->max_sessions = max_rows;
  if (cfg->n_conditioners > 0)
    max_rows *= 2;              /* classifier-free guidance: two rows per session */
  b->max_rows = max_rows;
  b->width = MAX (cfg->dim, cfg->dep_q > 0 ? cfg->depformer_dim : 0);
  int hidden = MAX (lm->temporal.max_hidden, lm->depformer.max_hidden);
  b->logits_width = MAX (cfg->text_card_out, cfg->card);
  int streams = moshi_lm_config_num_streams (cfg);
  gsize rows = max_rows;
  MoshiBackend *be = lm->be;
  const char *env = g_getenv ("MOSHI_LM_GRAPHS");
  b->graphs = be->ops->capture_begin != NULL && !(env && g_str_equal (env, "0"));
  /* decode steps of 16 rows or more on tensor cores (BF16 activations, f32 accumulation) */
  env = g_getenv ("MOSHI_TENSOR_CORES");
  ex->tensor_core_batches = !(env && g_str_equal (env, "0"));

  StepLayout *L = &b->layout;
  L->rc = 0;
  L->samplers = align_up (L->rc + rows * sizeof (MoshiRowCache));
  L->ids = align_up (L->samplers + (gsize) b->max_sessions * sizeof (MoshiSampler));
  L->cond = align_up (L->ids + rows * streams * sizeof (int32_t));
  L->size = L->cond + (cfg->n_conditioners > 0 ? rows * cfg->dim * sizeof (float) : 0);

  gboolean failed = FALSE;
#define ALLOC(ptr, n) \
  do { \
    if (!failed && ((ptr) = be->ops->alloc (be, (gsize) (n) * 4, error)) == NULL) \
      failed = TRUE; \
  } while (0)
#define HOST_ALLOC(ptr, bytes) \
  do { \
    if (!failed && ((ptr) = be->ops->host_alloc (be, (bytes), error)) == NULL) \
      failed = TRUE; \
  } while (0)
  ALLOC (b->x, rows * b->width);
  ALLOC (b->h, rows * b->width);
  ALLOC (b->qkv, rows * 3 * b->width);
  ALLOC (b->attn, rows * b->width);
  ALLOC (b->o, rows * b->width);
  ALLOC (b->ffn, rows * MAX (hidden, 1));
  ALLOC (b->ffn_act, rows * MAX (hidden, 1));
  ALLOC (b->t_out, rows * cfg->dim);
  ALLOC (b->low_rank, rows * MAX (cfg->depformer_low_rank, 1));
  ALLOC (b->logits, rows * b->logits_width);
  ALLOC (b->ids, rows * streams);
  if (cfg->n_conditioners > 0)
    ALLOC (b->cond, rows * cfg->dim);
  if (cfg->dep_q > 0) {
    gsize dep = rows * lm->depformer.n_layers * cfg->dep_q * cfg->depformer_dim;
    ALLOC (b->dep_k, dep);
    ALLOC (b->dep_v, dep);
  }
  ALLOC (b->step_dev, L->size / 4);
  ALLOC (b->tokens_dev, (gsize) b->max_sessions * (1 + cfg->dep_q));
  HOST_ALLOC (b->step_host, L->size);
  HOST_ALLOC (b->tokens_host, (gsize) b->max_sessions * (1 + cfg->dep_q) * sizeof (int32_t));
#undef ALLOC
#undef HOST_ALLOC
  G_STATIC_ASSERT (sizeof (MoshiRowCache) % 4 == 0 && sizeof (MoshiSampler) % 4 == 0);
  b->ids_host = g_new (int32_t, rows * streams);
  b->cond_host = g_new0 (float, rows * cfg->dim);
  b->row_of = g_new0 (int, b->max_sessions + 1);
  if (!failed && cfg->dep_q > 0 && !upload_depth_tables (b, error))
    failed = TRUE;
  if (failed) {
    moshi_lm_batch_free (b);
    return NULL;
  }
  return b;
}

static void
apply_norm (MoshiExec *ex, MoshiNormKind kind, const MoshiWeight *w, const MoshiWeight *b,
    float *dst, const float *src, int rows, int d)
{
  const MoshiBackendOps *ops = ex->backend->ops;
  if (kind == MOSHI_NORM_RMS_NORM || kind == MOSHI_NORM_RMS_NORM_F32)
    ops->rms_norm (ex, dst, d, src, d, w, moshi_norm_eps (kind), rows, d);
  else
    ops->layer_norm (ex, dst, d, src, d, w, b, moshi_norm_eps (kind), rows, d);
}

/* Where the rows of a transformer pass keep their KV caches: one sequence per segment (teacher
 * forcing), or a device row table (a streaming step, every row its own sequence), with the
 * caches of layer l at layer_offset * l from the table's. */
typedef struct {
  const Segment *segs;
  int n_segs;
  const MoshiRowCache *rc;
  gsize layer_offset;           /* bytes */
  int capacity;
  MoshiDType rc_dtype;          /* of the row table's caches */
} Caches;

/* Runs the layers of tr over x [rows, d] with weight set `set`. */
static void
transformer_forward (MoshiLmBatch *b, const LmTransformer *tr, int set, float *x, int rows,
    const Caches *c)
{
  MoshiExec *ex = b->ex;
  const MoshiBackendOps *ops = ex->backend->ops;
  const MoshiTransformerConfig *cfg = tr->cfg;
  int d = cfg->d_model;
  int heads = cfg->num_heads;
  int hd = d / heads;
  float scale = 1.0f / sqrtf ((float) hd);
  int context = cfg->context > 0 ? cfg->context : G_MAXINT;
  float max_period = (float) cfg->max_period;
  gboolean rope = cfg->positional_embedding == MOSHI_POS_ROPE
      || cfg->positional_embedding == MOSHI_POS_SIN_ROPE;

  if (cfg->positional_embedding == MOSHI_POS_SIN || cfg->positional_embedding == MOSHI_POS_SIN_ROPE) {
    if (c->rc != NULL)
      ops->add_sin_embedding_rows (ex, x, d, rows, d, c->rc, max_period,
          (float) cfg->positional_scale);
    for (int s = 0; s < c->n_segs; s++)
      ops->add_sin_embedding (ex, x + (gsize) c->segs[s].row0 * d, d, c->segs[s].rows, d,
          c->segs[s].pos0, max_period, (float) cfg->positional_scale);
  }

  int ffn_set = cfg->gating == MOSHI_GATING_NONE ? 0 : set;
  for (int l = 0; l < tr->n_layers; l++) {
    const LmLayer *L = &tr->layers[l];
    apply_norm (ex, cfg->norm, &L->norm1_w, &L->norm1_b, b->h, x, rows, d);
    ops->linear (ex, b->qkv, 3 * d, b->h, d, &L->in_proj[set], NULL, rows, 0.0f);
    if (c->rc != NULL) {
      /* every row at once: one launch per op for all sessions */
      gsize off = c->layer_offset * l;
      if (rope) {
        ops->rope_rows (ex, b->qkv, 3 * d, rows, heads, hd, c->rc, max_period);
        ops->rope_rows (ex, b->qkv + d, 3 * d, rows, heads, hd, c->rc, max_period);
      }
      ops->kv_write_rows (ex, c->rc, c->rc_dtype, off, c->capacity, b->qkv + d, 3 * d,
          b->qkv + 2 * d, 3 * d, heads, hd, rows);
      ops->attention_rows (ex, b->attn, d, b->qkv, 3 * d, c->rc, c->rc_dtype, off, c->capacity,
          heads, hd, rows, context, scale);
    }
    for (int s = 0; s < c->n_segs; s++) {
      const Segment *sg = &c->segs[s];
      float *q = b->qkv + (gsize) sg->row0 * 3 * d;
      float *kc = sg->k_base + l * sg->layer_stride;
      float *vc = sg->v_base + l * sg->layer_stride;
      if (rope) {
        ops->rope (ex, q, 3 * d, sg->rows, heads, hd, sg->pos0, max_period);
        ops->rope (ex, q + d, 3 * d, sg->rows, heads, hd, sg->pos0, max_period);
      }
      ops->kv_write (ex, kc, vc, sg->capacity, q + d, 3 * d, q + 2 * d, 3 * d, d, sg->pos0, sg->rows);
      ops->attention (ex, b->attn + (gsize) sg->row0 * d, d, q, 3 * d, kc, vc, sg->capacity, heads,
          hd, sg->pos0, sg->rows, context, scale);
    }
    ops->linear (ex, b->o, d, b->attn, d, &L->out_proj[set], NULL, rows, 0.0f);
    ops->add_scaled (ex, x, d, b->o, d, cfg->layer_scale ? &L->scale1 : NULL, rows, d);

    apply_norm (ex, cfg->norm, &L->norm2_w, &L->norm2_b, b->h, x, rows, d);
    int hidden = L->ffn_hidden[ffn_set];
    if (cfg->gating == MOSHI_GATING_NONE) {
      ops->linear (ex, b->ffn, hidden, b->h, d, &L->ffn_in[0], NULL, rows, 0.0f);
      ops->gelu (ex, b->ffn, (gsize) rows * hidden);
      ops->linear (ex, b->o, d, b->ffn, hidden, &L->ffn_out[0], NULL, rows, 0.0f);
    } else {
      ops->linear (ex, b->ffn, 2 * hidden, b->h, d, &L->ffn_in[ffn_set], NULL, rows, 0.0f);
      ops->gated_act (ex, b->ffn_act, hidden, b->ffn, 2 * hidden,
          cfg->gating == MOSHI_GATING_SILU ? MOSHI_ACT_SILU : MOSHI_ACT_GELU, rows, hidden);
      ops->linear (ex, b->o, d, b->ffn_act, hidden, &L->ffn_out[ffn_set], NULL, rows, 0.0f);
    }
    ops->add_scaled (ex, x, d, b->o, d, cfg->layer_scale ? &L->scale2 : NULL, rows, d);
  }
}

/* dst[r] (+)= embedding of ids[r] (device ids), low-rank tables projected up. */
static void
embed (MoshiLmBatch *b, const LmEmbedding *e, float *dst, int d, const int32_t *ids, int rows,
    float beta)
{
  const MoshiBackendOps *ops = b->ex->backend->ops;
  if (!e->has_low_rank) {
    ops->embedding (b->ex, dst, d, &e->table, ids, rows, beta);
    return;
  }
  int r = (int) e->table.shape[1];
  ops->embedding (b->ex, b->low_rank, r, &e->table, ids, rows, 0.0f);
  ops->linear (b->ex, dst, d, b->low_rank, r, &e->low_rank, NULL, rows, beta);
}

/* Temporal pass: ids (device, [streams][rows]) and, for a conditioned model, cond (device,
 * [rows, dim]) -> t_out [rows, dim] and text logits. */
static void
temporal_forward (MoshiLmBatch *b, const int32_t *ids, const float *cond, int rows,
    const Caches *caches)
{
  MoshiLm *lm = b->lm;
  const MoshiLmConfig *cfg = &lm->cfg;
  const MoshiBackendOps *ops = b->ex->backend->ops;
  int d = cfg->dim;
  /* The audio embeddings in stream order, then the text one, as upstream sums them. */
  for (int j = 0; j < cfg->n_q; j++)
    embed (b, &lm->emb[j], b->x, d, ids + (gsize) (j + 1) * rows, rows, j == 0 ? 0.0f : 1.0f);
  embed (b, &lm->text_emb, b->x, d, ids, rows, cfg->n_q == 0 ? 0.0f : 1.0f);
  if (cfg->n_conditioners > 0)
    ops->add_scaled (b->ex, b->x, d, cond, d, NULL, rows, d);
  transformer_forward (b, &lm->temporal, 0, b->x, rows, caches);
  apply_norm (b->ex, cfg->transformer.norm, &lm->out_norm_w, &lm->out_norm_b, b->t_out, b->x, rows, d);
  ops->linear (b->ex, b->logits, cfg->text_card_out, b->t_out, d, &lm->text_linear, NULL, rows, 0.0f);
}

/* Depformer step k over rows whose previous tokens are in ids (device): logits in b->logits.
 * Every row has its own depth cache (b->depth_rc). */
static void
depformer_forward (MoshiLmBatch *b, int k, const int32_t *ids, int rows)
{
  MoshiLm *lm = b->lm;
  const MoshiLmConfig *cfg = &lm->cfg;
  const MoshiBackendOps *ops = b->ex->backend->ops;
  int dd = cfg->depformer_dim;
  int in_index = cfg->depformer_multi_linear ? (cfg->depformer.weights_per_step
      ? cfg->depformer.schedule[k] : k) : 0;
  ops->linear (b->ex, b->x, dd, b->t_out, cfg->dim, &lm->depformer_in[in_index], NULL, rows, 0.0f);
  embed (b, k == 0 ? &lm->depformer_text_emb : &lm->depformer_emb[k - 1], b->x, dd, ids, rows, 1.0f);
  Caches depth = { NULL, 0, b->depth_rc + (gsize) k * b->max_rows,
    (gsize) cfg->dep_q * dd * sizeof (float), cfg->dep_q, MOSHI_DTYPE_F32 };
  int set = cfg->depformer.weights_per_step ? cfg->depformer.schedule[k] : 0;
  transformer_forward (b, &lm->depformer, set, b->x, rows, &depth);
  const float *y = b->x;
  if (cfg->has_depformer_norm) {
    apply_norm (b->ex, cfg->depformer_norm, &lm->depformer_norm_w[k], &lm->depformer_norm_b[k],
        b->h, b->x, rows, dd);
    y = b->h;
  }
  ops->linear (b->ex, b->logits, cfg->card, y, dd, &lm->linears[k], NULL, rows, 0.0f);
}

/* ================================================================ teacher forcing */

gboolean
moshi_lm_forward (MoshiLm *lm, const int64_t *codes, int batch, int steps, int n_threads,
    float *logits, float *text_logits, guint8 *mask, guint8 *text_mask, GError **error)
{
  return moshi_lm_forward_conditioned (lm, NULL, codes, batch, steps, n_threads, logits,
      text_logits, mask, text_mask, error);
}

gboolean
moshi_lm_forward_conditioned (MoshiLm *lm, const char *const *conditions, const int64_t *codes,
    int batch, int steps, int n_threads, float *logits, float *text_logits, guint8 *mask,
    guint8 *text_mask, GError **error)
{
  const MoshiLmConfig *cfg = &lm->cfg;
  char *values[MOSHI_LM_MAX_CONDITIONERS] = { NULL };
  for (int i = 0; conditions && conditions[i]; i += 2) {
    int c = conditioner_index (lm, conditions[i], error);
    if (c < 0)
      return FALSE;
    if (conditions[i + 1] == NULL) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
          "condition \"%s\" has no value (conditions are name, value pairs)", conditions[i]);
      return FALSE;
    }
    values[c] = (char *) conditions[i + 1];
  }
  g_autofree float *cond_vec = g_new0 (float, cfg->dim);
  if (!condition_vector (lm, values, cond_vec, error))
    return FALSE;
  int streams = moshi_lm_config_num_streams (cfg);
  if (batch < 1 || steps < 1) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
        "codes must have at least one batch row and one step (got [%d, %d, %d])", batch, streams, steps);
    return FALSE;
  }
  for (gsize i = 0; i < (gsize) batch * streams * steps; i++) {
    int k = (int) (i / steps) % streams;
    int64_t limit = k == 0 ? cfg->text_card : cfg->card;
    if (codes[i] < -1 || codes[i] >= limit) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
          "code %" G_GINT64_FORMAT " of stream %d (batch %d, step %d) is outside [-1, %" G_GINT64_FORMAT ")",
          codes[i], k, (int) (i / ((gsize) streams * steps)), (int) (i % steps), limit);
      return FALSE;
    }
  }
  g_autoptr (MoshiLmBatch) b = moshi_lm_batch_new (lm, steps, n_threads, error);
  if (b == NULL)
    return FALSE;
  /* teacher forcing is the conformance path: f32 products throughout */
  b->ex->tensor_core_batches = FALSE;
  MoshiBackend *be = lm->be;
  const MoshiBackendOps *ops = be->ops;
  int d = cfg->dim;
  int capacity = steps;
  gsize cache_len = (gsize) lm->temporal.n_layers * capacity * d;
  float *k_cache = ops->alloc (be, cache_len * 4, error);
  float *v_cache = k_cache ? ops->alloc (be, cache_len * 4, error) : NULL;
  if (v_cache == NULL) {
    dev_free (be, k_cache);
    return FALSE;
  }
  int32_t *dc = g_new (int32_t, (gsize) streams * (steps + 1));
  float *raw = g_new (float, (gsize) steps * MAX (cfg->card, cfg->text_card_out));
  float *raw_audio = g_new (float, (gsize) MAX (cfg->dep_q, 1) * steps * cfg->card);
  Segment seq = { 0, steps, k_cache, v_cache, (gsize) capacity * d, capacity, 0 };
  gboolean ok = TRUE;

  for (int bi = 0; ok && bi < batch; bi++) {
    const int64_t *c = codes + (gsize) bi * streams * steps;
    /* dc[k, p] = codes[k, p - 1 - delay_k], the initial token before the stream starts */
    for (int k = 0; k < streams; k++) {
      int initial = k == 0 ? cfg->text_card : cfg->card;
      for (int p = 0; p <= steps; p++) {
        int src = p - 1 - cfg->delays[k];
        dc[(gsize) k * (steps + 1) + p] = src >= 0 ? (int32_t) c[(gsize) k * steps + src] : initial;
      }
    }
    for (int k = 0; k < streams; k++)
      memcpy (b->ids_host + (gsize) k * steps, dc + (gsize) k * (steps + 1), steps * sizeof (int32_t));
    for (int p = 0; cfg->hibiki && p < steps; p++)
      if (b->ids_host[p] == 2)
        b->ids_host[p] = 3;     /* text_emb row 2 := row 3 (model_type hibiki) */
    for (int p = 0; cfg->n_conditioners > 0 && p < steps; p++)
      memcpy (b->cond_host + (gsize) p * cfg->dim, cond_vec, cfg->dim * sizeof (float));
    ops->upload (b->ex, b->ids, b->ids_host, (gsize) streams * steps * sizeof (int32_t));
    if (cfg->n_conditioners > 0)
      ops->upload (b->ex, b->cond, b->cond_host, (gsize) steps * d * sizeof (float));
    Caches caches = { &seq, 1, NULL, 0, 0, MOSHI_DTYPE_F32 };
    temporal_forward (b, b->ids, b->cond, steps, &caches);
    if (!(ok = ops->download (b->ex, raw, b->logits,
            (gsize) steps * cfg->text_card_out * sizeof (float), error)))
      break;

    /* text: position p + delay_0 predicts frame p */
    for (int f = 0; f < steps; f++) {
      int p = f + cfg->delays[0];
      float *dst = text_logits + ((gsize) bi * steps + f) * cfg->text_card_out;
      gboolean valid = p < steps;
      for (int v = 0; v < cfg->text_card_out; v++)
        dst[v] = valid ? raw[(gsize) p * cfg->text_card_out + v] : NAN;
      text_mask[(gsize) bi * steps + f] = valid && c[f] != MOSHI_LM_ZERO_TOKEN;
    }

    if (cfg->dep_q == 0)
      continue;
    for (int k = 0; ok && k < cfg->dep_q; k++) {
      /* the depformer input of step k at position p is dc[k, p + 1] */
      for (int p = 0; p < steps; p++)
        b->ids_host[p] = dc[(gsize) k * (steps + 1) + p + 1];
      ops->upload (b->ex, b->ids, b->ids_host, steps * sizeof (int32_t));
      depformer_forward (b, k, b->ids, steps);
      ok = ops->download (b->ex, raw_audio + (gsize) k * steps * cfg->card, b->logits,
          (gsize) steps * cfg->card * sizeof (float), error);
    }
    if (!ok)
      break;
    for (int k = 0; k < cfg->dep_q; k++) {
      int delay = cfg->delays[k + 1];
      for (int f = 0; f < steps; f++) {
        int p = f + delay;
        gboolean valid = p < steps;
        float *dst = logits + (((gsize) bi * cfg->dep_q + k) * steps + f) * cfg->card;
        for (int v = 0; v < cfg->card; v++)
          dst[v] = valid ? raw_audio[((gsize) k * steps + p) * cfg->card + v] : NAN;
        mask[((gsize) bi * cfg->dep_q + k) * steps + f] =
            valid && c[(gsize) (k + 1) * steps + f] != MOSHI_LM_ZERO_TOKEN;
      }
    }
  }
  g_free (dc);
  g_free (raw);
  g_free (raw_audio);
  dev_free (be, k_cache);
  dev_free (be, v_cache);
  return ok;
}

/* ================================================================ streaming (LMGen) */

struct _MoshiLmSession {
  MoshiLm *lm;
  MoshiLmSamplingParams params;
  guint64 seed;                 /* params.seed as of the last reset */
  int ct;                       /* token delay line length: max_delay + 2 */
  int32_t *cache;               /* [streams][ct] */
  int64_t offset;
  int capacity;
  void *k_cache, *v_cache;      /* [layers][capacity][dim] of the model's kv_dtype */
  /* conditions: [0] the conditioned values, [1] the CFG null half's; NULL = no value */
  char *cond[2][MOSHI_LM_MAX_CONDITIONERS];
  float *cond_vec[2];           /* [dim] each */
  float cfg_coef;               /* fixed at reset; 1 = off */
  void *k_null, *v_null;        /* KV caches of the null half, allocated on first CFG step */
};

static gboolean
cfg_on (float coef)
{
  return coef > 0.0f && coef != 1.0f;
}

void
moshi_lm_sampling_params_init (MoshiLmSamplingParams *p)
{
  p->text_temperature = 0.7f;
  p->text_topk = 25;
  p->audio_temperature = 0.8f;
  p->audio_topk = 250;
  p->seed = 4242;
  p->cfg_coef = 1.0f;
}

void
moshi_lm_session_reset (MoshiLmSession *s)
{
  int streams = moshi_lm_config_num_streams (&s->lm->cfg);
  for (int i = 0; i < streams * s->ct; i++)
    s->cache[i] = MOSHI_LM_UNGENERATED_TOKEN;
  s->offset = 0;
  s->seed = s->params.seed;     /* with the step, the sampler's draws: a reset replays them */
  s->cfg_coef = cfg_on (s->params.cfg_coef) && s->lm->cfg.n_conditioners > 0 ? s->params.cfg_coef : 1.0f;
  /* KV rows stay; the attention mask ignores slots past the restarted end offset. */
}

void
moshi_lm_session_free (MoshiLmSession *s)
{
  if (s == NULL)
    return;
  dev_free (s->lm->be, s->k_cache);
  dev_free (s->lm->be, s->v_cache);
  dev_free (s->lm->be, s->k_null);
  dev_free (s->lm->be, s->v_null);
  for (int h = 0; h < 2; h++) {
    for (int c = 0; c < MOSHI_LM_MAX_CONDITIONERS; c++)
      g_free (s->cond[h][c]);
    g_free (s->cond_vec[h]);
  }
  g_free (s->cache);
  moshi_lm_unref (s->lm);
  g_free (s);
}

MoshiLmSession *
moshi_lm_session_new (MoshiLm *lm, const MoshiLmSamplingParams *params, GError **error)
{
  const MoshiLmConfig *cfg = &lm->cfg;
  if (cfg->transformer.context <= 0) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
        "%s: the model has no attention context, which streaming needs for its KV cache", lm->path);
    return NULL;
  }
  if (params && cfg_on (params->cfg_coef) && cfg->n_conditioners == 0) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
        "%s: classifier-free guidance (cfg_coef %g) needs a model with conditioners", lm->path,
        params->cfg_coef);
    return NULL;
  }
  MoshiLmSession *s = g_new0 (MoshiLmSession, 1);
  s->lm = moshi_lm_ref (lm);
  if (params)
    s->params = *params;
  else
    moshi_lm_sampling_params_init (&s->params);
  for (int h = 0; h < 2; h++) {
    s->cond_vec[h] = g_new0 (float, cfg->dim);
    condition_vector (lm, s->cond[h], s->cond_vec[h], NULL);   /* no values: padding */
  }
  s->ct = moshi_lm_config_max_delay (cfg) + 2;
  s->cache = g_new (int32_t, moshi_lm_config_num_streams (cfg) * s->ct);
  s->capacity = cfg->transformer.context;
  gsize len = (gsize) lm->temporal.n_layers * s->capacity * kv_slot_bytes (lm);
  s->k_cache = lm->be->ops->alloc (lm->be, len, error);
  s->v_cache = s->k_cache ? lm->be->ops->alloc (lm->be, len, error) : NULL;
  if (s->v_cache == NULL) {
    moshi_lm_session_free (s);
    return NULL;
  }
  moshi_lm_session_reset (s);
  return s;
}

void
moshi_lm_session_set_sampling_params (MoshiLmSession *s, const MoshiLmSamplingParams *params)
{
  s->params = *params;
}

static gboolean
set_condition (MoshiLmSession *s, int half, const char *name, const char *value, GError **error)
{
  int c = conditioner_index (s->lm, name, error);
  if (c < 0)
    return FALSE;
  char *old = s->cond[half][c];
  s->cond[half][c] = g_strdup (value);
  g_autofree float *vec = g_new (float, s->lm->cfg.dim);
  if (!condition_vector (s->lm, s->cond[half], vec, error)) {
    g_free (s->cond[half][c]);
    s->cond[half][c] = old;
    return FALSE;
  }
  g_free (old);
  memcpy (s->cond_vec[half], vec, s->lm->cfg.dim * sizeof (float));
  return TRUE;
}

gboolean
moshi_lm_session_set_condition (MoshiLmSession *s, const char *name, const char *value,
    GError **error)
{
  return set_condition (s, 0, name, value, error);
}

gboolean
moshi_lm_session_set_null_condition (MoshiLmSession *s, const char *name, const char *value,
    GError **error)
{
  return set_condition (s, 1, name, value, error);
}

MoshiLm *
moshi_lm_session_get_model (MoshiLmSession *s)
{
  return s->lm;
}

int64_t
moshi_lm_session_steps (MoshiLmSession *s)
{
  return s->offset;
}

/* The device part of a streaming step over the step input in b->step_host: one upload, the
 * temporal pass, the text token sampled, the depformer passes each followed by its token
 * sampled and fed to the next, and the tokens (and text logits when asked for) copied back.
 * Nothing here waits for the device, so the whole can be recorded and replayed. */
static void
device_step (MoshiLmBatch *b, int n, int rows, gboolean want_logits)
{
  MoshiLm *lm = b->lm;
  const MoshiLmConfig *cfg = &lm->cfg;
  const MoshiBackendOps *ops = lm->be->ops;
  const StepLayout *L = &b->layout;
  int ld_tokens = 1 + cfg->dep_q;
  const MoshiSampler *samplers = (const MoshiSampler *) (b->step_dev + L->samplers);

  ops->upload (b->ex, b->step_dev, b->step_host, L->size);
  Caches caches = { NULL, 0, (const MoshiRowCache *) (b->step_dev + L->rc),
    (gsize) cfg->transformer.context * kv_slot_bytes (lm), cfg->transformer.context,
    lm->kv_dtype };
  temporal_forward (b, (const int32_t *) (b->step_dev + L->ids),
      (const float *) (b->step_dev + L->cond), rows, &caches);
  ops->sample (b->ex, b->tokens_dev, ld_tokens, b->ids, b->logits, cfg->text_card_out,
      cfg->text_card_out, samplers, n, 0);
  if (want_logits)
    ops->download_async (b->ex, b->text_logits_host, b->logits,
        (gsize) rows * cfg->text_card_out * sizeof (float));
  for (int k = 0; k < cfg->dep_q; k++) {
    depformer_forward (b, k, b->ids, rows);
    ops->sample (b->ex, b->tokens_dev + k + 1, ld_tokens, b->ids, b->logits, cfg->card,
        cfg->card, samplers, n, k + 1);
  }
  ops->download_async (b->ex, b->tokens_host, b->tokens_dev,
      (gsize) n * ld_tokens * sizeof (int32_t));
}

/* The shape of a step a recorded graph is valid for: the sessions' rows and the outputs. */
static int *
step_key (MoshiLmBatch *b, int n, gboolean want_logits)
{
  int *key = g_new (int, n + 3);
  key[0] = n;
  key[1] = want_logits;
  memcpy (key + 2, b->row_of, (n + 1) * sizeof (int));
  return key;
}

static gboolean
same_key (const int *a, const int *b)
{
  return a != NULL && b != NULL && a[0] == b[0]
      && memcmp (a + 1, b + 1, (a[0] + 2) * sizeof (int)) == 0;
}

/* Runs device_step: replays the recorded step when its shape comes again, records it the second
 * time a shape is seen (the first run sizes every scratch buffer), and otherwise runs the ops as
 * they come. A step that cannot be recorded turns recording off for the batch, with a message. */
static gboolean
run_step (MoshiLmBatch *b, int n, int rows, gboolean want_logits, GError **error)
{
  MoshiBackend *be = b->lm->be;
  const MoshiBackendOps *ops = be->ops;
  if (want_logits && b->text_logits_host == NULL) {
    b->text_logits_host = ops->host_alloc (be,
        (gsize) b->max_rows * b->lm->cfg.text_card_out * sizeof (float), error);
    if (b->text_logits_host == NULL)
      return FALSE;
  }
  if (!b->graphs) {
    device_step (b, n, rows, want_logits);
    return TRUE;
  }
  g_autofree int *key = step_key (b, n, want_logits);
  if (b->graph == NULL || !same_key (key, b->graph_key)) {
    /* A new shape may grow the exec's scratch buffers, freeing memory the recorded step still
     * points to: the recorded step goes, and is recorded again when its shape comes back. */
    if (b->graph != NULL) {
      if (!ops->synchronize (b->ex, error))
        return FALSE;
      ops->graph_free (be, b->graph);
      b->graph = NULL;
    }
    if (!same_key (key, b->warm_key)) {
      g_free (b->warm_key);
      b->warm_key = g_steal_pointer (&key);
      device_step (b, n, rows, want_logits);
      return TRUE;
    }
    g_autoptr (GError) why = NULL;
    MoshiGraph *graph = NULL;
    if (ops->capture_begin (b->ex, &why)) {
      device_step (b, n, rows, want_logits);
      graph = ops->capture_end (b->ex, &why);
    }
    if (graph == NULL) {
      g_message ("%s: steps are not recorded, each op is launched as it comes: %s", b->lm->path,
          why->message);
      b->graphs = FALSE;
      device_step (b, n, rows, want_logits);
      return TRUE;
    }
    b->graph = graph;
    g_free (b->graph_key);
    b->graph_key = g_steal_pointer (&key);
  }
  return ops->graph_launch (b->ex, b->graph, error);
}

gboolean
moshi_lm_batch_step (MoshiLmBatch *b, MoshiLmSession **sessions, int n,
    const int32_t *user_codes, int32_t *text_out, int32_t *audio_out, gboolean *returned,
    float *text_logits_out, GError **error)
{
  MoshiLm *lm = b->lm;
  const MoshiLmConfig *cfg = &lm->cfg;
  const MoshiBackendOps *ops = lm->be->ops;
  int streams = moshi_lm_config_num_streams (cfg);
  int n_user = cfg->n_q - cfg->dep_q;
  int max_delay = moshi_lm_config_max_delay (cfg);
  if (n < 1 || n > b->max_sessions) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
        "%d sessions in one step; this batch runs 1 to %d", n, b->max_sessions);
    return FALSE;
  }
  for (int r = 0; r < n; r++) {
    if (sessions[r]->lm != lm) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
          "session %d belongs to another model than this batch", r);
      return FALSE;
    }
    for (int r2 = 0; r2 < r; r2++)
      if (sessions[r2] == sessions[r]) {
        g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
            "session %d appears twice in one step", r);
        return FALSE;
      }
    for (int j = 0; j < n_user; j++) {
      int32_t c = user_codes[(gsize) r * n_user + j];
      if (c < -1 || c > cfg->card) {
        g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
            "user code %d of codebook %d (session %d) is outside [-1, %d]", c, j, r, cfg->card);
        return FALSE;
      }
    }
  }

  /* Rows: one per session, two (conditioned, then null) with classifier-free guidance. */
  int rows = 0;
  for (int r = 0; r < n; r++) {
    MoshiLmSession *s = sessions[r];
    if (s->offset > G_MAXINT - 1) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
          "session %d has run %" G_GINT64_FORMAT " steps; reset it", r, s->offset);
      return FALSE;
    }
    if (s->cfg_coef != 1.0f && s->k_null == NULL) {
      gsize len = (gsize) lm->temporal.n_layers * s->capacity * kv_slot_bytes (lm);
      s->k_null = ops->alloc (lm->be, len, error);
      if (s->k_null == NULL || (s->v_null = ops->alloc (lm->be, len, error)) == NULL) {
        dev_free (lm->be, s->k_null);
        s->k_null = NULL;
        return FALSE;
      }
    }
    b->row_of[r] = rows;
    rows += s->cfg_coef != 1.0f ? 2 : 1;
  }
  b->row_of[n] = rows;

  /* Delay line in, model input out (LMGen._step), into the step input. */
  const StepLayout *L = &b->layout;
  MoshiRowCache *rc = (MoshiRowCache *) (b->step_host + L->rc);
  MoshiSampler *samplers = (MoshiSampler *) (b->step_host + L->samplers);
  int32_t *ids = (int32_t *) (b->step_host + L->ids);
  float *cond = (float *) (b->step_host + L->cond);
  for (int r = 0; r < n; r++) {
    MoshiLmSession *s = sessions[r];
    for (int j = 0; j < n_user; j++) {
      int k = cfg->dep_q + 1 + j;
      s->cache[k * s->ct + (s->offset + cfg->delays[k]) % s->ct] = user_codes[(gsize) r * n_user + j];
    }
    for (int row = b->row_of[r]; row < b->row_of[r + 1]; row++) {
      for (int k = 0; k < streams; k++) {
        int initial = k == 0 ? cfg->text_card : cfg->card;
        int32_t v = s->offset <= cfg->delays[k] ? initial : s->cache[k * s->ct + s->offset % s->ct];
        if (k == 0 && cfg->hibiki && v == 2)
          v = 3;                /* text_emb row 2 := row 3 (model_type hibiki) */
        ids[(gsize) k * rows + row] = v;
      }
      int half = row - b->row_of[r];
      if (cfg->n_conditioners > 0)
        memcpy (cond + (gsize) row * cfg->dim, s->cond_vec[half], cfg->dim * sizeof (float));
      rc[row] = (MoshiRowCache) { half ? s->k_null : s->k_cache, half ? s->v_null : s->v_cache,
        (int32_t) s->offset, (int32_t) s->offset + 1 };
    }
    samplers[r] = (MoshiSampler) {
      .text_temperature = s->params.text_temperature,
      .text_top_k = s->params.text_topk,
      .audio_temperature = s->params.audio_temperature,
      .audio_top_k = s->params.audio_topk,
      .cfg_coef = s->cfg_coef,
      .row = b->row_of[r],
      .n_rows = b->row_of[r + 1] - b->row_of[r],
      .seed = s->seed,
      .step = s->offset,
    };
  }

  if (!run_step (b, n, rows, text_logits_out != NULL, error)
      || !ops->synchronize (b->ex, error))
    return FALSE;

  int text_vocab = cfg->text_card_out;
  for (int r = 0; text_logits_out && r < n; r++)
    memcpy (text_logits_out + (gsize) r * text_vocab,
        b->text_logits_host + (gsize) b->row_of[r] * text_vocab, text_vocab * sizeof (float));
  const int32_t *tokens = b->tokens_host;      /* [n][1 + dep_q] */

  /* Feed back everything generated, then read the frame max_delay steps behind. */
  for (int r = 0; r < n; r++) {
    MoshiLmSession *s = sessions[r];
    s->offset++;
    int slot = s->offset % s->ct;
    for (int k = 0; k <= cfg->dep_q; k++)
      s->cache[k * s->ct + slot] = tokens[(gsize) r * (1 + cfg->dep_q) + k];
    gboolean ready = s->offset > max_delay;
    returned[r] = ready;
    for (int k = 0; k <= cfg->dep_q; k++) {
      int32_t v = ready ? s->cache[k * s->ct + (s->offset - max_delay + cfg->delays[k]) % s->ct]
          : MOSHI_LM_UNGENERATED_TOKEN;
      if (k == 0)
        text_out[r] = v;
      else
        audio_out[(gsize) r * cfg->dep_q + k - 1] = v;
    }
  }
  return TRUE;
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
