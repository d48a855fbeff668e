/* gst-moshi: Mimi on the backend op table (see moshi-mimi.h and spec/mimi.md). */
#include "mimi-internal.h"

#include "model-load.h"
#include "moshi-error.h"
#include "moshi-recorder.h"
#include "moshi-registry.h"
#include "moshi-safetensors.h"
#include "moshi-threadpool.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_FRAMES_PER_CALL 4
#define CODEBOOK_USAGE_EPS 1e-5f
#define LAYER_NORM_EPS 1e-5f

/* ================================================================ model */

typedef struct {
  MoshiWeight w, b;
  gboolean has_bias;
  int c_in, c_out, k, stride, dilation, groups;
  int history;            /* input columns kept between calls: (k - 1) * dilation + 1 - stride */
  gboolean replicate;     /* history of a new stream = copies of its first column */
} Conv;

typedef struct {
  MoshiWeight w, b;
  gboolean has_bias;
  int c_in, c_out, k, stride, groups;
} ConvTr;

typedef struct {
  Conv conv1;             /* k = residual kernel, dim -> dim / compress */
  Conv conv2;             /* k = 1, back to dim */
} ResBlock;

typedef struct {
  int channels;           /* width of the residual blocks of this stage */
  int n_res;
  ResBlock *res;
  Conv down;              /* encoder: channels -> 2 channels, stride ratio */
  ConvTr up;              /* decoder: 2 channels -> channels, stride ratio */
} Stage;

typedef struct {
  MoshiWeight in_proj, out_proj, norm1_w, norm1_b, norm2_w, norm2_b, linear1, linear2, scale1, scale2;
} Layer;

typedef struct {
  int n_layers;
  Layer *layers;
} Transformer;

struct _MoshiMimi {
  gint ref_count;
  char *cache_key;        /* set when the model is in the shared registry */
  MoshiMimiConfig cfg;
  char *path;
  MoshiSafetensors *st;
  MoshiBackend *be;

  int frame_size;
  int hop;
  int resample_stride;    /* encoder (transformer) steps per frame */
  int n_stages;

  Conv enc_conv0, enc_final;
  Stage enc_stages[MOSHI_MIMI_MAX_RATIOS];
  Transformer enc_tr, dec_tr;
  Conv downsample;
  ConvTr upsample;
  Conv dec_conv0, dec_final;
  Stage dec_stages[MOSHI_MIMI_MAX_RATIOS];

  MoshiWeight in_proj_first, in_proj_rest, out_proj_first, out_proj_rest;
  MoshiWeight codebooks, sq_norms;               /* all levels: [n_q, bins, dim], [n_q, bins] */
  MoshiWeight books_first, books_rest;           /* views into codebooks */
  MoshiWeight norms_first, norms_rest;
};

/* ---------------------------------------------------------------- loading */

typedef struct {
  MoshiMimi *m;
  GError **error;
} Loader;

static const MoshiTensorEntry *
find_tensor (Loader *ld, const char *const *names, int ndim, const int64_t *shape)
{
  for (int i = 0; names[i]; i++) {
    if (moshi_safetensors_lookup (ld->m->st, names[i]))
      return moshi_safetensors_require (ld->m->st, names[i], MOSHI_DTYPE_COUNT, ndim, shape,
          ld->error);
  }
  /* Report under the first (checkpoint) spelling. */
  return moshi_safetensors_require (ld->m->st, names[0], MOSHI_DTYPE_COUNT, ndim, shape,
      ld->error);
}

static gboolean
load_weight_alias (Loader *ld, MoshiWeight *w, const char *const *names, int ndim,
    const int64_t *shape)
{
  const MoshiTensorEntry *e = find_tensor (ld, names, ndim, shape);
  if (e == NULL)
    return FALSE;
  /* Mimi is small enough (about 80 M weights) to check whole: one infinity turns every output
   * sample into one (issue 14, defect 10). */
  if (!moshi_tensor_check_finite (e, ld->m->path, ld->error))
    return FALSE;
  if (!ld->m->be->ops->weight_from_host (ld->m->be, w, e, ld->m->st, ld->error)) {
    g_prefix_error (ld->error, "%s: ", ld->m->path);
    return FALSE;
  }
  return TRUE;
}

static gboolean
load_weight (Loader *ld, MoshiWeight *w, const char *name, int ndim, const int64_t *shape)
{
  const char *names[] = { name, NULL };
  return load_weight_alias (ld, w, names, ndim, shape);
}

static gboolean
load_conv (Loader *ld, Conv *c, const char *prefix, int c_in, int c_out, int k, int stride,
    int dilation, gboolean bias, gboolean replicate)
{
  c->c_in = c_in;
  c->c_out = c_out;
  c->k = k;
  c->stride = stride;
  c->dilation = dilation;
  c->groups = 1;
  c->history = (k - 1) * dilation + 1 - stride;
  c->replicate = replicate;
  c->has_bias = bias;
  g_autofree char *wname = g_strdup_printf ("%s.weight", prefix);
  int64_t wshape[] = { c_out, c_in, k };
  if (!load_weight (ld, &c->w, wname, 3, wshape))
    return FALSE;
  if (bias) {
    g_autofree char *bname = g_strdup_printf ("%s.bias", prefix);
    int64_t bshape[] = { c_out };
    if (!load_weight (ld, &c->b, bname, 1, bshape))
      return FALSE;
  }
  return TRUE;
}

static gboolean
load_convtr (Loader *ld, ConvTr *c, const char *prefix, int c_in, int c_out, int k, int stride,
    int groups, gboolean bias)
{
  c->c_in = c_in;
  c->c_out = c_out;
  c->k = k;
  c->stride = stride;
  c->groups = groups;
  c->has_bias = bias;
  g_autofree char *wname = g_strdup_printf ("%s.weight", prefix);
  int64_t wshape[] = { c_in, c_out / groups, k };
  if (!load_weight (ld, &c->w, wname, 3, wshape))
    return FALSE;
  if (bias) {
    g_autofree char *bname = g_strdup_printf ("%s.bias", prefix);
    int64_t bshape[] = { c_out };
    if (!load_weight (ld, &c->b, bname, 1, bshape))
      return FALSE;
  }
  return TRUE;
}

static gboolean
load_resblocks (Loader *ld, Stage *s, const char *seanet, int first_index)
{
  const MoshiMimiConfig *cfg = &ld->m->cfg;
  int hidden = s->channels / cfg->seanet.compress;
  s->n_res = cfg->seanet.n_residual_layers;
  s->res = g_new0 (ResBlock, s->n_res);
  int dilation = 1;
  for (int j = 0; j < s->n_res; j++, dilation *= cfg->seanet.dilation_base) {
    g_autofree char *p1 = g_strdup_printf ("%s.model.%d.block.1.conv.conv", seanet, first_index + j);
    g_autofree char *p3 = g_strdup_printf ("%s.model.%d.block.3.conv.conv", seanet, first_index + j);
    if (!load_conv (ld, &s->res[j].conv1, p1, s->channels, hidden,
            cfg->seanet.residual_kernel_size, 1, dilation, TRUE, FALSE)
        || !load_conv (ld, &s->res[j].conv2, p3, hidden, s->channels, 1, 1, 1, TRUE, FALSE))
      return FALSE;
  }
  return TRUE;
}

static gboolean
load_seanet (Loader *ld)
{
  MoshiMimi *m = ld->m;
  const MoshiMimiConfig *cfg = &m->cfg;
  int nf = cfg->seanet.n_filters;
  int n = cfg->seanet.n_ratios;

  /* Encoder: conv0, then per stage (ratios reversed) residual blocks, ELU, strided conv. */
  int idx = 0;
  if (!load_conv (ld, &m->enc_conv0, "encoder.model.0.conv.conv", cfg->channels, nf,
          cfg->seanet.kernel_size, 1, 1, TRUE, FALSE))
    return FALSE;
  idx = 1;
  int mult = 1;
  for (int s = 0; s < n; s++) {
    Stage *st = &m->enc_stages[s];
    int ratio = cfg->seanet.ratios[n - 1 - s];
    st->channels = mult * nf;
    if (!load_resblocks (ld, st, "encoder", idx))
      return FALSE;
    idx += st->n_res + 1;       /* the blocks, then the ELU */
    g_autofree char *p = g_strdup_printf ("encoder.model.%d.conv.conv", idx);
    if (!load_conv (ld, &st->down, p, mult * nf, 2 * mult * nf, 2 * ratio, ratio, 1, TRUE, FALSE))
      return FALSE;
    idx++;
    mult *= 2;
  }
  idx++;                        /* ELU */
  g_autofree char *enc_last = g_strdup_printf ("encoder.model.%d.conv.conv", idx);
  if (!load_conv (ld, &m->enc_final, enc_last, mult * nf, cfg->seanet.dimension,
          cfg->seanet.last_kernel_size, 1, 1, TRUE, FALSE))
    return FALSE;

  /* Decoder: conv0, then per stage ELU, transposed conv, residual blocks. */
  if (!load_conv (ld, &m->dec_conv0, "decoder.model.0.conv.conv", cfg->seanet.dimension,
          mult * nf, cfg->seanet.kernel_size, 1, 1, TRUE, FALSE))
    return FALSE;
  idx = 1;
  for (int s = 0; s < n; s++) {
    Stage *st = &m->dec_stages[s];
    int ratio = cfg->seanet.ratios[s];
    idx++;                      /* ELU */
    g_autofree char *p = g_strdup_printf ("decoder.model.%d.convtr.convtr", idx);
    if (!load_convtr (ld, &st->up, p, mult * nf, mult * nf / 2, 2 * ratio, ratio, 1, TRUE))
      return FALSE;
    idx++;
    st->channels = mult * nf / 2;
    if (!load_resblocks (ld, st, "decoder", idx))
      return FALSE;
    idx += st->n_res;
    mult /= 2;
  }
  idx++;                        /* ELU */
  g_autofree char *dec_last = g_strdup_printf ("decoder.model.%d.conv.conv", idx);
  return load_conv (ld, &m->dec_final, dec_last, nf, cfg->channels,
      cfg->seanet.last_kernel_size, 1, 1, TRUE, FALSE);
}

static gboolean
load_transformer (Loader *ld, Transformer *tr, const char *name)
{
  const MoshiMimiConfig *cfg = &ld->m->cfg;
  int d = cfg->transformer.d_model;
  int ff = cfg->transformer.dim_feedforward;
  tr->n_layers = cfg->transformer.num_layers;
  tr->layers = g_new0 (Layer, tr->n_layers);
  for (int l = 0; l < tr->n_layers; l++) {
    Layer *L = &tr->layers[l];
    g_autofree char *p = g_strdup_printf ("%s.transformer.layers.%d", name, l);
    g_autofree char *in_fused = g_strdup_printf ("%s.self_attn.in_proj_weight", p);
    g_autofree char *in_module = g_strdup_printf ("%s.self_attn.in_projs.0.weight", p);
    g_autofree char *out_ckpt = g_strdup_printf ("%s.self_attn.out_proj.weight", p);
    g_autofree char *out_module = g_strdup_printf ("%s.self_attn.out_projs.0.weight", p);
    g_autofree char *n1w = g_strdup_printf ("%s.norm1.weight", p);
    g_autofree char *n1b = g_strdup_printf ("%s.norm1.bias", p);
    g_autofree char *n2w = g_strdup_printf ("%s.norm2.weight", p);
    g_autofree char *n2b = g_strdup_printf ("%s.norm2.bias", p);
    g_autofree char *l1 = g_strdup_printf ("%s.linear1.weight", p);
    g_autofree char *l2 = g_strdup_printf ("%s.linear2.weight", p);
    g_autofree char *s1 = g_strdup_printf ("%s.layer_scale_1.scale", p);
    g_autofree char *s2 = g_strdup_printf ("%s.layer_scale_2.scale", p);
    const char *in_names[] = { in_fused, in_module, NULL };
    const char *out_names[] = { out_ckpt, out_module, NULL };
    int64_t qkv_shape[] = { 3 * d, d }, out_shape[] = { d, d }, vec[] = { d };
    int64_t l1_shape[] = { ff, d }, l2_shape[] = { d, ff };
    if (!load_weight_alias (ld, &L->in_proj, in_names, 2, qkv_shape)
        || !load_weight_alias (ld, &L->out_proj, out_names, 2, out_shape)
        || !load_weight (ld, &L->norm1_w, n1w, 1, vec)
        || !load_weight (ld, &L->norm1_b, n1b, 1, vec)
        || !load_weight (ld, &L->norm2_w, n2w, 1, vec)
        || !load_weight (ld, &L->norm2_b, n2b, 1, vec)
        || !load_weight (ld, &L->linear1, l1, 2, l1_shape)
        || !load_weight (ld, &L->linear2, l2, 2, l2_shape))
      return FALSE;
    if (cfg->transformer.layer_scale
        && (!load_weight (ld, &L->scale1, s1, 1, vec) || !load_weight (ld, &L->scale2, s2, 1, vec)))
      return FALSE;
  }
  return TRUE;
}

