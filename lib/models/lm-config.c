#include "lm-config.h"

#include "config-table.h"
#include "moshi-error.h"
#include "moshi-file.h"
#include "moshi-json.h"

#include <math.h>
#include <string.h>

float
moshi_norm_eps (MoshiNormKind kind)
{
  switch (kind) {
    case MOSHI_NORM_LAYER_NORM:
    case MOSHI_NORM_RMS_NORM:
      return 1e-5f;
    default:
      return 1e-8f;
  }
}

int
moshi_lm_config_num_streams (const MoshiLmConfig *cfg)
{
  return 1 + cfg->n_q;
}

int
moshi_lm_config_max_delay (const MoshiLmConfig *cfg)
{
  int m = 0;
  for (int k = 0; k < moshi_lm_config_num_streams (cfg); k++)
    m = MAX (m, cfg->delays[k]);
  return m;
}

/* ---------------------------------------------------------------- the keys */

/* The integer ranges keep every product of two sizes within an int and every derived size
 * within a gsize: widths up to 2^16 and vocabularies up to 2^24 keep width x vocabulary within
 * 2^40 elements; dim_feedforward = hidden_scale * dim stays below 2^22. The relations between
 * keys are checked by check_relations. */

/* The KV cache holds context positions per layer, and attention scores a whole ring per head:
 * 2^20 positions is 23 hours at 12.5 Hz, far beyond any released model (3000). */
#define LM_MAX_CONTEXT (1 << 20)
/* dim_feedforward = hidden_scale * dim must be a positive int (dim <= 2^16). */
#define LM_MIN_HIDDEN_SCALE (1.0 / 65536)
#define LM_MAX_HIDDEN_SCALE 64.0
/* RoPE and sinusoidal embeddings take log (max_period). */
#define LM_MIN_MAX_PERIOD 1.0
#define LM_MAX_MAX_PERIOD 1e12
#define LM_MAX_POSITIONAL_SCALE 1e6

/* What the tables fill: the config, and the keys that only take effect once all are read. */
typedef struct {
  MoshiLmConfig cfg;
  double hidden_scale;
  int context;                  /* 0: unbounded */
  int dep_dim_feedforward;      /* 0: hidden_scale * depformer_dim */
  gboolean dep_weights_per_step;
  int dep_pos;                  /* MoshiPosKind */
  int dep_num_heads;            /* no default: required with a depformer */
  MoshiTransformerConfig dep_overrides;  /* the depformer_ transformer keyword arguments */
} LmReading;

G_STATIC_ASSERT (sizeof (MoshiPosKind) == sizeof (int));
G_STATIC_ASSERT (sizeof (MoshiNormKind) == sizeof (int));
G_STATIC_ASSERT (sizeof (MoshiGatingKind) == sizeof (int));

#define KEY_INT_AT(k, off, lo, hi, def, fl) { .key = k, .type = MOSHI_CONFIG_INT, .offset = off, \
    .min = lo, .max = hi, .default_value = def, .flags = fl }
#define KEY_NUMBER_AT(k, off, lo, hi, def) { .key = k, .type = MOSHI_CONFIG_NUMBER, \
    .offset = off, .min = lo, .max = hi, .default_value = def }
#define KEY_BOOL_AT(k, off, def) { .key = k, .type = MOSHI_CONFIG_BOOL, .offset = off, \
    .default_value = def }
#define KEY_CHOICE_AT(k, off, names, def) { .key = k, .type = MOSHI_CONFIG_CHOICE, .offset = off, \
    .choices = names, .default_value = def }
#define KEY_PRESENT_AT(k, off, def) { .key = k, .type = MOSHI_CONFIG_PRESENT, .offset = off, \
    .default_value = def }
#define KEY_EXPECT_BOOL(k, value) { .key = k, .type = MOSHI_CONFIG_EXPECT_BOOL, \
    .default_value = value }
#define KEY_EXPECT_NAME(k, names) { .key = k, .type = MOSHI_CONFIG_EXPECT_NAME, .choices = names }
#define KEY(k, type_) { .key = k, .type = MOSHI_CONFIG_##type_ }

