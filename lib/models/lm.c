/* gst-moshi: the Moshi LM on the backend op table (see moshi-lm.h and spec/lm.md): the model,
 * its loading and the shared registry. The batch runner, teacher forcing, streaming and random
 * weights are in lm-*.c (lm-internal.h). */
#include "lm-internal.h"

#include "model-load.h"
#include "moshi-error.h"
#include "moshi-registry.h"
#include "moshi-safetensors.h"

#include <string.h>

/* ================================================================ model */

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

void
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

gboolean
lm_check_config (const MoshiLmConfig *cfg, const char *what, GError **error)
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
gboolean
lm_condition_vector (MoshiLm *lm, char *const *values, float *out, GError **error)
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

int
lm_conditioner_index (MoshiLm *lm, const char *name, GError **error)
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
gsize
lm_kv_slot_bytes (const MoshiLm *lm)
{
  const MoshiTransformerConfig *tr = &lm->cfg.transformer;
  return moshi_kv_slot_bytes (lm->kv_dtype, tr->num_heads, tr->d_model / tr->num_heads);
}

/* Loads the weights of lm->st on be, or on the backend it opens when be is NULL; frees lm on
 * failure. */
MoshiLm *
lm_finish_load (MoshiLm *lm, MoshiBackend *be, const MoshiLmLoadOptions *options, GError **error)
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
  if (!lm_check_config (&lm->cfg, config_path ? config_path : weights_path, error))
    goto fail;
  lm->st = moshi_safetensors_open (weights_path, error);
  if (lm->st == NULL)
    goto fail;
  MoshiLm *loaded = lm_finish_load (lm, be, options, error);
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

char *
moshi_lm_describe_device (const MoshiLm *lm)
{
  return moshi_backend_describe (lm->be);
}
MoshiBackend *moshi_lm_get_backend (const MoshiLm *lm) { return lm->be; }
int moshi_lm_user_codebooks (const MoshiLm *lm) { return lm->cfg.n_q - lm->cfg.dep_q; }
int moshi_lm_generated_codebooks (const MoshiLm *lm) { return lm->cfg.dep_q; }
int moshi_lm_text_padding_id (const MoshiLm *lm) { return lm->cfg.existing_text_padding_id; }
MoshiDType moshi_lm_get_kv_dtype (const MoshiLm *lm) { return lm->kv_dtype; }
MoshiLmWeights moshi_lm_get_weights (const MoshiLm *lm) { return lm->weights; }