/* Reads one codebook level into book (bins x dim) and its squared norms. The stored tensors
 * are running sums; the codeword is embedding_sum / max(cluster_usage, eps). */
static gboolean
load_codebook (Loader *ld, const char *prefix, float *book, float *norms)
{
  MoshiMimi *m = ld->m;
  int bins = m->cfg.quantizer.bins, dim = m->cfg.quantizer.dimension;
  g_autofree char *sum_name = g_strdup_printf ("%s._codebook.embedding_sum", prefix);
  g_autofree char *sum_legacy1 = g_strdup_printf ("%s._codebook.embed_sum", prefix);
  g_autofree char *sum_legacy2 = g_strdup_printf ("%s._codebook.embed_avg", prefix);
  g_autofree char *usage_name = g_strdup_printf ("%s._codebook.cluster_usage", prefix);
  g_autofree char *usage_legacy = g_strdup_printf ("%s._codebook.cluster_size", prefix);
  const char *sum_names[] = { sum_name, sum_legacy1, sum_legacy2, NULL };
  const char *usage_names[] = { usage_name, usage_legacy, NULL };
  int64_t sum_shape[] = { bins, dim }, usage_shape[] = { bins };
  const MoshiTensorEntry *sum = find_tensor (ld, sum_names, 2, sum_shape);
  if (sum == NULL)
    return FALSE;
  const MoshiTensorEntry *usage = find_tensor (ld, usage_names, 1, usage_shape);
  if (usage == NULL)
    return FALSE;
  for (const MoshiTensorEntry *e = sum; e; e = (e == sum ? usage : NULL)) {
    if (e->dtype != MOSHI_DTYPE_F32 && e->dtype != MOSHI_DTYPE_BF16 && e->dtype != MOSHI_DTYPE_F16) {
      g_set_error (ld->error, MOSHI_ERROR, MOSHI_ERROR_DTYPE,
          "%s: tensor '%s' has dtype %s; codebooks must be F32, BF16 or F16", m->path, e->name,
          moshi_dtype_name (e->dtype));
      return FALSE;
    }
  }
  g_autofree float *u = g_new (float, bins);
  moshi_convert_to_f32 (u, usage->data, usage->dtype, bins);
  moshi_convert_to_f32 (book, sum->data, sum->dtype, (gsize) bins * dim);
  for (int b = 0; b < bins; b++) {
    if (!isfinite (u[b])) {
      g_set_error (ld->error, MOSHI_ERROR, MOSHI_ERROR_FORMAT,
          "%s: tensor '%s' has a non-finite value at index %d", m->path, usage->name, b);
      return FALSE;
    }
    float inv = 1.0f / MAX (u[b], CODEBOOK_USAGE_EPS);
    double norm = 0;
    float *e = book + (gsize) b * dim;
    for (int i = 0; i < dim; i++) {
      e[i] = e[i] * inv;
      norm += (double) e[i] * e[i];
    }
    if (!isfinite (norm)) {
      g_set_error (ld->error, MOSHI_ERROR, MOSHI_ERROR_FORMAT,
          "%s: tensor '%s' row %d is not finite", m->path, sum->name, b);
      return FALSE;
    }
    norms[b] = (float) norm;
  }
  return TRUE;
}

static void
weight_view (MoshiWeight *view, const MoshiWeight *all, gsize offset_elems, int64_t levels)
{
  *view = *all;
  view->owned = NULL;
  view->shape[0] = levels;
  view->data = (const float *) all->data + offset_elems;
}

static gboolean
load_quantizer (Loader *ld)
{
  MoshiMimi *m = ld->m;
  const MoshiMimiConfig *cfg = &m->cfg;
  int n_q = cfg->quantizer.n_q, bins = cfg->quantizer.bins, dim = cfg->quantizer.dimension;
  int d = cfg->seanet.dimension;
  int64_t in_shape[] = { dim, d, 1 }, out_shape[] = { d, dim, 1 };
  if (!load_weight (ld, &m->in_proj_first, "quantizer.rvq_first.input_proj.weight", 3, in_shape)
      || !load_weight (ld, &m->in_proj_rest, "quantizer.rvq_rest.input_proj.weight", 3, in_shape)
      || !load_weight (ld, &m->out_proj_first, "quantizer.rvq_first.output_proj.weight", 3, out_shape)
      || !load_weight (ld, &m->out_proj_rest, "quantizer.rvq_rest.output_proj.weight", 3, out_shape))
    return FALSE;

  gsize book_len = (gsize) bins * dim;
  g_autofree float *books = g_try_malloc ((gsize) n_q * book_len * sizeof (float));
  g_autofree float *norms = g_try_malloc ((gsize) n_q * bins * sizeof (float));
  if (books == NULL || norms == NULL) {
    g_set_error (ld->error, MOSHI_ERROR, MOSHI_ERROR_IO, "%s: out of memory for the codebooks",
        m->path);
    return FALSE;
  }
  for (int l = 0; l < n_q; l++) {
    g_autofree char *prefix = l == 0 ? g_strdup ("quantizer.rvq_first.vq.layers.0")
        : g_strdup_printf ("quantizer.rvq_rest.vq.layers.%d", l - 1);
    if (!load_codebook (ld, prefix, books + l * book_len, norms + (gsize) l * bins))
      return FALSE;
  }
  int64_t books_shape[] = { n_q, bins, dim }, norms_shape[] = { n_q, bins };
  if (!m->be->ops->weight_from_f32 (m->be, &m->codebooks, books, 3, books_shape, ld->error)
      || !m->be->ops->weight_from_f32 (m->be, &m->sq_norms, norms, 2, norms_shape, ld->error))
    return FALSE;
  weight_view (&m->books_first, &m->codebooks, 0, 1);
  weight_view (&m->books_rest, &m->codebooks, book_len, n_q - 1);
  weight_view (&m->norms_first, &m->sq_norms, 0, 1);
  weight_view (&m->norms_rest, &m->sq_norms, bins, n_q - 1);
  return TRUE;
}

static void
release_conv (MoshiBackend *be, Conv *c)
{
  be->ops->weight_release (be, &c->w);
  be->ops->weight_release (be, &c->b);
}

static void
release_stage (MoshiBackend *be, Stage *s)
{
  for (int j = 0; j < s->n_res; j++) {
    release_conv (be, &s->res[j].conv1);
    release_conv (be, &s->res[j].conv2);
  }
  g_free (s->res);
  release_conv (be, &s->down);
  be->ops->weight_release (be, &s->up.w);
  be->ops->weight_release (be, &s->up.b);
}

static void
release_transformer (MoshiBackend *be, Transformer *tr)
{
  for (int l = 0; l < tr->n_layers; l++) {
    MoshiWeight *ws[] = { &tr->layers[l].in_proj, &tr->layers[l].out_proj, &tr->layers[l].norm1_w,
      &tr->layers[l].norm1_b, &tr->layers[l].norm2_w, &tr->layers[l].norm2_b,
      &tr->layers[l].linear1, &tr->layers[l].linear2, &tr->layers[l].scale1, &tr->layers[l].scale2 };
    for (guint i = 0; i < G_N_ELEMENTS (ws); i++)
      be->ops->weight_release (be, ws[i]);
  }
  g_free (tr->layers);
}

static void
mimi_free (MoshiMimi *m)
{
  MoshiBackend *be = m->be;
  if (be) {
    release_conv (be, &m->enc_conv0);
    release_conv (be, &m->enc_final);
    release_conv (be, &m->dec_conv0);
    release_conv (be, &m->dec_final);
    release_conv (be, &m->downsample);
    be->ops->weight_release (be, &m->upsample.w);
    for (int s = 0; s < MOSHI_MIMI_MAX_RATIOS; s++) {
      release_stage (be, &m->enc_stages[s]);
      release_stage (be, &m->dec_stages[s]);
    }
    release_transformer (be, &m->enc_tr);
    release_transformer (be, &m->dec_tr);
    MoshiWeight *ws[] = { &m->in_proj_first, &m->in_proj_rest, &m->out_proj_first,
      &m->out_proj_rest, &m->codebooks, &m->sq_norms };
    for (guint i = 0; i < G_N_ELEMENTS (ws); i++)
      be->ops->weight_release (be, ws[i]);
    moshi_backend_unref (be);
  }
  if (m->st)
    moshi_safetensors_unref (m->st);
  g_free (m->cache_key);
  g_free (m->path);
  g_free (m);
}

/* be: the backend when the caller has opened it already, else NULL: opened here, after the
 * config and the checkpoint (whose errors come first). */
static MoshiMimi *
mimi_load_on (MoshiBackend *be, const char *weights_path, const char *config_path,
    const MoshiMimiLoadOptions *options, GError **error)
{
  g_return_val_if_fail (weights_path != NULL, NULL);
  MoshiMimi *m = g_new0 (MoshiMimi, 1);
  m->ref_count = 1;
  m->path = g_strdup (weights_path);
  if (config_path) {
    if (!moshi_mimi_config_load (&m->cfg, config_path, error))
      goto fail;
  } else {
    moshi_mimi_config_init_default (&m->cfg);
  }
  m->frame_size = moshi_mimi_config_frame_size (&m->cfg);
  m->hop = moshi_mimi_config_hop_length (&m->cfg);
  m->resample_stride = moshi_mimi_config_resample_stride (&m->cfg);
  m->n_stages = m->cfg.seanet.n_ratios;

  m->st = moshi_safetensors_open (weights_path, error);
  if (m->st == NULL)
    goto fail;
  m->be = be ? moshi_backend_ref (be)
      : moshi_backend_open (options ? options->device : MOSHI_DEVICE_AUTO, error);
  if (m->be == NULL)
    goto fail;

  Loader ld = { m, error };
  if (!load_seanet (&ld)
      || !load_transformer (&ld, &m->enc_tr, "encoder_transformer")
      || !load_transformer (&ld, &m->dec_tr, "decoder_transformer")
      || !load_quantizer (&ld)) {
    moshi_model_load_error_hint (error, "Mimi", "the released Mimi", weights_path, config_path);
    goto fail;
  }
  if (m->resample_stride > 1) {
    int d = m->cfg.seanet.dimension, s = m->resample_stride;
    if (!load_conv (&ld, &m->downsample, "downsample.conv.conv.conv", d, d, 2 * s, s, 1, FALSE, TRUE)
        || !load_convtr (&ld, &m->upsample, "upsample.convtr.convtr.convtr", d, d, 2 * s, s, d, FALSE)) {
      moshi_model_load_error_hint (error, "Mimi", "the released Mimi", weights_path, config_path);
      goto fail;
    }
  }
  return m;

fail:
  mimi_free (m);
  return NULL;
}

MoshiMimi *
moshi_mimi_load (const char *weights_path, const char *config_path,
    const MoshiMimiLoadOptions *options, GError **error)
{
  return mimi_load_on (NULL, weights_path, config_path, options, error);
}

static MoshiRegistry shared_models = MOSHI_REGISTRY_INIT;

static gpointer
load_for_registry (const char *weights, const char *config, gconstpointer shared, GError **error)
{
  const MoshiSharedLoad *s = shared;
  return mimi_load_on (s->be, weights, config, s->options, error);
}

static const MoshiRegistryType registry_type = {
  load_for_registry, G_STRUCT_OFFSET (MoshiMimi, ref_count), G_STRUCT_OFFSET (MoshiMimi, cache_key)
};