#define LM(field) G_STRUCT_OFFSET (LmReading, field)
#define TR(field) G_STRUCT_OFFSET (MoshiTransformerConfig, field)

static const MoshiConfigChoice norm_kinds[] = {
  { "layer_norm", MOSHI_NORM_LAYER_NORM }, { "layer_norm_f32", MOSHI_NORM_LAYER_NORM_F32 },
  { "rms_norm", MOSHI_NORM_RMS_NORM }, { "rms_norm_f32", MOSHI_NORM_RMS_NORM_F32 },
  { NULL, 0 }
};
static const MoshiConfigChoice pos_kinds[] = {
  { "none", MOSHI_POS_NONE }, { "sin", MOSHI_POS_SIN }, { "rope", MOSHI_POS_ROPE },
  { "sin_rope", MOSHI_POS_SIN_ROPE }, { "rope_concat", MOSHI_POS_ROPE_CONCAT }, { NULL, 0 }
};
/* other gating activations are not implemented */
static const MoshiConfigChoice gating_kinds[] = {
  { "none", MOSHI_GATING_NONE }, { "silu", MOSHI_GATING_SILU }, { "gelu", MOSHI_GATING_GELU },
  { NULL, 0 }
};

/* Keyword arguments of StreamingTransformer: bare for the main transformer (and copied to the
 * depformer), with the depformer_ prefix for the depformer only. Offsets into
 * MoshiTransformerConfig. */
static const MoshiConfigKey transformer_keys[] = {
  KEY_INT_AT ("num_layers", TR (num_layers), 0, 4096, 0, 0),
  KEY_CHOICE_AT ("positional_embedding", TR (positional_embedding), pos_kinds, MOSHI_POS_SIN),
  KEY_NUMBER_AT ("max_period", TR (max_period), LM_MIN_MAX_PERIOD, LM_MAX_MAX_PERIOD, 10000),
  KEY_NUMBER_AT ("positional_scale", TR (positional_scale), -LM_MAX_POSITIONAL_SCALE,
      LM_MAX_POSITIONAL_SCALE, 1.0),
  /* the initial LayerScale value: null means no LayerScale */
  KEY_PRESENT_AT ("layer_scale", TR (layer_scale), FALSE),
  KEY_CHOICE_AT ("gating", TR (gating), gating_kinds, MOSHI_GATING_NONE),
  /* only 1 is implemented (checked with the relations, to say so) */
  KEY_INT_AT ("kv_repeat", TR (kv_repeat), 1, 1024, 1, 0),
  KEY_CHOICE_AT ("norm", TR (norm), norm_kinds, MOSHI_NORM_LAYER_NORM),
  /* cross-attention conditioning is not implemented */
  KEY_EXPECT_BOOL ("cross_attention", FALSE),
};

/* The LMModel keys. Offsets into LmReading. */
static const MoshiConfigKey lm_keys[] = {
  KEY_INT_AT ("dim", LM (cfg.dim), 1, 1 << 16, 128, 0),
  KEY_INT_AT ("text_card", LM (cfg.text_card), 1, 1 << 24, 32000, 0),
  /* 0 (null): text_card */
  KEY_INT_AT ("text_card_out", LM (cfg.text_card_out), 1, 1 << 24, 0,
      MOSHI_CONFIG_NULL_KEEPS_DEFAULT),
  KEY_INT_AT ("n_q", LM (cfg.n_q), 0, MOSHI_LM_MAX_STREAMS - 1, 8, 0),
  KEY_INT_AT ("dep_q", LM (cfg.dep_q), 0, MOSHI_LM_MAX_DEP_STEPS, 8, 0),
  KEY_INT_AT ("card", LM (cfg.card), 1, 1 << 24, 1024, 0),
  KEY_INT_AT ("existing_text_padding_id", LM (cfg.existing_text_padding_id), 0, 1 << 24, 3, 0),
  KEY_INT_AT ("existing_text_end_padding_id", LM (cfg.existing_text_end_padding_id), 0, 1 << 24,
      0, 0),
  KEY_INT_AT ("num_heads", LM (cfg.transformer.num_heads), 1, 4096, 8, 0),
  KEY_NUMBER_AT ("hidden_scale", LM (hidden_scale), LM_MIN_HIDDEN_SCALE, LM_MAX_HIDDEN_SCALE, 4),
  /* only causal = true is implemented (checked with the relations, to say so) */
  KEY_BOOL_AT ("causal", LM (cfg.transformer.causal), TRUE),
  KEY_INT_AT ("context", LM (context), 1, LM_MAX_CONTEXT, 0, MOSHI_CONFIG_NULL_KEEPS_DEFAULT),
  /* 1 + n_q integers in [0, 1000], read by read_delays */
  KEY ("delays", CUSTOM),
  KEY_INT_AT ("depformer_dim", LM (cfg.depformer_dim), 1, 1 << 16, 256, 0),
  KEY_INT_AT ("depformer_dim_feedforward", LM (dep_dim_feedforward), 1, 1 << 20, 0,
      MOSHI_CONFIG_NULL_KEEPS_DEFAULT),
  KEY_INT_AT ("depformer_num_heads", LM (dep_num_heads), 1, 4096, 0, 0),
  KEY_BOOL_AT ("depformer_multi_linear", LM (cfg.depformer_multi_linear), FALSE),
  KEY_BOOL_AT ("depformer_weights_per_step", LM (dep_weights_per_step), FALSE),
  /* dep_q integers in [0, dep_q - 1], read by read_schedule */
  KEY ("depformer_weights_per_step_schedule", CUSTOM),
  KEY_CHOICE_AT ("depformer_pos_emb", LM (dep_pos), pos_kinds, MOSHI_POS_SIN),
  /* null: no depformer norm; else a norm kind, read by read_depformer_norm */
  KEY ("depformer_norm", CUSTOM),
  KEY_INT_AT ("depformer_low_rank_embeddings", LM (cfg.depformer_low_rank), 1, 1 << 16, 0,
      MOSHI_CONFIG_NULL_KEEPS_DEFAULT),
  /* "hibiki": text_emb row 2 reads as row 3 */
  KEY ("model_type", CUSTOM),
  /* LUT conditioners fused by "sum", read by read_conditioners */
  KEY ("conditioners", CUSTOM),
  KEY ("fuser", CUSTOM),
  /* the checkpoint description, not the LM */
  KEY ("moshi_name", IGNORED), KEY ("mimi_name", IGNORED), KEY ("mimi_config_name", IGNORED),
  KEY ("tokenizer_name", IGNORED), KEY ("lora_name", IGNORED), KEY ("lm_gen_config", IGNORED),
  KEY ("tts_config", IGNORED), KEY ("stt_config", IGNORED), KEY ("model_id", IGNORED),
  KEY ("depformer_causal", IGNORED), KEY ("gradient_checkpointing", IGNORED),
  KEY ("extra_heads_num_heads", IGNORED), KEY ("extra_heads_dim", IGNORED),
  KEY ("depformer_context", IGNORED),
  /* features that are not implemented: false, null or 0 */
  KEY ("norm_emb", OFF), KEY ("bias_proj", OFF), KEY ("demux_second_text_stream", OFF),
  KEY ("demux_second_stream", OFF), KEY ("quantize", OFF), KEY ("lora", OFF),
};