MoshiMimi *
moshi_mimi_load_shared (const char *weights_path, const char *config_path,
    const MoshiMimiLoadOptions *options, GError **error)
{
  /* Keyed by the device actually used, so that device=auto and device=cpu share one copy
   * on a machine without a GPU. */
  MoshiDevice device = options ? options->device : MOSHI_DEVICE_AUTO;
  g_autoptr (MoshiBackend) be = moshi_backend_open (device, error);
  if (be == NULL)
    return NULL;
  return moshi_mimi_load_on_backend (be, TRUE, weights_path, config_path, options, error);
}

MoshiMimi *
moshi_mimi_load_on_backend (MoshiBackend *be, gboolean shared, const char *weights_path,
    const char *config_path, const MoshiMimiLoadOptions *options, GError **error)
{
  if (!shared)
    return mimi_load_on (be, weights_path, config_path, options, error);
  MoshiSharedLoad load = { options, be };
  return moshi_registry_load (&shared_models, &registry_type, be->name, weights_path, config_path,
      &load, error);
}

MoshiMimi *
moshi_mimi_ref (MoshiMimi *mimi)
{
  g_atomic_int_inc (&mimi->ref_count);
  return mimi;
}

void
moshi_mimi_unref (MoshiMimi *mimi)
{
  if (mimi == NULL)
    return;
  if (mimi->cache_key == NULL) {
    if (g_atomic_int_dec_and_test (&mimi->ref_count))
      mimi_free (mimi);
    return;
  }
  if (moshi_registry_unref (&shared_models, mimi->cache_key, &mimi->ref_count))
    mimi_free (mimi);
}

const MoshiMimiConfig *moshi_mimi_get_config (const MoshiMimi *m) { return &m->cfg; }
int moshi_mimi_sample_rate (const MoshiMimi *m) { return m->cfg.sample_rate; }
int moshi_mimi_frame_size (const MoshiMimi *m) { return m->frame_size; }
double moshi_mimi_frame_rate (const MoshiMimi *m) { return m->cfg.frame_rate; }
int moshi_mimi_max_codebooks (const MoshiMimi *m) { return m->cfg.quantizer.n_q; }
int moshi_mimi_codebook_size (const MoshiMimi *m) { return m->cfg.quantizer.bins; }
MoshiBackend *moshi_mimi_get_backend (const MoshiMimi *m) { return m->be; }
MoshiDevice moshi_mimi_get_device (const MoshiMimi *m) { return m->be->device; }

char *
moshi_mimi_describe_device (const MoshiMimi *m)
{
  return moshi_backend_describe (m->be);
}
const char *moshi_mimi_get_path (const MoshiMimi *m) { return m->path; }

/* ================================================================ session */

/* Input window of a causal conv: `history` carried columns followed by room for the new input. */
typedef struct {
  float *buf;
  int ld;
  gboolean first;
} ConvState;

/* A transformer's ring KV caches: every layer's in one block per K and V (layer l at
 * l * capacity * d), the layout the row ops (rope_rows, kv_write_rows, attention_rows) address
 * from a MoshiRowCache table. */
typedef struct {
  float *k_cache, *v_cache;
  int pos;                /* steps since start or reset: RoPE offset and KV end offset */
} TrState;

/* A transformer pass's activations, time-major: x [rows, d] carries the residual stream. */
typedef struct {
  float *x, *h, *qkv, *o, *ff;
} TrScratch;

typedef struct {
  ConvState *res_conv1;   /* per residual block */
  ConvState down;         /* encoder */
  float *carry;           /* decoder transposed conv */
  float *x;               /* stage activations [channels, cols] */
  float *hidden;          /* residual branch [channels / compress, cols] */
  int cols;               /* max columns per call at this stage's rate (residual blocks) */
} StageState;

/* The device work of one call (encode_chunk or decode_chunk), as run_call runs it. */
typedef struct {
  gboolean decode;
  int n_frames;
  int num_codebooks;
  gboolean first;         /* a first-frame branch runs (replicate padding): never recorded */
} Call;

struct _MoshiMimiSession {
  MoshiMimi *m;
  MoshiExec *ex;
  int n_threads;          /* of ex, as asked: 1 lets a batch run this session's convs on a pool */
  guint serial;           /* unique in the process: names the session in a batch's shapes */
  int num_codebooks;
  int max_frames;
  int kv_capacity;

  /* encoder */
  ConvState enc_conv0, enc_final, downsample;
  StageState enc[MOSHI_MIMI_MAX_RATIOS];
  float *enc_latent;      /* final conv output [d, steps] */
  TrState enc_tr;
  float *q_latent;        /* [frames, d] */
  float *q_residual;      /* [frames, dim] */
  int32_t *codes_dev;     /* [n_q, frames] */
  guint8 *enc_in_host;    /* pinned mirror of enc_conv0.buf: a call's PCM and row table */
  int32_t *codes_host;    /* pinned, [num_codebooks, frames]: one chunk's codes */

  /* decoder */
  guint8 *dec_in, *dec_in_host; /* a call's codes and row table (device, pinned mirror) */
  float *dq;              /* [frames, dim] */
  float *dq_proj;         /* [frames, d] */
  float *dq_cols;         /* [d, frames] */
  float *up_carry;
  float *dec_latent;      /* upsampled [d, steps] */
  TrState dec_tr;
  ConvState dec_conv0, dec_final;
  float *dec_x0;          /* dec conv0 output [C0, steps] */
  StageState dec[MOSHI_MIMI_MAX_RATIOS];
  float *pcm_dev;
  float *pcm_host;        /* pinned */

  /* transformer scratch, shared by both directions */
  TrScratch tr;

  MoshiRecorder *rec;     /* encode, decode: see run_call */
};

typedef struct {
  MoshiBackend *be;
  GError **error;
  gboolean failed;
  gboolean device_failed;       /* what failed was device memory */
  guint64 device_bytes;         /* asked for, the failed and the later ones included */
  guint64 unmet_bytes;          /* of those, the failed and the later ones */
} Alloc;

static void *
dev_alloc_bytes (Alloc *a, gsize bytes)
{
  /* counted after a failure too: the message says what the whole session needs */
  a->device_bytes += bytes;
  if (a->failed) {
    a->unmet_bytes += bytes;
    return NULL;
  }
  MoshiBackend *be = a->be;
  void *p = be->ops->alloc (be, bytes, a->error);
  if (p == NULL) {
    a->failed = a->device_failed = TRUE;
    a->unmet_bytes += bytes;
  }
  return p;
}

static float *
dev_alloc (Alloc *a, gsize n_floats)
{
  return dev_alloc_bytes (a, n_floats * sizeof (float));
}

static void *
host_alloc (Alloc *a, gsize bytes)
{
  if (a->failed)
    return NULL;
  MoshiBackend *be = a->be;
  void *p = be->ops->host_alloc (be, bytes, a->error);
  if (p == NULL)
    a->failed = TRUE;
  return p;
}

static void
conv_state_init (Alloc *a, ConvState *cs, const Conv *c, int max_in)
{
  cs->ld = c->history + max_in;
  cs->buf = dev_alloc (a, (gsize) c->c_in * cs->ld);
  cs->first = TRUE;
}

static void
tr_state_init (Alloc *a, TrState *ts, const Transformer *tr, int capacity, int d)
{
  ts->k_cache = dev_alloc (a, (gsize) tr->n_layers * capacity * d);
  ts->v_cache = dev_alloc (a, (gsize) tr->n_layers * capacity * d);
  ts->pos = 0;
}

static void
tr_scratch_init (Alloc *a, TrScratch *sc, int rows, int d, int ff)
{
  sc->x = dev_alloc (a, (gsize) rows * d);
  sc->h = dev_alloc (a, (gsize) rows * d);
  sc->qkv = dev_alloc (a, (gsize) rows * 3 * d);
  sc->o = dev_alloc (a, (gsize) rows * d);
  sc->ff = dev_alloc (a, (gsize) rows * ff);
}

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

static void
stage_state_clear (MoshiBackend *be, StageState *ss, const Stage *st)
{
  if (ss->res_conv1) {
    for (int j = 0; j < st->n_res; j++)
      dev_free (be, ss->res_conv1[j].buf);
    g_free (ss->res_conv1);
  }
  dev_free (be, ss->down.buf);
  dev_free (be, ss->carry);
  dev_free (be, ss->x);
  dev_free (be, ss->hidden);
}

void
moshi_mimi_session_free (MoshiMimiSession *s)
{
  if (s == NULL)
    return;
  MoshiMimi *m = s->m;
  MoshiBackend *be = m->be;
  moshi_recorder_free (s->rec);
  void *bufs[] = { s->enc_conv0.buf, s->enc_final.buf, s->downsample.buf, s->enc_latent,
    s->q_latent, s->q_residual, s->codes_dev, s->dec_in, s->dq, s->dq_proj, s->dq_cols,
    s->up_carry, s->dec_latent, s->dec_conv0.buf, s->dec_final.buf, s->dec_x0, s->pcm_dev,
    s->tr.x, s->tr.h, s->tr.qkv, s->tr.o, s->tr.ff, s->enc_tr.k_cache, s->enc_tr.v_cache,
    s->dec_tr.k_cache, s->dec_tr.v_cache };
  for (guint i = 0; i < G_N_ELEMENTS (bufs); i++)
    dev_free (be, bufs[i]);
  void *host_bufs[] = { s->enc_in_host, s->codes_host, s->dec_in_host, s->pcm_host };
  for (guint i = 0; i < G_N_ELEMENTS (host_bufs); i++)
    host_free (be, host_bufs[i]);
  for (int i = 0; i < m->n_stages; i++) {
    stage_state_clear (be, &s->enc[i], &m->enc_stages[i]);
    stage_state_clear (be, &s->dec[i], &m->dec_stages[i]);
  }
  moshi_exec_free (s->ex);
  moshi_mimi_unref (m);
  g_free (s);
}

static gsize
align16 (gsize n)
{
  return (n + 15) & ~(gsize) 15;
}

/* Where a call's input lies in its device block and pinned mirror (bytes): one upload covers
 * [in, end), the transformer's row table starts at rc. */
typedef struct {
  gsize in, rc, end;
} CallLayout;

/* Encode: the block is enc_conv0's window (mono: one row of history + new columns), so the PCM
 * lands where the first conv reads it, without a copy; the row table follows the call's
 * columns. */
static CallLayout
encode_layout (const MoshiMimiSession *s, int n_frames)
{
  const MoshiMimi *m = s->m;
  int cols = n_frames * m->frame_size, steps = n_frames * m->resample_stride;
  gsize in = (gsize) m->enc_conv0.history * sizeof (float);
  gsize rc = align16 (in + (gsize) cols * sizeof (float));
  return (CallLayout) { in, rc, rc + (gsize) steps * sizeof (MoshiRowCache) };
}

/* Decode: the codes [num_codebooks, n_frames], then the row table. */
static CallLayout
decode_layout (const MoshiMimiSession *s, int num_codebooks, int n_frames)
{
  int steps = n_frames * s->m->resample_stride;
  gsize rc = align16 ((gsize) num_codebooks * n_frames * sizeof (int32_t));
  return (CallLayout) { 0, rc, rc + (gsize) steps * sizeof (MoshiRowCache) };
}