/* The "lut" object of a conditioner. Offsets into MoshiLmConditioner. */
static const MoshiConfigChoice noop[] = { { "noop", 0 }, { NULL, 0 } };
static const MoshiConfigKey lut_keys[] = {
  KEY_INT_AT ("n_bins", G_STRUCT_OFFSET (MoshiLmConditioner, n_bins), 1, 1 << 20, 0, 0),
  KEY_INT_AT ("dim", G_STRUCT_OFFSET (MoshiLmConditioner, dim), 1, 1 << 16, 0, 0),
  /* the only LUT tokenizer */
  KEY_EXPECT_NAME ("tokenizer", noop),
  /* null or up to MOSHI_LM_MAX_CONDITION_VALUES names, read by read_condition_values */
  KEY ("possible_values", CUSTOM),
  KEY_BOOL_AT ("learn_padding", G_STRUCT_OFFSET (MoshiLmConditioner, learn_padding), TRUE),
  /* an identity output projection is not implemented */
  KEY_EXPECT_BOOL ("force_linear", TRUE),
  /* upstream asserts it is off */
  KEY_EXPECT_BOOL ("output_bias", FALSE),
  /* training-time only */
  KEY ("init_scale", IGNORED), KEY ("pad_empty", IGNORED),
};

/* ---------------------------------------------------------------- JSON */

static gboolean
is_null (const MoshiJson *v)
{
  return moshi_json_kind (v) == MOSHI_JSON_NULL;
}

static gboolean
read_condition_values (MoshiLmConditioner *mc, const MoshiJson *v, const char *path,
    const char *what, GError **error)
{
  if (v == NULL || is_null (v))
    return TRUE;
  if (moshi_json_kind (v) != MOSHI_JSON_ARRAY
      || moshi_json_length (v) > MOSHI_LM_MAX_CONDITION_VALUES)
    return moshi_config_bad_value (what, path, "null or a list of at most 32 strings", error);
  mc->n_values = (int) moshi_json_length (v);
  for (int j = 0; j < mc->n_values; j++) {
    const char *s = moshi_json_string (moshi_json_index (v, j));
    if (s == NULL || strlen (s) >= MOSHI_LM_CONDITION_NAME_LEN)
      return moshi_config_bad_value (what, path, "a list of strings of up to 63 bytes", error);
    g_strlcpy (mc->values[j], s, MOSHI_LM_CONDITION_NAME_LEN);
  }
  return TRUE;
}

/* "conditioners" + "fuser": only LUT conditioners fused by "sum" are supported. */
static gboolean
read_fuser (const MoshiJson *fuser, const MoshiJson **sum, const char *what, GError **error)
{
  *sum = NULL;
  if (moshi_json_kind (fuser) != MOSHI_JSON_OBJECT)
    return moshi_config_bad_value (what, "fuser", "an object", error);
  for (gsize i = 0; i < moshi_json_length (fuser); i++) {
    const char *key = moshi_json_member_name (fuser, i);
    const MoshiJson *v = moshi_json_index (fuser, i);
    if (strcmp (key, "sum") == 0) {
      *sum = v;
    } else if (strcmp (key, "cross") == 0 || strcmp (key, "prepend") == 0) {
      if (moshi_json_kind (v) != MOSHI_JSON_ARRAY || moshi_json_length (v) > 0) {
        g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
            "%s: \"fuser.%s\": only \"sum\" conditioning is supported", what, key);
        return FALSE;
      }
    } else if (strcmp (key, "cross_attention_pos_emb") != 0
        && strcmp (key, "cross_attention_pos_emb_scale") != 0) {
      /* (those two are only used by cross conditioning) */
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG, "%s: \"fuser.%s\" is not supported",
          what, key);
      return FALSE;
    }
  }
  return TRUE;
}

/* The conditioner called name, which fuser.sum lists. */
static gboolean
read_conditioner (MoshiLmConditioner *mc, const char *name, const MoshiJson *conds,
    const char *what, GError **error)
{
  const MoshiJson *c = conds && moshi_json_kind (conds) == MOSHI_JSON_OBJECT
      ? moshi_json_get (conds, name) : NULL;
  g_autofree char *where = g_strdup_printf ("conditioners.%s", name);
  if (c == NULL || moshi_json_kind (c) != MOSHI_JSON_OBJECT)
    return moshi_config_bad_value (what, where, "an object (it is listed in fuser.sum)", error);
  const char *type = moshi_json_string (moshi_json_get (c, "type"));
  if (type == NULL || strcmp (type, "lut") != 0) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
        "%s: \"%s.type\" \"%s\" is not supported (only \"lut\" conditioners)", what, where,
        type ? type : "(missing)");
    return FALSE;
  }
  const MoshiJson *lut = moshi_json_get (c, "lut");
  g_autofree char *lut_where = g_strdup_printf ("%s.lut", where);
  if (lut == NULL || moshi_json_kind (lut) != MOSHI_JSON_OBJECT)
    return moshi_config_bad_value (what, lut_where, "an object", error);
  memset (mc, 0, sizeof (*mc));
  g_strlcpy (mc->name, name, sizeof (mc->name));
  moshi_config_set_defaults (lut_keys, G_N_ELEMENTS (lut_keys), mc);
  g_autofree char *values_where = g_strdup_printf ("%s.possible_values", lut_where);
  if (!moshi_config_read_object (lut_keys, G_N_ELEMENTS (lut_keys), lut, mc, what, lut_where,
          error)
      || !read_condition_values (mc, moshi_json_get (lut, "possible_values"), values_where, what,
          error))
    return FALSE;
  if (moshi_json_get (lut, "n_bins") == NULL || moshi_json_get (lut, "dim") == NULL)
    return moshi_config_bad_value (what, lut_where, "an object with n_bins and dim", error);
  if (mc->n_values > mc->n_bins)
    return moshi_config_bad_value (what, lut_where, "an object with at most n_bins possible_values", error);
  return TRUE;
}

static gboolean
read_conditioners (MoshiLmConfig *cfg, const MoshiJson *conds, const MoshiJson *fuser,
    const char *what, GError **error)
{
  if (fuser == NULL || is_null (fuser)) {
    if (conds && moshi_json_kind (conds) == MOSHI_JSON_OBJECT && moshi_json_length (conds) > 0)
      return moshi_config_bad_value (what, "fuser", "given with \"conditioners\" (an object with a \"sum\" list)",
          error);
    return TRUE;
  }
  const MoshiJson *sum;
  if (!read_fuser (fuser, &sum, what, error))
    return FALSE;
  if (sum == NULL)
    return TRUE;
  if (moshi_json_kind (sum) != MOSHI_JSON_ARRAY || moshi_json_length (sum) > MOSHI_LM_MAX_CONDITIONERS)
    return moshi_config_bad_value (what, "fuser.sum", "a list of at most 4 conditioner names", error);
  for (gsize i = 0; i < moshi_json_length (sum); i++) {
    const char *name = moshi_json_string (moshi_json_index (sum, i));
    if (name == NULL || strlen (name) >= MOSHI_LM_CONDITION_NAME_LEN)
      return moshi_config_bad_value (what, "fuser.sum", "a list of conditioner names (up to 63 bytes)", error);
    if (!read_conditioner (&cfg->conditioners[cfg->n_conditioners++], name, conds, what, error))
      return FALSE;
  }
  return TRUE;
}

static gboolean
read_depformer_norm (LmReading *rd, const MoshiJson *v, const char *what, GError **error)
{
  static const MoshiConfigKey norm_key =
      KEY_CHOICE_AT ("depformer_norm", LM (cfg.depformer_norm), norm_kinds, 0);
  rd->cfg.has_depformer_norm = !is_null (v);
  return is_null (v) || moshi_config_read_value (&norm_key, v, rd, what, norm_key.key, error);
}

/* One member of the top level: an LMModel key, or a transformer keyword argument (bare or
 * depformer_). dep_overridden marks the depformer_ ones by their index in transformer_keys. */