MoshiMimiSession *
moshi_mimi_session_new (MoshiMimi *m, const MoshiMimiSessionOptions *options, GError **error)
{
  MoshiMimiSessionOptions defaults = { 0 };
  if (options == NULL)
    options = &defaults;
  int n_q = m->cfg.quantizer.n_q;
  int num_codebooks = options->num_codebooks ? options->num_codebooks : MIN (8, n_q);
  if (num_codebooks < 1 || num_codebooks > n_q) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
        "num-codebooks=%d is out of range: %s has %d codebooks", num_codebooks, m->path, n_q);
    return NULL;
  }
  int max_frames = options->max_frames_per_call ? options->max_frames_per_call : DEFAULT_FRAMES_PER_CALL;
  if (max_frames < 1 || max_frames > 4096) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
        "max_frames_per_call=%d is out of range [1, 4096]", max_frames);
    return NULL;
  }
  /* what the exec takes (cuBLAS's workspace) counts in what a session needs */
  guint64 free_before = 0;
  gboolean known = moshi_backend_free_memory (m->be, &free_before);
  MoshiExec *ex = moshi_exec_new (m->be, options->n_threads, error);
  if (ex == NULL)
    return NULL;

  MoshiMimiSession *s = g_new0 (MoshiMimiSession, 1);
  s->m = moshi_mimi_ref (m);
  s->ex = ex;
  s->n_threads = options->n_threads;
  /* not the address, which a later session may reuse with other buffers */
  static gint serials;
  s->serial = (guint) g_atomic_int_add (&serials, 1);
  s->num_codebooks = num_codebooks;
  s->max_frames = max_frames;
  int steps = max_frames * m->resample_stride;
  int context = m->cfg.transformer.context;
  s->kv_capacity = options->full_context ? context + steps - 1 : context;
  s->rec = moshi_recorder_new (ex, 2, TRUE, "Mimi frames", m->path);

  const MoshiMimiConfig *cfg = &m->cfg;
  int d = cfg->seanet.dimension, dim = cfg->quantizer.dimension;
  int ff = cfg->transformer.dim_feedforward;
  Alloc a = { .be = m->be, .error = error };

  /* Encoder buffers, stage by stage from the input rate down. The first conv's window is the
   * encoder's input block (encode_layout; the config allows mono only). */
  int cols = max_frames * m->frame_size;
  g_assert (m->enc_conv0.c_in == 1);
  s->enc_conv0.ld = m->enc_conv0.history + cols;
  s->enc_conv0.first = TRUE;
  gsize enc_in_bytes = encode_layout (s, max_frames).end;
  s->enc_conv0.buf = dev_alloc_bytes (&a, enc_in_bytes);
  s->enc_in_host = host_alloc (&a, enc_in_bytes);
  for (int i = 0; i < m->n_stages; i++) {
    const Stage *st = &m->enc_stages[i];
    StageState *ss = &s->enc[i];
    ss->cols = cols;
    ss->res_conv1 = g_new0 (ConvState, st->n_res);
    for (int j = 0; j < st->n_res; j++)
      conv_state_init (&a, &ss->res_conv1[j], &st->res[j].conv1, cols);
    ss->x = dev_alloc (&a, (gsize) st->channels * cols);
    ss->hidden = dev_alloc (&a, (gsize) st->channels / cfg->seanet.compress * cols);
    conv_state_init (&a, &ss->down, &st->down, cols);
    cols /= st->down.stride;
  }
  /* After the last stage the next stage's x holds the strided conv output; keep one for it. */
  s->enc_latent = dev_alloc (&a, (gsize) m->enc_final.c_in * steps);
  conv_state_init (&a, &s->enc_final, &m->enc_final, steps);
  if (m->resample_stride > 1)
    conv_state_init (&a, &s->downsample, &m->downsample, steps);
  tr_state_init (&a, &s->enc_tr, &m->enc_tr, s->kv_capacity, d);
  s->q_latent = dev_alloc (&a, (gsize) max_frames * d);
  s->q_residual = dev_alloc (&a, (gsize) max_frames * dim);
  s->codes_dev = dev_alloc_bytes (&a, (gsize) n_q * max_frames * sizeof (int32_t));
  s->codes_host = host_alloc (&a, (gsize) num_codebooks * max_frames * sizeof (int32_t));

  /* Decoder buffers. */
  gsize dec_in_bytes = decode_layout (s, n_q, max_frames).end;
  s->dec_in = dev_alloc_bytes (&a, dec_in_bytes);
  s->dec_in_host = host_alloc (&a, dec_in_bytes);
  s->dq = dev_alloc (&a, (gsize) max_frames * dim);
  s->dq_proj = dev_alloc (&a, (gsize) max_frames * d);
  s->dq_cols = dev_alloc (&a, (gsize) d * max_frames);
  if (m->resample_stride > 1)
    s->up_carry = dev_alloc (&a, (gsize) d * (m->upsample.k - m->upsample.stride));
  s->dec_latent = dev_alloc (&a, (gsize) d * steps);
  tr_state_init (&a, &s->dec_tr, &m->dec_tr, s->kv_capacity, d);
  conv_state_init (&a, &s->dec_conv0, &m->dec_conv0, steps);
  s->dec_x0 = dev_alloc (&a, (gsize) m->dec_conv0.c_out * steps);
  cols = steps;
  for (int i = 0; i < m->n_stages; i++) {
    const Stage *st = &m->dec_stages[i];
    StageState *ss = &s->dec[i];
    ss->carry = dev_alloc (&a, (gsize) st->up.c_out * (st->up.k - st->up.stride));
    cols *= st->up.stride;
    ss->cols = cols;
    ss->x = dev_alloc (&a, (gsize) st->channels * cols);
    ss->hidden = dev_alloc (&a, (gsize) st->channels / cfg->seanet.compress * cols);
    ss->res_conv1 = g_new0 (ConvState, st->n_res);
    for (int j = 0; j < st->n_res; j++)
      conv_state_init (&a, &ss->res_conv1[j], &st->res[j].conv1, cols);
  }
  conv_state_init (&a, &s->dec_final, &m->dec_final, cols);
  s->pcm_dev = dev_alloc (&a, (gsize) cols * cfg->channels);
  s->pcm_host = host_alloc (&a, (gsize) cols * cfg->channels * sizeof (float));

  tr_scratch_init (&a, &s->tr, steps, d, ff);

  if (a.failed) {
    guint64 needed = a.device_bytes, free_now = 0;
    if (known && moshi_backend_free_memory (m->be, &free_now) && free_before > free_now)
      needed = free_before - free_now + a.unmet_bytes;
    moshi_mimi_session_free (s);
    if (a.device_failed)
      moshi_backend_explain_no_memory (m->be, error, "another Mimi stream's buffers and KV "
          "caches", needed, "lower max-conversations (moshidialog) or max-streams "
          "(mimienc, mimidec)");
    return NULL;
  }
  return s;
}

MoshiMimi *
moshi_mimi_session_get_model (MoshiMimiSession *s)
{
  return s->m;
}

int
moshi_mimi_session_num_codebooks (MoshiMimiSession *s)
{
  return s->num_codebooks;
}

static void
conv_state_reset (MoshiExec *ex, ConvState *cs, const Conv *c)
{
  for (int r = 0; r < c->c_in && c->history > 0; r++)
    ex->backend->ops->zero (ex, cs->buf + (gsize) r * cs->ld, c->history * sizeof (float));
  cs->first = TRUE;
}

static void
tr_state_reset (TrState *ts)
{
  /* Old cache rows stay but fall out of the mask: slots at or past the end offset are invalid. */
  ts->pos = 0;
}

void
moshi_mimi_session_reset_encoder (MoshiMimiSession *s)
{
  MoshiMimi *m = s->m;
  conv_state_reset (s->ex, &s->enc_conv0, &m->enc_conv0);
  for (int i = 0; i < m->n_stages; i++) {
    for (int j = 0; j < m->enc_stages[i].n_res; j++)
      conv_state_reset (s->ex, &s->enc[i].res_conv1[j], &m->enc_stages[i].res[j].conv1);
    conv_state_reset (s->ex, &s->enc[i].down, &m->enc_stages[i].down);
  }
  conv_state_reset (s->ex, &s->enc_final, &m->enc_final);
  if (m->resample_stride > 1)
    conv_state_reset (s->ex, &s->downsample, &m->downsample);
  tr_state_reset (&s->enc_tr);
}

void
moshi_mimi_session_reset_decoder (MoshiMimiSession *s)
{
  MoshiMimi *m = s->m;
  const MoshiBackendOps *ops = m->be->ops;
  if (m->resample_stride > 1)
    ops->zero (s->ex, s->up_carry,
        (gsize) m->cfg.seanet.dimension * (m->upsample.k - m->upsample.stride) * sizeof (float));
  tr_state_reset (&s->dec_tr);
  conv_state_reset (s->ex, &s->dec_conv0, &m->dec_conv0);
  for (int i = 0; i < m->n_stages; i++) {
    const Stage *st = &m->dec_stages[i];
    ops->zero (s->ex, s->dec[i].carry, (gsize) st->up.c_out * (st->up.k - st->up.stride) * sizeof (float));
    for (int j = 0; j < st->n_res; j++)
      conv_state_reset (s->ex, &s->dec[i].res_conv1[j], &st->res[j].conv1);
  }
  conv_state_reset (s->ex, &s->dec_final, &m->dec_final);
}

void
moshi_mimi_session_reset (MoshiMimiSession *s)
{
  moshi_mimi_session_reset_encoder (s);
  moshi_mimi_session_reset_decoder (s);
}

/* ---------------------------------------------------------------- building blocks */

/* Columns where new input goes in a conv window. */
static inline float *
window_input (ConvState *cs, const Conv *c)
{
  return cs->buf + c->history;
}

/* Runs a causal conv over its window holding t_in new columns, then keeps the last `history`
 * columns for the next call. The first-frame branch is host control flow: run_call never
 * records a call that takes it (first_frame_pending), so clearing `first` while recording a
 * steady-state call changes nothing. */
static void
conv_step (MoshiExec *ex, const Conv *c, ConvState *cs, int t_in, float *dst, int ld_dst, float beta)
{
  const MoshiBackendOps *ops = ex->backend->ops;
  if (c->replicate && cs->first) {
    for (int j = 0; j < c->history; j++)
      ops->copy_2d (ex, cs->buf + j, cs->ld, cs->buf + c->history, cs->ld, c->c_in, 1);
  }
  cs->first = FALSE;
  g_assert (t_in % c->stride == 0);
  ops->conv1d (ex, dst, ld_dst, cs->buf, cs->ld, &c->w, c->has_bias ? &c->b : NULL, c->stride,
      c->dilation, 1, t_in / c->stride, beta, 1, 0, 0);
  if (c->history > 0)
    ops->copy_2d (ex, cs->buf, cs->ld, cs->buf + t_in, cs->ld, c->c_in, c->history);
}

/* x = x + conv2(ELU(conv1(ELU(x)))) over `cols` columns, for each residual block. */
static void
res_blocks (MoshiExec *ex, const Stage *st, StageState *ss, int cols)
{
  const MoshiBackendOps *ops = ex->backend->ops;
  for (int j = 0; j < st->n_res; j++) {
    const ResBlock *rb = &st->res[j];
    ConvState *cs = &ss->res_conv1[j];
    ops->elu_2d (ex, window_input (cs, &rb->conv1), cs->ld, ss->x, ss->cols, st->channels, cols);
    conv_step (ex, &rb->conv1, cs, cols, ss->hidden, ss->cols, 0.0f);
    ops->elu_2d (ex, ss->hidden, ss->cols, ss->hidden, ss->cols, rb->conv1.c_out, cols);
    ops->conv1d (ex, ss->x, ss->cols, ss->hidden, ss->cols, &rb->conv2.w, &rb->conv2.b, 1, 1, 1,
        cols, 1.0f, 1, 0, 0);
  }
}

/* Fills a transformer call's row table: its t rows are the session's one sequence at positions
 * pos .. pos + t - 1, each attending over the ring up to end = pos + t (causally by position). */
static void
fill_rows (MoshiRowCache *rc, const TrState *ts, int t)
{
  for (int i = 0; i < t; i++)
    rc[i] = (MoshiRowCache) { ts->k_cache, ts->v_cache, ts->pos + i, ts->pos + t };
}

/* Pre-norm transformer over the rows time-major rows of sc->x, positions and caches from the
 * device row table rc (fill_rows): nothing here depends on the host's position, so a recorded
 * call replays at any position, and each positional op is one launch for all rows. The rows may
 * belong to many sessions (a batch, whose caches share kv_capacity): every op but the linears
 * treats each row on its own, and each linear reads its weight once for all of them. */
static void
transformer_rows (MoshiExec *ex, const MoshiMimi *m, const Transformer *tr, const TrScratch *sc,
    int rows, const MoshiRowCache *rc, int kv_capacity, int skip)
{
  const MoshiBackendOps *ops = ex->backend->ops;
  const MoshiMimiConfig *cfg = &m->cfg;
  int d = cfg->transformer.d_model;
  int heads = cfg->transformer.num_heads;
  int head_dim = d / heads;
  int ff = cfg->transformer.dim_feedforward;
  float scale = 1.0f / sqrtf ((float) head_dim);
  float max_period = (float) cfg->transformer.max_period;
  gsize layer_stride = (gsize) kv_capacity * d;
  /* The first skip rows are not written to the caches: a session's chunk longer than the ring
   * (the streaming capacity is the context) has its last rows own every slot, and the rows of
   * one kv_write_rows launch are written in parallel and must not share a slot. */
  const float *k_new = sc->qkv + (gsize) skip * 3 * d + d;
  for (int l = 0; l < tr->n_layers; l++) {
    const Layer *L = &tr->layers[l];
    ops->layer_norm (ex, sc->h, d, sc->x, d, &L->norm1_w, &L->norm1_b, LAYER_NORM_EPS, rows, d);
    ops->linear (ex, sc->qkv, 3 * d, sc->h, d, &L->in_proj, NULL, rows, 0.0f);
    ops->rope_rows (ex, sc->qkv, 3 * d, rows, heads, head_dim, rc, max_period);
    ops->rope_rows (ex, sc->qkv + d, 3 * d, rows, heads, head_dim, rc, max_period);
    gsize layer_bytes = layer_stride * l * sizeof (float);
    ops->kv_write_rows (ex, rc + skip, MOSHI_DTYPE_F32, layer_bytes, kv_capacity, k_new,
        3 * d, k_new + d, 3 * d, heads, head_dim, rows - skip);
    ops->attention_rows (ex, sc->h, d, sc->qkv, 3 * d, rc, MOSHI_DTYPE_F32, layer_bytes,
        kv_capacity, heads, head_dim, rows, cfg->transformer.context, scale);
    ops->linear (ex, sc->o, d, sc->h, d, &L->out_proj, NULL, rows, 0.0f);
    ops->add_scaled (ex, sc->x, d, sc->o, d, cfg->transformer.layer_scale ? &L->scale1 : NULL, rows, d);
    ops->layer_norm (ex, sc->h, d, sc->x, d, &L->norm2_w, &L->norm2_b, LAYER_NORM_EPS, rows, d);
    ops->linear (ex, sc->ff, ff, sc->h, d, &L->linear1, NULL, rows, 0.0f);
    ops->gelu (ex, sc->ff, (gsize) rows * ff);
    ops->linear (ex, sc->o, d, sc->ff, ff, &L->linear2, NULL, rows, 0.0f);
    ops->add_scaled (ex, sc->x, d, sc->o, d, cfg->transformer.layer_scale ? &L->scale2 : NULL, rows, d);
  }
}

/* Whether conv_step on c takes its first-frame branch (replicate padding) at the next call. */
static inline gboolean
replicate_pending (const Conv *c, const ConvState *cs)
{
  return c->replicate && cs->first;
}

static gboolean
stage_first_frame (const Stage *st, const StageState *ss, gboolean encoder)
{
  for (int j = 0; j < st->n_res; j++)
    if (replicate_pending (&st->res[j].conv1, &ss->res_conv1[j]))
      return TRUE;
  return encoder && replicate_pending (&st->down, &ss->down);
}

/* Whether the next call of a direction differs from later ones by a first-frame branch. */
static gboolean
first_frame_pending (const MoshiMimiSession *s, gboolean decode)
{
  const MoshiMimi *m = s->m;
  if (decode) {
    if (replicate_pending (&m->dec_conv0, &s->dec_conv0)
        || replicate_pending (&m->dec_final, &s->dec_final))
      return TRUE;
    for (int i = 0; i < m->n_stages; i++)
      if (stage_first_frame (&m->dec_stages[i], &s->dec[i], FALSE))
        return TRUE;
    return FALSE;
  }
  if (replicate_pending (&m->enc_conv0, &s->enc_conv0)
      || replicate_pending (&m->enc_final, &s->enc_final)
      || (m->resample_stride > 1 && replicate_pending (&m->downsample, &s->downsample)))
    return TRUE;
  for (int i = 0; i < m->n_stages; i++)
    if (stage_first_frame (&m->enc_stages[i], &s->enc[i], TRUE))
      return TRUE;
  return FALSE;
}

/* ---------------------------------------------------------------- encode */

/* The encoder up to its transformer, on the input already uploaded into enc_conv0's window:
 * the convolutions, whose output goes time-major into x ([steps, d]). */
static void
encode_front (MoshiExec *ex, MoshiMimiSession *s, int n_frames, float *x)
{
  MoshiMimi *m = s->m;
  const MoshiBackendOps *ops = m->be->ops;
  int d = m->cfg.seanet.dimension;
  int cols = n_frames * m->frame_size;
  int steps = n_frames * m->resample_stride;

  conv_step (ex, &m->enc_conv0, &s->enc_conv0, cols, s->enc[0].x, s->enc[0].cols, 0.0f);
  for (int i = 0; i < m->n_stages; i++) {
    const Stage *st = &m->enc_stages[i];
    StageState *ss = &s->enc[i];
    res_blocks (ex, st, ss, cols);
    ops->elu_2d (ex, window_input (&ss->down, &st->down), ss->down.ld, ss->x, ss->cols,
        st->channels, cols);
    int out_cols = cols / st->down.stride;
    if (i + 1 < m->n_stages) {
      conv_step (ex, &st->down, &ss->down, cols, s->enc[i + 1].x, s->enc[i + 1].cols, 0.0f);
    } else {
      /* The last strided conv feeds ELU + the final conv; its output goes straight into the
       * final conv's window after the ELU. */
      conv_step (ex, &st->down, &ss->down, cols, s->enc_latent, steps, 0.0f);
      ops->elu_2d (ex, window_input (&s->enc_final, &m->enc_final), s->enc_final.ld,
          s->enc_latent, steps, st->down.c_out, out_cols);
    }
    cols = out_cols;
  }
  g_assert (cols == steps);
  conv_step (ex, &m->enc_final, &s->enc_final, steps, s->enc_latent, steps, 0.0f);
  ops->transpose (ex, x, d, s->enc_latent, steps, d, steps);
}

/* The encoder after its transformer (whose output is x): the downsampling and the quantizer,
 * the codes copied back into codes_host. */
static void
encode_back (MoshiExec *ex, MoshiMimiSession *s, int n_frames, const float *x)
{
  MoshiMimi *m = s->m;
  const MoshiBackendOps *ops = m->be->ops;
  int d = m->cfg.seanet.dimension;
  int steps = n_frames * m->resample_stride;
  if (m->resample_stride > 1) {
    ops->transpose (ex, window_input (&s->downsample, &m->downsample), s->downsample.ld, x,
        d, steps, d);
    conv_step (ex, &m->downsample, &s->downsample, steps, s->enc_latent, n_frames, 0.0f);
    ops->transpose (ex, s->q_latent, d, s->enc_latent, n_frames, d, n_frames);
  } else {
    ops->copy_2d (ex, s->q_latent, d, x, d, n_frames, d);
  }

  int dim = m->cfg.quantizer.dimension;
  ops->linear (ex, s->q_residual, dim, s->q_latent, d, &m->in_proj_first, NULL, n_frames, 0.0f);
  ops->rvq_encode (ex, s->codes_dev, n_frames, s->q_residual, dim, &m->books_first,
      &m->norms_first, 1, n_frames);
  if (s->num_codebooks > 1) {
    ops->linear (ex, s->q_residual, dim, s->q_latent, d, &m->in_proj_rest, NULL, n_frames, 0.0f);
    ops->rvq_encode (ex, s->codes_dev + n_frames, n_frames, s->q_residual, dim, &m->books_rest,
        &m->norms_rest, s->num_codebooks - 1, n_frames);
  }
  /* [num_codebooks, n_frames], contiguous: one copy */
  ops->download_async (ex, s->codes_host, s->codes_dev,
      (gsize) s->num_codebooks * n_frames * sizeof (int32_t));
}

/* The device part of an encode call over the input staged in enc_in_host (encode_chunk): one
 * upload, the encoder, the codes copied back into codes_host. Nothing here waits for the device
 * or depends on host state that differs between steady-state calls, so it can be recorded. */
static void
device_encode (MoshiMimiSession *s, int n_frames)
{
  int steps = n_frames * s->m->resample_stride;
  CallLayout L = encode_layout (s, n_frames);
  guint8 *in = (guint8 *) s->enc_conv0.buf;
  s->m->be->ops->upload (s->ex, in + L.in, s->enc_in_host + L.in, L.end - L.in);
  encode_front (s->ex, s, n_frames, s->tr.x);
  transformer_rows (s->ex, s->m, &s->m->enc_tr, &s->tr, steps,
      (const MoshiRowCache *) (in + L.rc), s->kv_capacity, MAX (steps - s->kv_capacity, 0));
  encode_back (s->ex, s, n_frames, s->tr.x);
}

/* ---------------------------------------------------------------- decode */

/* The decoder up to its transformer, on the codes already uploaded into dec_in: the
 * dequantizer and the upsampling, whose output goes time-major into x ([steps, d]). */
static void
decode_front (MoshiExec *ex, MoshiMimiSession *s, int num_codebooks, int n_frames, float *x)
{
  MoshiMimi *m = s->m;
  const MoshiBackendOps *ops = m->be->ops;
  int d = m->cfg.seanet.dimension, dim = m->cfg.quantizer.dimension;
  int steps = n_frames * m->resample_stride;
  const int32_t *codes = (const int32_t *) s->dec_in;

  ops->rvq_decode (ex, s->dq, dim, codes, n_frames, &m->books_first, 1, n_frames);
  ops->linear (ex, s->dq_proj, d, s->dq, dim, &m->out_proj_first, NULL, n_frames, 0.0f);
  if (num_codebooks > 1) {
    ops->rvq_decode (ex, s->dq, dim, codes + n_frames, n_frames, &m->books_rest,
        num_codebooks - 1, n_frames);
    ops->linear (ex, s->dq_proj, d, s->dq, dim, &m->out_proj_rest, NULL, n_frames, 1.0f);
  }

  if (m->resample_stride > 1) {
    ops->transpose (ex, s->dq_cols, n_frames, s->dq_proj, d, n_frames, d);
    ops->conv_transpose1d (ex, s->dec_latent, steps, s->dq_cols, n_frames, &m->upsample.w, NULL,
        s->up_carry, m->upsample.stride, m->upsample.groups, n_frames, 1, 0, 0, 0);
    ops->transpose (ex, x, d, s->dec_latent, steps, d, steps);
  } else {
    ops->copy_2d (ex, x, d, s->dq_proj, d, n_frames, d);
  }
}

/* The decoder after its transformer (whose output is x): the convolutions, the PCM copied
 * back into pcm_host. */
static void
decode_back (MoshiExec *ex, MoshiMimiSession *s, int n_frames, const float *x)
{
  MoshiMimi *m = s->m;
  const MoshiBackendOps *ops = m->be->ops;
  int d = m->cfg.seanet.dimension;
  int steps = n_frames * m->resample_stride;
  ops->transpose (ex, window_input (&s->dec_conv0, &m->dec_conv0), s->dec_conv0.ld, x, d,
      steps, d);
  conv_step (ex, &m->dec_conv0, &s->dec_conv0, steps, s->dec_x0, steps, 0.0f);

  float *y = s->dec_x0;
  int ld_y = steps, cols = steps;
  for (int i = 0; i < m->n_stages; i++) {
    const Stage *st = &m->dec_stages[i];
    StageState *ss = &s->dec[i];
    ops->elu_2d (ex, y, ld_y, y, ld_y, st->up.c_in, cols);
    ops->conv_transpose1d (ex, ss->x, ss->cols, y, ld_y, &st->up.w, &st->up.b, ss->carry,
        st->up.stride, 1, cols, 1, 0, 0, 0);
    cols *= st->up.stride;
    res_blocks (ex, st, ss, cols);
    y = ss->x;
    ld_y = ss->cols;
  }
  ops->elu_2d (ex, window_input (&s->dec_final, &m->dec_final), s->dec_final.ld, y, ld_y,
      m->dec_final.c_in, cols);
  conv_step (ex, &m->dec_final, &s->dec_final, cols, s->pcm_dev, cols, 0.0f);
  ops->download_async (ex, s->pcm_host, s->pcm_dev, (gsize) cols * sizeof (float));
}

/* The device part of a decode call over the input staged in dec_in_host (decode_chunk): one
 * upload, the decoder, the PCM copied back into pcm_host. Recordable as device_encode. */