static gboolean
read_member (LmReading *rd, const char *key, const MoshiJson *v, gboolean *dep_overridden,
    const char *what, GError **error)
{
  const MoshiConfigKey *e = moshi_config_find (lm_keys, G_N_ELEMENTS (lm_keys), key);
  if (e != NULL) {
    if (strcmp (key, "model_type") == 0) {
      const char *mt = moshi_json_string (v);
      rd->cfg.hibiki = mt && strcmp (mt, "hibiki") == 0;
      return TRUE;
    }
    if (strcmp (key, "depformer_norm") == 0)
      return read_depformer_norm (rd, v, what, error);
    return moshi_config_read_value (e, v, rd, what, key, error);
  }
  e = moshi_config_find (transformer_keys, G_N_ELEMENTS (transformer_keys), key);
  if (e != NULL)
    return moshi_config_read_value (e, v, &rd->cfg.transformer, what, key, error);
  if (g_str_has_prefix (key, "depformer_")) {
    e = moshi_config_find (transformer_keys, G_N_ELEMENTS (transformer_keys),
        key + strlen ("depformer_"));
    if (e != NULL) {
      dep_overridden[e - transformer_keys] = TRUE;
      return moshi_config_read_value (e, v, &rd->dep_overrides, what, key, error);
    }
  }
  g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG, "%s: \"%s\" is not supported", what, key);
  return FALSE;
}

static gboolean
read_schedule (LmReading *rd, const MoshiJson *schedule, const char *what, GError **error)
{
  MoshiTransformerConfig *d = &rd->cfg.depformer;
  int dep_q = rd->cfg.dep_q;
  if (moshi_json_kind (schedule) != MOSHI_JSON_ARRAY
      || (int) moshi_json_length (schedule) != dep_q || !rd->dep_weights_per_step)
    return moshi_config_bad_value (what, "depformer_weights_per_step_schedule",
        "a list of dep_q integers, with depformer_weights_per_step true", error);
  /* Its range depends on dep_q, so it is stated here rather than in lm_keys. */
  const MoshiConfigKey step_key = KEY_INT_AT ("depformer_weights_per_step_schedule",
      LM (cfg.depformer.schedule), 0, dep_q - 1, 0, 0);
  d->n_weight_sets = 0;
  for (int k = 0; k < dep_q; k++) {
    if (!moshi_config_read_int_element (&step_key, schedule, k, rd, what, step_key.key,
            error))
      return FALSE;
    d->n_weight_sets = MAX (d->n_weight_sets, d->schedule[k] + 1);
  }
  return TRUE;
}

static gboolean
read_delays (LmReading *rd, const MoshiJson *delays, const char *what, GError **error)
{
  int streams = moshi_lm_config_num_streams (&rd->cfg);
  if (delays == NULL) {
    /* The upstream default [0] only fits a model without audio streams. */
    if (streams == 1)
      return TRUE;
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
        "%s: \"delays\" is missing (%d streams need one delay each)", what, streams);
    return FALSE;
  }
  if (moshi_json_kind (delays) != MOSHI_JSON_ARRAY || (int) moshi_json_length (delays) != streams) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
        "%s: \"delays\" must list %d delays (text + n_q = %d audio streams)", what, streams,
        rd->cfg.n_q);
    return FALSE;
  }
  static const MoshiConfigKey delay_key = KEY_INT_AT ("delays", LM (cfg.delays), 0, 1000, 0, 0);
  for (int k = 0; k < streams; k++)
    if (!moshi_config_read_int_element (&delay_key, delays, k, rd, what, "delays", error))
      return FALSE;
  return TRUE;
}

static void
reading_defaults (LmReading *rd)
{
  memset (rd, 0, sizeof (*rd));
  moshi_config_set_defaults (lm_keys, G_N_ELEMENTS (lm_keys), rd);
  moshi_config_set_defaults (transformer_keys, G_N_ELEMENTS (transformer_keys),
      &rd->cfg.transformer);
  moshi_config_set_defaults (transformer_keys, G_N_ELEMENTS (transformer_keys),
      &rd->dep_overrides);
  rd->cfg.transformer.n_weight_sets = 1;
  rd->cfg.depformer = rd->cfg.transformer;
}