static void
device_decode (MoshiMimiSession *s, int num_codebooks, int n_frames)
{
  int steps = n_frames * s->m->resample_stride;
  CallLayout L = decode_layout (s, num_codebooks, n_frames);
  s->m->be->ops->upload (s->ex, s->dec_in + L.in, s->dec_in_host + L.in, L.end - L.in);
  decode_front (s->ex, s, num_codebooks, n_frames, s->tr.x);
  transformer_rows (s->ex, s->m, &s->m->dec_tr, &s->tr, steps,
      (const MoshiRowCache *) (s->dec_in + L.rc), s->kv_capacity, MAX (steps - s->kv_capacity, 0));
  decode_back (s->ex, s, n_frames, s->tr.x);
}

/* ---------------------------------------------------------------- running a call */

static void
device_call (MoshiMimiSession *s, const Call *c)
{
  if (c->decode)
    device_decode (s, c->num_codebooks, c->n_frames);
  else
    device_encode (s, c->n_frames);
}

typedef struct {
  MoshiMimiSession *s;
  const Call *c;
} SessionCall;

static void
session_device_call (gpointer ctx)
{
  SessionCall *sc = ctx;
  device_call (sc->s, sc->c);
}

/* A session's call: recorded per direction, its shape the frame count, the codebooks and
 * whether a first-frame branch runs. */
static gboolean
run_call (MoshiMimiSession *s, const Call *c, GError **error)
{
  char key[64];
  g_snprintf (key, sizeof key, "%d/%d/%d", c->n_frames, c->num_codebooks, c->first);
  return moshi_recorder_run (s->rec, c->decode, key, c->first, session_device_call,
      &(SessionCall) { s, c }, error);
}

gboolean
moshi_mimi_check_pcm (const MoshiMimi *m, const float *pcm, int n_frames, GError **error)
{
  if (n_frames < 0) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT, "n_frames=%d is negative", n_frames);
    return FALSE;
  }
  gsize n = (gsize) n_frames * m->frame_size;
  for (gsize i = 0; i < n; i++) {
    if (!isfinite (pcm[i])) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
          "audio sample %" G_GSIZE_FORMAT " (frame %" G_GSIZE_FORMAT ") is not finite (%g)", i,
          i / m->frame_size, pcm[i]);
      return FALSE;
    }
  }
  return TRUE;
}

gboolean
moshi_mimi_check_codes (const MoshiMimi *m, const int32_t *codes, int num_codebooks,
    int n_frames, GError **error)
{
  if (num_codebooks < 1 || num_codebooks > m->cfg.quantizer.n_q) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
        "%d codebooks given; %s decodes 1 to %d", num_codebooks, m->path, m->cfg.quantizer.n_q);
    return FALSE;
  }
  if (n_frames < 0) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT, "n_frames=%d is negative", n_frames);
    return FALSE;
  }
  for (int k = 0; k < num_codebooks; k++)
    for (int f = 0; f < n_frames; f++) {
      int32_t c = codes[(gsize) k * n_frames + f];
      if (c < 0 || c >= m->cfg.quantizer.bins) {
        g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
            "code %d of codebook %d in frame %d is outside [0, %d)", c, k, f, m->cfg.quantizer.bins);
        return FALSE;
      }
    }
  return TRUE;
}

/* Encodes n_frames <= max_frames frames into codes_host ([num_codebooks, n_frames]). */
static gboolean
encode_chunk (MoshiMimiSession *s, const float *pcm, int n_frames, GError **error)
{
  MoshiMimi *m = s->m;
  int steps = n_frames * m->resample_stride;
  CallLayout L = encode_layout (s, n_frames);
  memcpy (s->enc_in_host + L.in, pcm, (gsize) n_frames * m->frame_size * sizeof (float));
  fill_rows ((MoshiRowCache *) (s->enc_in_host + L.rc), &s->enc_tr, steps);
  Call c = { FALSE, n_frames, s->num_codebooks, first_frame_pending (s, FALSE) };
  if (!run_call (s, &c, error) || !m->be->ops->synchronize (s->ex, error))
    return FALSE;
  s->enc_tr.pos += steps;
  return TRUE;
}

gboolean
moshi_mimi_session_encode (MoshiMimiSession *s, const float *pcm, int n_frames, int32_t *codes,
    GError **error)
{
  if (!moshi_mimi_check_pcm (s->m, pcm, n_frames, error))
    return FALSE;
  for (int f = 0; f < n_frames; f += s->max_frames) {
    int chunk = MIN (s->max_frames, n_frames - f);
    if (!encode_chunk (s, pcm + (gsize) f * s->m->frame_size, chunk, error))
      return FALSE;
    /* the chunk's [K, chunk] block into the caller's [K, n_frames] */
    for (int k = 0; k < s->num_codebooks; k++)
      memcpy (codes + (gsize) k * n_frames + f, s->codes_host + k * chunk, chunk * sizeof (int32_t));
  }
  return TRUE;
}

/* Decodes n_frames <= max_frames frames of codes (row stride ld_codes) into pcm. */
static gboolean
decode_chunk (MoshiMimiSession *s, const int32_t *codes, int ld_codes, int num_codebooks,
    int n_frames, float *pcm, GError **error)
{
  MoshiMimi *m = s->m;
  int steps = n_frames * m->resample_stride;
  CallLayout L = decode_layout (s, num_codebooks, n_frames);
  int32_t *in = (int32_t *) (s->dec_in_host + L.in);
  for (int k = 0; k < num_codebooks; k++)
    memcpy (in + (gsize) k * n_frames, codes + (gsize) k * ld_codes, n_frames * sizeof (int32_t));
  fill_rows ((MoshiRowCache *) (s->dec_in_host + L.rc), &s->dec_tr, steps);
  Call c = { TRUE, n_frames, num_codebooks, first_frame_pending (s, TRUE) };
  if (!run_call (s, &c, error) || !m->be->ops->synchronize (s->ex, error))
    return FALSE;
  s->dec_tr.pos += steps;
  memcpy (pcm, s->pcm_host, (gsize) n_frames * m->frame_size * sizeof (float));
  return TRUE;
}

gboolean
moshi_mimi_session_decode (MoshiMimiSession *s, const int32_t *codes, int num_codebooks,
    int n_frames, float *pcm, GError **error)
{
  MoshiMimi *m = s->m;
  if (!moshi_mimi_check_codes (m, codes, num_codebooks, n_frames, error))
    return FALSE;
  for (int f = 0; f < n_frames; f += s->max_frames) {
    int chunk = MIN (s->max_frames, n_frames - f);
    if (!decode_chunk (s, codes + f, n_frames, num_codebooks, chunk,
            pcm + (gsize) f * m->frame_size, error))
      return FALSE;
  }
  return TRUE;
}

/* ---------------------------------------------------------------- batches */

/* A batch's activations for its sessions side by side: stream s of a [C, n * cols] matrix is
 * its columns s * cols .. (s + 1) * cols - 1, so that every conv of the batch is one product
 * over all streams (one read of its weight) and the elementwise ops one op. Sized for `cap`
 * streams, grown when a call brings more. */
typedef struct {
  int cap;
  float *win;             /* one conv's windows at a time: [c_in, n * (history + cols)] */
  float *act[2];          /* stage activations, in turn input and output of a stage */
  float *hidden;          /* residual branch */
  float *carry;           /* one transposed conv's carries, stream-major [n, c_out, overlap] */
  float *q, *r;           /* quantizer rows: latent [n, d], projected [n, dim] */
  int32_t *codes;         /* [n_q, n] */
  float *pcm;             /* [n, frame]: the encoder's input, the decoder's output */
  float *pcm_host;        /* pinned mirrors */
  int32_t *codes_host;
} BatchBuffers;

/* Per-stream sizes (floats) of BatchBuffers' buffers, the largest any layer needs. */
typedef struct {
  gsize win, act, hidden, carry;
} BatchSizes;

static void
grow (gsize *size, gsize need)
{
  *size = MAX (*size, need);
}

static void
grow_window (gsize *size, const Conv *c, int cols)
{
  grow (size, (gsize) c->c_in * (c->history + cols));
}

static BatchSizes
batch_sizes (const MoshiMimi *m)
{
  BatchSizes z = { 0 };
  int compress = m->cfg.seanet.compress, steps = m->resample_stride;
  int d = m->cfg.seanet.dimension;
  int cols = m->frame_size;
  grow_window (&z.win, &m->enc_conv0, cols);
  for (int i = 0; i < m->n_stages; i++) {
    const Stage *st = &m->enc_stages[i];
    for (int j = 0; j < st->n_res; j++)
      grow_window (&z.win, &st->res[j].conv1, cols);
    grow_window (&z.win, &st->down, cols);
    grow (&z.act, (gsize) st->channels * cols);
    grow (&z.hidden, (gsize) st->channels / compress * cols);
    cols /= st->down.stride;
    grow (&z.act, (gsize) st->down.c_out * cols);
  }
  grow_window (&z.win, &m->enc_final, steps);
  grow_window (&z.win, &m->downsample, steps);
  grow (&z.act, (gsize) MAX (m->enc_final.c_out, d) * steps);

  grow (&z.carry, (gsize) m->upsample.c_out * (m->upsample.k - m->upsample.stride));
  grow_window (&z.win, &m->dec_conv0, steps);
  grow (&z.act, (gsize) m->dec_conv0.c_out * steps);
  cols = steps;
  for (int i = 0; i < m->n_stages; i++) {
    const Stage *st = &m->dec_stages[i];
    grow (&z.carry, (gsize) st->up.c_out * (st->up.k - st->up.stride));
    cols *= st->up.stride;
    grow (&z.act, (gsize) st->channels * cols);
    grow (&z.hidden, (gsize) st->channels / compress * cols);
    for (int j = 0; j < st->n_res; j++)
      grow_window (&z.win, &st->res[j].conv1, cols);
  }
  grow_window (&z.win, &m->dec_final, cols);
  return z;
}

struct _MoshiMimiBatch {
  MoshiMimi *m;
  MoshiExec *ex;                /* the whole call runs here */
  int max_sessions;
  int stride;                   /* transformer rows a frame: the model's resample stride */
  int kv_capacity;              /* of every session it takes: the streaming context */
  TrScratch tr;                 /* [max_sessions * stride] rows */
  MoshiRowCache *rc_dev, *rc_host;
  BatchBuffers buf;

  /* the call in progress */
  MoshiMimiSession **sessions;
  int num_codebooks;            /* decode: of the call; encode: the most a session takes */

  /* Recorded calls (backends that can record), replayed while the same sessions come in the
   * same order: their buffers are in the recording. Sessions joining or leaving make a new
   * shape, recorded the second time it comes (moshi_recorder_run). */
  MoshiRecorder *rec;
  gint n;                       /* sessions in the call in progress */
  gboolean decode;
};

static void
batch_buffers_clear (MoshiBackend *be, BatchBuffers *bb)
{
  void *bufs[] = { bb->win, bb->act[0], bb->act[1], bb->hidden, bb->carry, bb->q, bb->r,
    bb->codes, bb->pcm };
  for (guint i = 0; i < G_N_ELEMENTS (bufs); i++)
    dev_free (be, bufs[i]);
  host_free (be, bb->pcm_host);
  host_free (be, bb->codes_host);
  memset (bb, 0, sizeof *bb);
}

/* Makes room for n streams: a call with more streams than ever before reallocates (and drops
 * the recorded calls, which hold the old buffers). */