/* Checks between keys of the transformers, once every key has its value. */
static gboolean
check_transformers (const MoshiLmConfig *cfg, const char *what, GError **error)
{
  const MoshiTransformerConfig *t = &cfg->transformer, *d = &cfg->depformer;
  if (t->num_layers == 0) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG, "%s: \"num_layers\" is missing", what);
    return FALSE;
  }
  if (cfg->dep_q > 0 && d->num_heads == 0) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
        "%s: \"depformer_num_heads\" is missing (the depformer has no default head count)", what);
    return FALSE;
  }
  if (cfg->dep_q > cfg->n_q) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG, "%s: dep_q (%d) > n_q (%d)", what,
        cfg->dep_q, cfg->n_q);
    return FALSE;
  }
  if (t->d_model % t->num_heads != 0 || (cfg->dep_q > 0 && d->d_model % d->num_heads != 0)) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
        "%s: dim must be a multiple of num_heads (and depformer_dim of depformer_num_heads)", what);
    return FALSE;
  }
  if (t->kv_repeat != 1 || d->kv_repeat != 1) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG, "%s: kv_repeat != 1 is not supported", what);
    return FALSE;
  }
  if (!t->causal) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG, "%s: causal = false is not supported", what);
    return FALSE;
  }
  if (d->weights_per_step && d->gating == MOSHI_GATING_NONE) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
        "%s: depformer weights per step need a gated feed-forward (as upstream)", what);
    return FALSE;
  }
  return TRUE;
}

static gboolean
uses_rope (MoshiPosKind kind)
{
  return kind == MOSHI_POS_ROPE || kind == MOSHI_POS_SIN_ROPE || kind == MOSHI_POS_ROPE_CONCAT;
}

/* Checks between keys, once every key has its value. */
static gboolean
check_relations (const MoshiLmConfig *cfg, const char *what, GError **error)
{
  /* The text head samples indices into the text embedding table. */
  if (cfg->text_card_out > cfg->text_card) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
        "%s: \"text_card_out\" (%d) must not exceed \"text_card\" (%d): sampled text tokens "
        "are looked up in the text embedding", what, cfg->text_card_out, cfg->text_card);
    return FALSE;
  }
  if (cfg->existing_text_padding_id >= cfg->text_card
      || cfg->existing_text_end_padding_id >= cfg->text_card) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
        "%s: \"existing_text_padding_id\" (%d) and \"existing_text_end_padding_id\" (%d) must be "
        "text tokens, below \"text_card\" (%d)", what, cfg->existing_text_padding_id,
        cfg->existing_text_end_padding_id, cfg->text_card);
    return FALSE;
  }
  /* RoPE rotates pairs of channels, so a head needs an even size of at least 2. */
  const MoshiTransformerConfig *ts[] = { &cfg->transformer, &cfg->depformer };
  static const char *const names[][2] = { { "dim", "num_heads" },
    { "depformer_dim", "depformer_num_heads" } };
  for (int i = 0; i < (cfg->dep_q > 0 ? 2 : 1); i++) {
    int head_dim = ts[i]->d_model / ts[i]->num_heads;
    if (uses_rope (ts[i]->positional_embedding) && head_dim % 2 != 0) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
          "%s: \"%s\" / \"%s\" = %d: rotary embeddings need an even head size", what,
          names[i][0], names[i][1], head_dim);
      return FALSE;
    }
  }
  return TRUE;
}