static gboolean
batch_reserve (MoshiMimiBatch *b, int n, GError **error)
{
  if (n <= b->buf.cap)
    return TRUE;
  MoshiMimi *m = b->m;
  MoshiBackend *be = m->be;
  if (!be->ops->synchronize (b->ex, error))
    return FALSE;
  moshi_recorder_invalidate (b->rec);
  batch_buffers_clear (be, &b->buf);
  int cap = MIN (MAX (n, 2 * b->buf.cap), b->max_sessions);
  BatchSizes z = batch_sizes (m);
  BatchBuffers *bb = &b->buf;
  Alloc a = { .be = be, .error = error };
  bb->win = dev_alloc (&a, z.win * cap);
  bb->act[0] = dev_alloc (&a, z.act * cap);
  bb->act[1] = dev_alloc (&a, z.act * cap);
  bb->hidden = dev_alloc (&a, z.hidden * cap);
  bb->carry = dev_alloc (&a, MAX (z.carry, 1) * cap);
  bb->q = dev_alloc (&a, (gsize) m->cfg.seanet.dimension * cap);
  bb->r = dev_alloc (&a, (gsize) m->cfg.quantizer.dimension * cap);
  bb->codes = dev_alloc_bytes (&a, (gsize) m->cfg.quantizer.n_q * cap * sizeof (int32_t));
  bb->pcm = dev_alloc (&a, (gsize) m->frame_size * cap);
  bb->pcm_host = host_alloc (&a, (gsize) m->frame_size * cap * sizeof (float));
  bb->codes_host = host_alloc (&a, (gsize) m->cfg.quantizer.n_q * cap * sizeof (int32_t));
  if (a.failed) {
    batch_buffers_clear (be, bb);
    return FALSE;
  }
  bb->cap = cap;
  return TRUE;
}

void
moshi_mimi_batch_free (MoshiMimiBatch *b)
{
  if (b == NULL)
    return;
  MoshiBackend *be = b->m->be;
  void *bufs[] = { b->tr.x, b->tr.h, b->tr.qkv, b->tr.o, b->tr.ff, b->rc_dev };
  for (guint i = 0; i < G_N_ELEMENTS (bufs); i++)
    dev_free (be, bufs[i]);
  host_free (be, b->rc_host);
  batch_buffers_clear (be, &b->buf);
  moshi_recorder_free (b->rec);
  moshi_exec_free (b->ex);
  g_free (b->sessions);
  moshi_mimi_unref (b->m);
  g_free (b);
}

MoshiMimiBatch *
moshi_mimi_batch_new (MoshiMimi *m, int max_sessions, int n_threads, GError **error)
{
  if (max_sessions < 1 || max_sessions > 4096 || n_threads < 0 || n_threads > 256) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
        "Mimi batch of %d sessions on %d threads: out of range (1..4096 sessions, 0..256 "
        "threads)", max_sessions, n_threads);
    return NULL;
  }
  if (m->resample_stride > m->cfg.transformer.context) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
        "%s: a frame's %d transformer steps exceed the context of %d", m->path,
        m->resample_stride, m->cfg.transformer.context);
    return NULL;
  }
  MoshiExec *ex = moshi_exec_new (m->be, n_threads, error);
  if (ex == NULL)
    return NULL;
  MoshiMimiBatch *b = g_new0 (MoshiMimiBatch, 1);
  b->m = moshi_mimi_ref (m);
  b->ex = ex;
  b->max_sessions = max_sessions;
  b->stride = m->resample_stride;
  b->kv_capacity = m->cfg.transformer.context;
  b->sessions = g_new0 (MoshiMimiSession *, max_sessions);
  b->rec = moshi_recorder_new (ex, 2, TRUE, "Mimi frames", m->path);
  int rows = max_sessions * b->stride;
  Alloc a = { .be = m->be, .error = error };
  tr_scratch_init (&a, &b->tr, rows, m->cfg.transformer.d_model,
      m->cfg.transformer.dim_feedforward);
  b->rc_dev = dev_alloc_bytes (&a, (gsize) rows * sizeof (MoshiRowCache));
  b->rc_host = host_alloc (&a, (gsize) rows * sizeof (MoshiRowCache));
  if (a.failed || !batch_reserve (b, 1, error)) {
    moshi_mimi_batch_free (b);
    return NULL;
  }
  return b;
}

int
moshi_mimi_batch_max_sessions (MoshiMimiBatch *b)
{
  return b->max_sessions;
}

/* What a batch call can take: sessions of its model, each once, with streaming caches. */
static gboolean
check_batch (MoshiMimiBatch *b, MoshiMimiSession **sessions, int n, GError **error)
{
  if (n < 1 || n > b->max_sessions) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
        "%d sessions in one Mimi batch; this batch takes 1 to %d", n, b->max_sessions);
    return FALSE;
  }
  for (int i = 0; i < n; i++) {
    if (sessions[i]->m != b->m) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
          "session %d belongs to another Mimi (%s) than this batch (%s)", i,
          sessions[i]->m->path, b->m->path);
      return FALSE;
    }
    if (sessions[i]->kv_capacity != b->kv_capacity) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
          "session %d keeps full-context caches; batches take streaming sessions only", i);
      return FALSE;
    }
    for (int j = 0; j < i; j++)
      if (sessions[j] == sessions[i]) {
        g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
            "session %d appears twice in one Mimi batch", i);
        return FALSE;
      }
  }
  return TRUE;
}

/* The row table of a direction: session i's rows are i * stride .. (i + 1) * stride - 1, its
 * one sequence at its own position. */
static void
batch_rows (MoshiMimiBatch *b, int n, gboolean decode)
{
  for (int i = 0; i < n; i++) {
    MoshiMimiSession *s = b->sessions[i];
    fill_rows (b->rc_host + (gsize) i * b->stride, decode ? &s->dec_tr : &s->enc_tr, b->stride);
  }
}

/* Which conv a session's state belongs to (batch_conv reads and updates it). */
typedef enum {
  CONV_ENC_FIRST, CONV_ENC_RES, CONV_ENC_DOWN, CONV_ENC_FINAL, CONV_DOWNSAMPLE,
  CONV_DEC_FIRST, CONV_DEC_RES, CONV_DEC_FINAL,
} ConvSite;

static ConvState *
conv_state_at (MoshiMimiSession *s, ConvSite site, int stage, int j)
{
  switch (site) {
    case CONV_ENC_FIRST: return &s->enc_conv0;
    case CONV_ENC_RES: return &s->enc[stage].res_conv1[j];
    case CONV_ENC_DOWN: return &s->enc[stage].down;
    case CONV_ENC_FINAL: return &s->enc_final;
    case CONV_DOWNSAMPLE: return &s->downsample;
    case CONV_DEC_FIRST: return &s->dec_conv0;
    case CONV_DEC_RES: return &s->dec[stage].res_conv1[j];
    default: return &s->dec_final;
  }
}

/* Columns where a stream's new input goes in the batch's windows of c over cols columns. */
static inline float *
batch_window_input (MoshiMimiBatch *b, const Conv *c)
{
  return b->buf.win + c->history;
}

/* dst = ELU(src) for the n streams of src [rows, n * cols] into c's windows: both read as
 * [rows * n, cols] matrices, which they are, so one op covers every stream. */
static void
batch_elu_into_window (MoshiMimiBatch *b, const Conv *c, const float *src, int rows, int cols,
    int n)
{
  b->m->be->ops->elu_2d (b->ex, batch_window_input (b, c), c->history + cols, src, cols,
      rows * n, cols);
}

/* One conv over the n streams whose new input (cols columns each) is in the batch's windows:
 * each stream's history comes from its session (or, for a replicate conv's first frame,
 * copies of its first column), one conv1d covers them all into dst [c_out, n * cols / stride]
 * (beta as conv1d's), and each session keeps the last history columns of its window. */
static void
batch_conv (MoshiMimiBatch *b, const Conv *c, ConvSite site, int stage, int j, int cols,
    float *dst, float beta)
{
  const MoshiBackendOps *ops = b->m->be->ops;
  MoshiExec *ex = b->ex;
  int n = b->n, seg = c->history + cols, ld = n * seg;
  for (int i = 0; i < n && c->history > 0; i++) {
    ConvState *cs = conv_state_at (b->sessions[i], site, stage, j);
    float *w = b->buf.win + (gsize) i * seg;
    if (c->replicate && cs->first) {
      for (int h = 0; h < c->history; h++)
        ops->copy_2d (ex, w + h, ld, w + c->history, ld, c->c_in, 1);
    } else {
      ops->copy_2d (ex, w, ld, cs->buf, cs->ld, c->c_in, c->history);
    }
  }
  g_assert (cols % c->stride == 0);
  int t_out = cols / c->stride;
  ops->conv1d (ex, dst, n * t_out, b->buf.win, ld, &c->w, c->has_bias ? &c->b : NULL,
      c->stride, c->dilation, 1, t_out, beta, n, seg, t_out);
  for (int i = 0; i < n; i++) {
    ConvState *cs = conv_state_at (b->sessions[i], site, stage, j);
    if (c->history > 0)
      ops->copy_2d (ex, cs->buf, cs->ld, b->buf.win + (gsize) i * seg + cols, ld, c->c_in,
          c->history);
    cs->first = FALSE;
  }
}

/* A transposed conv over the n streams of src [c_in, n * cols] into dst [c_out, n * cols *
 * stride], each stream's carry (carry_of) brought in and back around one op. */
static void
batch_conv_transpose (MoshiMimiBatch *b, const ConvTr *c, const MoshiWeight *bias,
    float *(*carry_of) (MoshiMimiSession *s, int stage), int stage, const float *src, int cols,
    float *dst)
{
  const MoshiBackendOps *ops = b->m->be->ops;
  MoshiExec *ex = b->ex;
  int n = b->n;
  int overlap = c->c_out * (c->k - c->stride);
  for (int i = 0; i < n && overlap > 0; i++)
    ops->copy_2d (ex, b->buf.carry + (gsize) i * overlap, overlap, carry_of (b->sessions[i], stage),
        overlap, 1, overlap);
  ops->conv_transpose1d (ex, dst, n * cols * c->stride, src, n * cols, &c->w, bias, b->buf.carry,
      c->stride, c->groups, cols, n, cols, (gsize) cols * c->stride, overlap);
  for (int i = 0; i < n && overlap > 0; i++)
    ops->copy_2d (ex, carry_of (b->sessions[i], stage), overlap,
        b->buf.carry + (gsize) i * overlap, overlap, 1, overlap);
}

static float *
upsample_carry (MoshiMimiSession *s, int stage)
{
  return s->up_carry;
}

static float *
stage_carry (MoshiMimiSession *s, int stage)
{
  return s->dec[stage].carry;
}

/* x = x + conv2(ELU(conv1(ELU(x)))) for the residual blocks of a stage, over the n streams of
 * x [channels, n * cols]. */
static void
batch_res_blocks (MoshiMimiBatch *b, const Stage *st, ConvSite site, int stage, float *x,
    int cols)
{
  const MoshiBackendOps *ops = b->m->be->ops;
  int n = b->n, width = n * cols;
  for (int j = 0; j < st->n_res; j++) {
    const ResBlock *rb = &st->res[j];
    batch_elu_into_window (b, &rb->conv1, x, st->channels, cols, n);
    batch_conv (b, &rb->conv1, site, stage, j, cols, b->buf.hidden, 0.0f);
    ops->elu_2d (b->ex, b->buf.hidden, width, b->buf.hidden, width, rb->conv1.c_out, width);
    ops->conv1d (b->ex, x, width, b->buf.hidden, width, &rb->conv2.w, &rb->conv2.b, 1, 1, 1,
        width, 1.0f, 1, 0, 0);
  }
}

/* [n * steps, d] time-major rows (session i's at i * steps) into c's windows. */
static void
batch_rows_into_window (MoshiMimiBatch *b, const Conv *c, const float *x, int steps)
{
  const MoshiBackendOps *ops = b->m->be->ops;
  int n = b->n, d = c->c_in;
  float *cols = b->buf.act[1];
  ops->transpose (b->ex, cols, n * steps, x, d, n * steps, d);
  ops->copy_2d (b->ex, batch_window_input (b, c), c->history + steps, cols, steps, d * n, steps);
}