gboolean
moshi_lm_config_from_json_text (MoshiLmConfig *cfg, const char *text, gsize len,
    const char *what, GError **error)
{
  LmReading rd;
  reading_defaults (&rd);
  *cfg = rd.cfg;
  g_autoptr (MoshiJson) root = moshi_json_parse (text, len, what, error);
  if (root == NULL)
    return FALSE;
  if (moshi_json_kind (root) != MOSHI_JSON_OBJECT) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG, "%s: the config must be a JSON object", what);
    return FALSE;
  }
  gboolean dep_overridden[G_N_ELEMENTS (transformer_keys)] = { FALSE };
  for (gsize i = 0; i < moshi_json_length (root); i++)
    if (!read_member (&rd, moshi_json_member_name (root, i), moshi_json_index (root, i),
            dep_overridden, what, error))
      return FALSE;
  if (!read_conditioners (&rd.cfg, moshi_json_get (root, "conditioners"),
          moshi_json_get (root, "fuser"), what, error))
    return FALSE;

  /* Main transformer. */
  MoshiTransformerConfig *t = &rd.cfg.transformer;
  t->d_model = rd.cfg.dim;
  /* In range by LM_MAX_HIDDEN_SCALE; at least 1 so that a tiny scale cannot give an empty layer. */
  t->dim_feedforward = MAX (1, (int) (rd.hidden_scale * rd.cfg.dim));
  t->context = rd.context;
  if (rd.cfg.text_card_out == 0)
    rd.cfg.text_card_out = rd.cfg.text_card;

  /* Depformer: the main keyword arguments, then the depformer_ ones, then the forced settings. */
  MoshiTransformerConfig *d = &rd.cfg.depformer;
  *d = *t;
  for (guint i = 0; i < G_N_ELEMENTS (transformer_keys); i++)
    if (dep_overridden[i])
      moshi_config_copy_field (&transformer_keys[i], d, &rd.dep_overrides);
  d->d_model = rd.cfg.depformer_dim;
  d->num_heads = rd.dep_num_heads;
  d->dim_feedforward = rd.dep_dim_feedforward ? rd.dep_dim_feedforward
      : MAX (1, (int) (rd.hidden_scale * rd.cfg.depformer_dim));
  d->positional_embedding = rd.dep_pos;
  d->context = 0;
  gboolean wps = rd.dep_weights_per_step;
  d->weights_per_step = wps ? rd.cfg.dep_q : 0;
  d->n_weight_sets = wps ? rd.cfg.dep_q : 1;
  for (int k = 0; k < MOSHI_LM_MAX_DEP_STEPS; k++)
    d->schedule[k] = wps ? k : 0;
  const MoshiJson *schedule = moshi_json_get (root, "depformer_weights_per_step_schedule");
  if (schedule != NULL && !is_null (schedule) && !read_schedule (&rd, schedule, what, error))
    return FALSE;
  if (!read_delays (&rd, moshi_json_get (root, "delays"), what, error)
      || !check_transformers (&rd.cfg, what, error)
      || !check_relations (&rd.cfg, what, error))
    return FALSE;
  *cfg = rd.cfg;
  return TRUE;
}

gboolean
moshi_lm_config_load (MoshiLmConfig *cfg, const char *path, GError **error)
{
  g_autofree char *text = NULL;
  gsize len = 0;
  if (!moshi_file_read_all (path, "LM config", MOSHI_FILE_MAX_CONFIG_BYTES, &text, &len, error))
    return FALSE;
  return moshi_lm_config_from_json_text (cfg, text, len, path, error);
}

void
moshi_lm_config_init_moshi_7b (MoshiLmConfig *cfg)
{
  static const char moshi_7b[] =
      "{\"dim\": 4096, \"text_card\": 32000, \"existing_text_padding_id\": 3, \"n_q\": 16,"
      " \"dep_q\": 8, \"card\": 2048, \"num_heads\": 32, \"num_layers\": 32,"
      " \"hidden_scale\": 4.125, \"causal\": true, \"layer_scale\": null, \"context\": 3000,"
      " \"max_period\": 10000, \"gating\": \"silu\", \"norm\": \"rms_norm_f32\","
      " \"positional_embedding\": \"rope\", \"depformer_dim\": 1024,"
      " \"depformer_dim_feedforward\": 4224, \"depformer_num_heads\": 16,"
      " \"depformer_num_layers\": 6, \"depformer_layer_scale\": null,"
      " \"depformer_multi_linear\": true, \"depformer_context\": 8,"
      " \"depformer_max_period\": 10000, \"depformer_gating\": \"silu\","
      " \"depformer_pos_emb\": \"none\", \"depformer_weights_per_step\": true,"
      " \"delays\": [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1]}";
  gboolean ok = moshi_lm_config_from_json_text (cfg, moshi_7b, sizeof (moshi_7b) - 1,
      "built-in Moshi 7B config", NULL);
  g_assert (ok);
}