static void
batch_encode_device (MoshiMimiBatch *b)
{
  MoshiMimi *m = b->m;
  const MoshiBackendOps *ops = m->be->ops;
  MoshiExec *ex = b->ex;
  BatchBuffers *bb = &b->buf;
  int n = b->n, d = m->cfg.seanet.dimension, dim = m->cfg.quantizer.dimension;
  int cols = m->frame_size, steps = b->stride;

  ops->upload (ex, bb->pcm, bb->pcm_host, (gsize) n * cols * sizeof (float));
  ops->copy_2d (ex, batch_window_input (b, &m->enc_conv0), m->enc_conv0.history + cols, bb->pcm,
      cols, n, cols);
  float *x = bb->act[0], *y = bb->act[1];
  batch_conv (b, &m->enc_conv0, CONV_ENC_FIRST, 0, 0, cols, x, 0.0f);
  for (int i = 0; i < m->n_stages; i++) {
    const Stage *st = &m->enc_stages[i];
    batch_res_blocks (b, st, CONV_ENC_RES, i, x, cols);
    batch_elu_into_window (b, &st->down, x, st->channels, cols, n);
    batch_conv (b, &st->down, CONV_ENC_DOWN, i, 0, cols, y, 0.0f);
    cols /= st->down.stride;
    float *t = x;
    x = y;
    y = t;
  }
  g_assert (cols == steps);
  batch_elu_into_window (b, &m->enc_final, x, m->enc_final.c_in, steps, n);
  batch_conv (b, &m->enc_final, CONV_ENC_FINAL, 0, 0, steps, y, 0.0f);
  ops->transpose (ex, b->tr.x, d, y, n * steps, d, n * steps);

  transformer_rows (ex, m, &m->enc_tr, &b->tr, n * steps, b->rc_dev, b->kv_capacity, 0);

  if (m->resample_stride > 1) {
    batch_rows_into_window (b, &m->downsample, b->tr.x, steps);
    batch_conv (b, &m->downsample, CONV_DOWNSAMPLE, 0, 0, steps, bb->act[0], 0.0f);
    ops->transpose (ex, bb->q, d, bb->act[0], n, d, n);
  } else {
    ops->copy_2d (ex, bb->q, d, b->tr.x, d, n, d);
  }
  ops->linear (ex, bb->r, dim, bb->q, d, &m->in_proj_first, NULL, n, 0.0f);
  ops->rvq_encode (ex, bb->codes, n, bb->r, dim, &m->books_first, &m->norms_first, 1, n);
  if (b->num_codebooks > 1) {
    ops->linear (ex, bb->r, dim, bb->q, d, &m->in_proj_rest, NULL, n, 0.0f);
    ops->rvq_encode (ex, bb->codes + n, n, bb->r, dim, &m->books_rest, &m->norms_rest,
        b->num_codebooks - 1, n);
  }
  ops->download_async (ex, bb->codes_host, bb->codes,
      (gsize) b->num_codebooks * n * sizeof (int32_t));
}

static void
batch_decode_device (MoshiMimiBatch *b)
{
  MoshiMimi *m = b->m;
  const MoshiBackendOps *ops = m->be->ops;
  MoshiExec *ex = b->ex;
  BatchBuffers *bb = &b->buf;
  int n = b->n, d = m->cfg.seanet.dimension, dim = m->cfg.quantizer.dimension;
  int steps = b->stride, k = b->num_codebooks;

  ops->upload (ex, bb->codes, bb->codes_host, (gsize) k * n * sizeof (int32_t));
  ops->rvq_decode (ex, bb->r, dim, bb->codes, n, &m->books_first, 1, n);
  ops->linear (ex, bb->q, d, bb->r, dim, &m->out_proj_first, NULL, n, 0.0f);
  if (k > 1) {
    ops->rvq_decode (ex, bb->r, dim, bb->codes + n, n, &m->books_rest, k - 1, n);
    ops->linear (ex, bb->q, d, bb->r, dim, &m->out_proj_rest, NULL, n, 1.0f);
  }
  if (m->resample_stride > 1) {
    ops->transpose (ex, bb->act[0], n, bb->q, d, n, d);
    batch_conv_transpose (b, &m->upsample, NULL, upsample_carry, 0, bb->act[0], 1, bb->act[1]);
    ops->transpose (ex, b->tr.x, d, bb->act[1], n * steps, d, n * steps);
  } else {
    ops->copy_2d (ex, b->tr.x, d, bb->q, d, n, d);
  }

  transformer_rows (ex, m, &m->dec_tr, &b->tr, n * steps, b->rc_dev, b->kv_capacity, 0);

  batch_rows_into_window (b, &m->dec_conv0, b->tr.x, steps);
  float *x = bb->act[0], *y = bb->act[1];
  batch_conv (b, &m->dec_conv0, CONV_DEC_FIRST, 0, 0, steps, x, 0.0f);
  int cols = steps;
  for (int i = 0; i < m->n_stages; i++) {
    const Stage *st = &m->dec_stages[i];
    ops->elu_2d (ex, x, n * cols, x, n * cols, st->up.c_in, n * cols);
    batch_conv_transpose (b, &st->up, &st->up.b, stage_carry, i, x, cols, y);
    cols *= st->up.stride;
    batch_res_blocks (b, st, CONV_DEC_RES, i, y, cols);
    float *t = x;
    x = y;
    y = t;
  }
  batch_elu_into_window (b, &m->dec_final, x, m->dec_final.c_in, cols, n);
  batch_conv (b, &m->dec_final, CONV_DEC_FINAL, 0, 0, cols, bb->pcm, 0.0f);
  ops->download_async (ex, bb->pcm_host, bb->pcm, (gsize) n * cols * sizeof (float));
}

/* The device part of the batch call in progress, over the inputs staged in the batch's pinned
 * buffers and its row table: the row table's upload, then the direction's layers over every
 * session at once. Recordable as device_encode is, for one list of sessions. */
static void
batch_device (gpointer ctx)
{
  MoshiMimiBatch *b = ctx;
  b->m->be->ops->upload (b->ex, b->rc_dev, b->rc_host,
      (gsize) b->n * b->stride * sizeof (MoshiRowCache));
  if (b->decode)
    batch_decode_device (b);
  else
    batch_encode_device (b);
}

/* A batch call's shape: the codebooks, whether a first-frame branch runs, and the sessions in
 * order (by serial: their buffers are in a recording). */
static gboolean
batch_run (MoshiMimiBatch *b, int n, gboolean decode, GError **error)
{
  gboolean first = FALSE;
  for (int i = 0; i < n; i++)
    first = first || first_frame_pending (b->sessions[i], decode);
  GString *key = g_string_new (NULL);
  g_string_printf (key, "%d/%d", b->num_codebooks, first);
  for (int i = 0; i < n; i++)
    g_string_append_printf (key, "/%u", b->sessions[i]->serial);
  b->n = n;
  b->decode = decode;
  gboolean ok = moshi_recorder_run (b->rec, decode, key->str, first, batch_device, b, error);
  g_string_free (key, TRUE);
  return ok;
}

/* Both directions: the device part on the staged inputs, one wait. */
static gboolean
batch_call (MoshiMimiBatch *b, int n, gboolean decode, GError **error)
{
  const MoshiBackendOps *ops = b->m->be->ops;
  /* The batch's queue works on the sessions' state: their own queues must be idle (a reset
   * queues work). */
  for (int i = 0; i < n; i++)
    if (!ops->synchronize (b->sessions[i]->ex, error))
      return FALSE;
  batch_rows (b, n, decode);
  if (!batch_run (b, n, decode, error) || !ops->synchronize (b->ex, error))
    return FALSE;
  for (int i = 0; i < n; i++) {
    MoshiMimiSession *s = b->sessions[i];
    if (decode)
      s->dec_tr.pos += b->stride;
    else
      s->enc_tr.pos += b->stride;
  }
  return TRUE;
}

gboolean
moshi_mimi_batch_encode (MoshiMimiBatch *b, MoshiMimiSession **sessions, int n,
    const float *const *pcm, int32_t *const *codes, GError **error)
{
  if (!check_batch (b, sessions, n, error))
    return FALSE;
  for (int i = 0; i < n; i++)
    if (!moshi_mimi_check_pcm (b->m, pcm[i], 1, error)) {
      g_prefix_error (error, "session %d: ", i);
      return FALSE;
    }
  if (!batch_reserve (b, n, error))
    return FALSE;
  int frame = b->m->frame_size;
  /* Every session gets the codes of the most any takes: the levels are computed in order, so
   * the first ones do not depend on how many follow. */
  b->num_codebooks = 0;
  for (int i = 0; i < n; i++) {
    b->sessions[i] = sessions[i];
    b->num_codebooks = MAX (b->num_codebooks, sessions[i]->num_codebooks);
    memcpy (b->buf.pcm_host + (gsize) i * frame, pcm[i], frame * sizeof (float));
  }
  if (!batch_call (b, n, FALSE, error))
    return FALSE;
  for (int i = 0; i < n; i++)
    for (int k = 0; k < sessions[i]->num_codebooks; k++)
      codes[i][k] = b->buf.codes_host[(gsize) k * n + i];
  return TRUE;
}

gboolean
moshi_mimi_batch_decode (MoshiMimiBatch *b, MoshiMimiSession **sessions, int n,
    const int32_t *const *codes, int num_codebooks, float *const *pcm, GError **error)
{
  if (!check_batch (b, sessions, n, error))
    return FALSE;
  for (int i = 0; i < n; i++)
    if (!moshi_mimi_check_codes (b->m, codes[i], num_codebooks, 1, error)) {
      g_prefix_error (error, "session %d: ", i);
      return FALSE;
    }
  if (!batch_reserve (b, n, error))
    return FALSE;
  b->num_codebooks = num_codebooks;
  for (int i = 0; i < n; i++) {
    b->sessions[i] = sessions[i];
    for (int k = 0; k < num_codebooks; k++)
      b->buf.codes_host[(gsize) k * n + i] = codes[i][k];
  }
  if (!batch_call (b, n, TRUE, error))
    return FALSE;
  int frame = b->m->frame_size;
  for (int i = 0; i < n; i++)
    memcpy (pcm[i], b->buf.pcm_host + (gsize) i * frame, frame * sizeof (float));
  return TRUE;
}

/* ---------------------------------------------------------------- one-shot */

#define ONE_SHOT_FRAMES 16

gboolean
moshi_mimi_encode (MoshiMimi *m, const float *pcm, gsize n_samples, int num_codebooks,
    int n_threads, int32_t **codes_out, int *n_frames_out, GError **error)
{
  MoshiMimiSessionOptions opts = { .n_threads = n_threads, .num_codebooks = num_codebooks,
    .max_frames_per_call = ONE_SHOT_FRAMES, .full_context = TRUE };
  g_autoptr (MoshiMimiSession) s = moshi_mimi_session_new (m, &opts, error);
  if (s == NULL)
    return FALSE;
  gsize frame = m->frame_size;
  gsize n_frames = (n_samples + frame - 1) / frame;
  if (n_frames > G_MAXINT / (gsize) MAX (num_codebooks, 1)) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT, "input too long");
    return FALSE;
  }
  g_autofree float *padded = g_new0 (float, MAX (n_frames * frame, 1));
  if (n_samples > 0)
    memcpy (padded, pcm, n_samples * sizeof (float));
  g_autofree int32_t *codes = g_new (int32_t, MAX ((gsize) s->num_codebooks * n_frames, 1));
  if (!moshi_mimi_session_encode (s, padded, (int) n_frames, codes, error))
    return FALSE;
  *codes_out = g_steal_pointer (&codes);
  *n_frames_out = (int) n_frames;
  return TRUE;
}

gboolean
moshi_mimi_decode (MoshiMimi *m, const int32_t *codes, int num_codebooks, int n_frames,
    int n_threads, float **pcm_out, GError **error)
{
  MoshiMimiSessionOptions opts = { .n_threads = n_threads,
    .max_frames_per_call = ONE_SHOT_FRAMES, .full_context = TRUE };
  g_autoptr (MoshiMimiSession) s = moshi_mimi_session_new (m, &opts, error);
  if (s == NULL)
    return FALSE;
  /* Checked before the allocation that n_frames sizes: a negative count would wrap to a huge
   * size and abort in g_new instead of failing. */
  if (n_frames < 0 || (gsize) n_frames > G_MAXSIZE / sizeof (float) / (gsize) m->frame_size) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
        "cannot decode %d frames: the count must be between 0 and %" G_GSIZE_FORMAT, n_frames,
        G_MAXSIZE / sizeof (float) / (gsize) m->frame_size);
    return FALSE;
  }
  g_autofree float *pcm = g_new (float, MAX ((gsize) n_frames * m->frame_size, 1));
  if (!moshi_mimi_session_decode (s, codes, num_codebooks, n_frames, pcm, error))
    return FALSE;
  *pcm_out = g_steal_pointer (&pcm);
  return TRUE;
}
