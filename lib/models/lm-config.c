#include "lm-config.h"

#include "moshi-error.h"
#include "moshi-file.h"
#include "moshi-json.h"

#include <math.h>
#include <string.h>

static void
transformer_defaults (MoshiTransformerConfig *t)
{
  memset (t, 0, sizeof (*t));
  t->num_heads = 8;
  t->causal = TRUE;
  t->positional_embedding = MOSHI_POS_SIN;
  t->max_period = 10000;
  t->positional_scale = 1.0;
  t->norm = MOSHI_NORM_LAYER_NORM;
  t->gating = MOSHI_GATING_NONE;
  t->kv_repeat = 1;
  t->n_weight_sets = 1;
}

static void
lm_defaults (MoshiLmConfig *cfg)
{
  memset (cfg, 0, sizeof (*cfg));
  cfg->dim = 128;
  cfg->text_card = 32000;
  cfg->n_q = 8;
  cfg->dep_q = 8;
  cfg->card = 1024;
  cfg->existing_text_padding_id = 3;
  cfg->existing_text_end_padding_id = 0;
  cfg->depformer_dim = 256;
  transformer_defaults (&cfg->transformer);
  transformer_defaults (&cfg->depformer);
}

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

/* ---------------------------------------------------------------- JSON */

/* Ranges of the values that are not plain integer keys with their bounds at the get_int call.
 * The integer bounds keep every product of two sizes within an int and every derived size
 * (d_model * hidden_scale, context * dim for the KV cache) within a gsize. */
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

/* The top-level integer keys stored as they are, with their ranges: widths up to 2^16 and
 * vocabularies up to 2^24 keep width x vocabulary within 2^40 elements, and every product of
 * two of them within a gsize. The relations between keys are checked by check_relations. */
typedef struct {
  const char *key;
  gsize offset;
  int min, max;
  gboolean nullable;            /* null keeps the default */
} LmIntKey;

static const LmIntKey lm_int_keys[] = {
  { "dim", G_STRUCT_OFFSET (MoshiLmConfig, dim), 1, 1 << 16, FALSE },
  { "text_card", G_STRUCT_OFFSET (MoshiLmConfig, text_card), 1, 1 << 24, FALSE },
  { "text_card_out", G_STRUCT_OFFSET (MoshiLmConfig, text_card_out), 1, 1 << 24, TRUE },
  { "n_q", G_STRUCT_OFFSET (MoshiLmConfig, n_q), 0, MOSHI_LM_MAX_STREAMS - 1, FALSE },
  { "dep_q", G_STRUCT_OFFSET (MoshiLmConfig, dep_q), 0, MOSHI_LM_MAX_DEP_STEPS, FALSE },
  { "card", G_STRUCT_OFFSET (MoshiLmConfig, card), 1, 1 << 24, FALSE },
  { "existing_text_padding_id", G_STRUCT_OFFSET (MoshiLmConfig, existing_text_padding_id), 0,
    1 << 24, FALSE },
  { "existing_text_end_padding_id",
    G_STRUCT_OFFSET (MoshiLmConfig, existing_text_end_padding_id), 0, 1 << 24, FALSE },
  { "num_heads", G_STRUCT_OFFSET (MoshiLmConfig, transformer.num_heads), 1, 4096, FALSE },
  { "depformer_dim", G_STRUCT_OFFSET (MoshiLmConfig, depformer_dim), 1, 1 << 16, FALSE },
  { "depformer_low_rank_embeddings", G_STRUCT_OFFSET (MoshiLmConfig, depformer_low_rank), 1,
    1 << 16, TRUE },
};

static const LmIntKey *
find_int_key (const char *key)
{
  for (guint i = 0; i < G_N_ELEMENTS (lm_int_keys); i++)
    if (strcmp (key, lm_int_keys[i].key) == 0)
      return &lm_int_keys[i];
  return NULL;
}

typedef struct {
  const char *what;
  GError **error;
} Reader;

static gboolean
bad (Reader *rd, const char *key, const char *expected)
{
  g_set_error (rd->error, MOSHI_ERROR, MOSHI_ERROR_CONFIG, "%s: \"%s\" must be %s", rd->what, key,
      expected);
  return FALSE;
}

static gboolean
get_int (Reader *rd, const MoshiJson *v, const char *key, int min, int max, int *out)
{
  gint64 x;
  if (!moshi_json_int64 (v, &x) || x < min || x > max) {
    g_autofree char *range = g_strdup_printf ("an integer in [%d, %d]", min, max);
    return bad (rd, key, range);
  }
  *out = (int) x;
  return TRUE;
}

static gboolean
get_number (Reader *rd, const MoshiJson *v, const char *key, double min, double max, double *out)
{
  if (!moshi_json_double (v, out) || !(*out >= min && *out <= max)) {
    g_autofree char *range = g_strdup_printf ("a number in [%g, %g]", min, max);
    return bad (rd, key, range);
  }
  return TRUE;
}

static gboolean
get_bool (Reader *rd, const MoshiJson *v, const char *key, gboolean *out)
{
  if (!moshi_json_bool (v, out))
    return bad (rd, key, "true or false");
  return TRUE;
}

static gboolean
is_null (const MoshiJson *v)
{
  return moshi_json_kind (v) == MOSHI_JSON_NULL;
}

static gboolean
get_norm (Reader *rd, const MoshiJson *v, const char *key, MoshiNormKind *out)
{
  static const struct { const char *name; MoshiNormKind kind; } norms[] = {
    { "layer_norm", MOSHI_NORM_LAYER_NORM }, { "layer_norm_f32", MOSHI_NORM_LAYER_NORM_F32 },
    { "rms_norm", MOSHI_NORM_RMS_NORM }, { "rms_norm_f32", MOSHI_NORM_RMS_NORM_F32 },
  };
  const char *s = moshi_json_string (v);
  for (guint i = 0; s && i < G_N_ELEMENTS (norms); i++)
    if (strcmp (s, norms[i].name) == 0) {
      *out = norms[i].kind;
      return TRUE;
    }
  return bad (rd, key, "one of layer_norm, layer_norm_f32, rms_norm, rms_norm_f32");
}

static gboolean
get_pos (Reader *rd, const MoshiJson *v, const char *key, MoshiPosKind *out)
{
  static const struct { const char *name; MoshiPosKind kind; } kinds[] = {
    { "none", MOSHI_POS_NONE }, { "sin", MOSHI_POS_SIN }, { "rope", MOSHI_POS_ROPE },
    { "sin_rope", MOSHI_POS_SIN_ROPE }, { "rope_concat", MOSHI_POS_ROPE_CONCAT },
  };
  const char *s = moshi_json_string (v);
  for (guint i = 0; s && i < G_N_ELEMENTS (kinds); i++)
    if (strcmp (s, kinds[i].name) == 0) {
      *out = kinds[i].kind;
      return TRUE;
    }
  return bad (rd, key, "one of none, sin, rope, sin_rope, rope_concat");
}

static gboolean
get_gating (Reader *rd, const MoshiJson *v, const char *key, MoshiGatingKind *out)
{
  const char *s = moshi_json_string (v);
  if (s && strcmp (s, "none") == 0)
    *out = MOSHI_GATING_NONE;
  else if (s && strcmp (s, "silu") == 0)
    *out = MOSHI_GATING_SILU;
  else if (s && strcmp (s, "gelu") == 0)
    *out = MOSHI_GATING_GELU;
  else
    return bad (rd, key, "none, silu or gelu (other gating activations are not supported)");
  return TRUE;
}

/* A keyword argument of StreamingTransformer, given to the main transformer (and copied to the
 * depformer) or, with the depformer_ prefix, to the depformer only. Returns -1 when key is not
 * one, FALSE on a bad value. */
static int
transformer_kwarg (Reader *rd, MoshiTransformerConfig *t, const char *name, const char *key,
    const MoshiJson *v)
{
  if (strcmp (name, "num_layers") == 0)
    return get_int (rd, v, key, 0, 4096, &t->num_layers);
  if (strcmp (name, "positional_embedding") == 0)
    return get_pos (rd, v, key, &t->positional_embedding);
  if (strcmp (name, "max_period") == 0)
    return get_number (rd, v, key, LM_MIN_MAX_PERIOD, LM_MAX_MAX_PERIOD, &t->max_period);
  if (strcmp (name, "positional_scale") == 0)
    return get_number (rd, v, key, -LM_MAX_POSITIONAL_SCALE, LM_MAX_POSITIONAL_SCALE,
        &t->positional_scale);
  if (strcmp (name, "layer_scale") == 0) {
    t->layer_scale = !is_null (v);
    return TRUE;
  }
  if (strcmp (name, "gating") == 0)
    return get_gating (rd, v, key, &t->gating);
  if (strcmp (name, "kv_repeat") == 0)
    return get_int (rd, v, key, 1, 1024, &t->kv_repeat);
  if (strcmp (name, "norm") == 0)
    return get_norm (rd, v, key, &t->norm);
  if (strcmp (name, "cross_attention") == 0) {
    gboolean x;
    if (!get_bool (rd, v, key, &x))
      return FALSE;
    if (x) {
      g_set_error (rd->error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
          "%s: \"%s\": cross-attention conditioning is not supported", rd->what, key);
      return FALSE;
    }
    return TRUE;
  }
  return -1;
}

/* Keys of the checkpoint description, not of the LM. */
static const char *const ignored_keys[] = {
  "moshi_name", "mimi_name", "mimi_config_name", "tokenizer_name", "lora_name",
  "lm_gen_config", "tts_config", "stt_config", "model_id", "depformer_causal",
  "gradient_checkpointing", "extra_heads_num_heads", "extra_heads_dim", "depformer_context",
  NULL
};

/* Keys that must be false / null / 0 here because the feature is not implemented. */
static const char *const must_be_off[] = {
  "norm_emb", "bias_proj", "demux_second_text_stream", "demux_second_stream", "quantize",
  "lora", NULL
};

/* "conditioners" + "fuser": only LUT conditioners fused by "sum" are supported. */
static gboolean
get_conditioners (Reader *rd, MoshiLmConfig *cfg, const MoshiJson *conds, const MoshiJson *fuser)
{
  if (fuser == NULL || is_null (fuser)) {
    if (conds && moshi_json_kind (conds) == MOSHI_JSON_OBJECT && moshi_json_length (conds) > 0)
      return bad (rd, "fuser", "given with \"conditioners\" (an object with a \"sum\" list)");
    return TRUE;
  }
  if (moshi_json_kind (fuser) != MOSHI_JSON_OBJECT)
    return bad (rd, "fuser", "an object");
  const MoshiJson *sum = NULL;
  for (gsize i = 0; i < moshi_json_length (fuser); i++) {
    const char *key = moshi_json_member_name (fuser, i);
    const MoshiJson *v = moshi_json_index (fuser, i);
    if (strcmp (key, "sum") == 0) {
      sum = v;
    } else if (strcmp (key, "cross") == 0 || strcmp (key, "prepend") == 0) {
      if (moshi_json_kind (v) != MOSHI_JSON_ARRAY || moshi_json_length (v) > 0) {
        g_set_error (rd->error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
            "%s: \"fuser.%s\": only \"sum\" conditioning is supported", rd->what, key);
        return FALSE;
      }
    } else if (strcmp (key, "cross_attention_pos_emb") == 0
        || strcmp (key, "cross_attention_pos_emb_scale") == 0) {
      /* only used by cross conditioning */
    } else {
      g_set_error (rd->error, MOSHI_ERROR, MOSHI_ERROR_CONFIG, "%s: \"fuser.%s\" is not supported",
          rd->what, key);
      return FALSE;
    }
  }
  if (sum == NULL)
    return TRUE;
  if (moshi_json_kind (sum) != MOSHI_JSON_ARRAY || moshi_json_length (sum) > MOSHI_LM_MAX_CONDITIONERS)
    return bad (rd, "fuser.sum", "a list of at most 4 conditioner names");
  for (gsize i = 0; i < moshi_json_length (sum); i++) {
    const char *name = moshi_json_string (moshi_json_index (sum, i));
    if (name == NULL || strlen (name) >= MOSHI_LM_CONDITION_NAME_LEN)
      return bad (rd, "fuser.sum", "a list of conditioner names (up to 63 bytes)");
    const MoshiJson *c = conds && moshi_json_kind (conds) == MOSHI_JSON_OBJECT
        ? moshi_json_get (conds, name) : NULL;
    g_autofree char *where = g_strdup_printf ("conditioners.%s", name);
    if (c == NULL || moshi_json_kind (c) != MOSHI_JSON_OBJECT)
      return bad (rd, where, "an object (it is listed in fuser.sum)");
    const char *type = moshi_json_string (moshi_json_get (c, "type"));
    if (type == NULL || strcmp (type, "lut") != 0) {
      g_set_error (rd->error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
          "%s: \"%s.type\" \"%s\" is not supported (only \"lut\" conditioners)", rd->what, where,
          type ? type : "(missing)");
      return FALSE;
    }
    const MoshiJson *lut = moshi_json_get (c, "lut");
    g_autofree char *lwhere = g_strdup_printf ("%s.lut", where);
    if (lut == NULL || moshi_json_kind (lut) != MOSHI_JSON_OBJECT)
      return bad (rd, lwhere, "an object");
    MoshiLmConditioner *mc = &cfg->conditioners[cfg->n_conditioners++];
    memset (mc, 0, sizeof (*mc));
    g_strlcpy (mc->name, name, sizeof (mc->name));
    mc->learn_padding = TRUE;
    gboolean have_bins = FALSE, have_dim = FALSE;
    for (gsize k = 0; k < moshi_json_length (lut); k++) {
      const char *key = moshi_json_member_name (lut, k);
      const MoshiJson *v = moshi_json_index (lut, k);
      g_autofree char *kw = g_strdup_printf ("%s.%s", lwhere, key);
      gboolean b;
      if (strcmp (key, "n_bins") == 0) {
        if (!get_int (rd, v, kw, 1, 1 << 20, &mc->n_bins))
          return FALSE;
        have_bins = TRUE;
      } else if (strcmp (key, "dim") == 0) {
        if (!get_int (rd, v, kw, 1, 1 << 16, &mc->dim))
          return FALSE;
        have_dim = TRUE;
      } else if (strcmp (key, "tokenizer") == 0) {
        const char *t = moshi_json_string (v);
        if (t == NULL || strcmp (t, "noop") != 0)
          return bad (rd, kw, "\"noop\" (the only LUT tokenizer)");
      } else if (strcmp (key, "possible_values") == 0) {
        if (is_null (v))
          continue;
        if (moshi_json_kind (v) != MOSHI_JSON_ARRAY
            || moshi_json_length (v) > MOSHI_LM_MAX_CONDITION_VALUES)
          return bad (rd, kw, "null or a list of at most 32 strings");
        mc->n_values = (int) moshi_json_length (v);
        for (int j = 0; j < mc->n_values; j++) {
          const char *s = moshi_json_string (moshi_json_index (v, j));
          if (s == NULL || strlen (s) >= MOSHI_LM_CONDITION_NAME_LEN)
            return bad (rd, kw, "a list of strings of up to 63 bytes");
          g_strlcpy (mc->values[j], s, MOSHI_LM_CONDITION_NAME_LEN);
        }
      } else if (strcmp (key, "learn_padding") == 0) {
        if (!get_bool (rd, v, kw, &mc->learn_padding))
          return FALSE;
      } else if (strcmp (key, "force_linear") == 0) {
        if (!get_bool (rd, v, kw, &b))
          return FALSE;
        if (!b)
          return bad (rd, kw, "true (an identity output projection is not supported)");
      } else if (strcmp (key, "output_bias") == 0) {
        if (!get_bool (rd, v, kw, &b))
          return FALSE;
        if (b)
          return bad (rd, kw, "false (as upstream asserts)");
      } else if (strcmp (key, "init_scale") == 0 || strcmp (key, "pad_empty") == 0) {
        /* training-time only */
      } else {
        g_set_error (rd->error, MOSHI_ERROR, MOSHI_ERROR_CONFIG, "%s: \"%s\" is not supported",
            rd->what, kw);
        return FALSE;
      }
    }
    if (!have_bins || !have_dim)
      return bad (rd, lwhere, "an object with n_bins and dim");
    if (mc->n_values > mc->n_bins)
      return bad (rd, lwhere, "an object with at most n_bins possible_values");
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
  lm_defaults (cfg);
  g_autoptr (MoshiJson) root = moshi_json_parse (text, len, what, error);
  if (root == NULL)
    return FALSE;
  if (moshi_json_kind (root) != MOSHI_JSON_OBJECT) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG, "%s: the config must be a JSON object", what);
    return FALSE;
  }
  Reader rd = { what, error };
  double hidden_scale = 4;
  int dep_ff = 0;
  gboolean wps = FALSE, have_delays = FALSE, have_schedule = FALSE;
  const MoshiJson *delays = NULL, *schedule = NULL;
  MoshiPosKind dep_pos = MOSHI_POS_SIN;
  int context = 0;
  int dep_num_heads = 0;
  MoshiTransformerConfig dep_overrides;
  transformer_defaults (&dep_overrides);
  /* depformer_* transformer keys are applied after the main ones are copied */
  GPtrArray *dep_keys = g_ptr_array_new ();
  const MoshiJson *conds = NULL, *fuser = NULL;

  gsize n = moshi_json_length (root);
  gboolean ok = TRUE;
  for (gsize i = 0; ok && i < n; i++) {
    const char *key = moshi_json_member_name (root, i);
    const MoshiJson *v = moshi_json_index (root, i);
    if (g_strv_contains (ignored_keys, key))
      continue;
    if (strcmp (key, "model_type") == 0) {
      const char *mt = moshi_json_string (v);
      cfg->hibiki = mt && strcmp (mt, "hibiki") == 0;
      continue;
    }
    if (strcmp (key, "conditioners") == 0) {
      conds = v;
      continue;
    }
    if (strcmp (key, "fuser") == 0) {
      fuser = v;
      continue;
    }
    if (g_strv_contains (must_be_off, key)) {
      gboolean on = FALSE;
      gint64 num = 0;
      if (moshi_json_kind (v) == MOSHI_JSON_TRUE || (moshi_json_kind (v) == MOSHI_JSON_OBJECT
              && moshi_json_length (v) > 0) || (moshi_json_int64 (v, &num) && num != 0))
        on = TRUE;
      if (on) {
        g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG, "%s: \"%s\" is not supported", what, key);
        ok = FALSE;
      }
      continue;
    }
    const LmIntKey *ik = find_int_key (key);
    if (ik != NULL)
      ok = (ik->nullable && is_null (v))
          || get_int (&rd, v, key, ik->min, ik->max, (int *) ((char *) cfg + ik->offset));
    else if (strcmp (key, "hidden_scale") == 0)
      ok = get_number (&rd, v, key, LM_MIN_HIDDEN_SCALE, LM_MAX_HIDDEN_SCALE, &hidden_scale);
    else if (strcmp (key, "causal") == 0)
      ok = get_bool (&rd, v, key, &cfg->transformer.causal);
    else if (strcmp (key, "context") == 0)
      ok = is_null (v) || get_int (&rd, v, key, 1, LM_MAX_CONTEXT, &context);
    else if (strcmp (key, "delays") == 0) {
      delays = v;
      have_delays = TRUE;
    } else if (strcmp (key, "depformer_dim_feedforward") == 0)
      ok = is_null (v) || get_int (&rd, v, key, 1, 1 << 20, &dep_ff);
    else if (strcmp (key, "depformer_multi_linear") == 0)
      ok = get_bool (&rd, v, key, &cfg->depformer_multi_linear);
    else if (strcmp (key, "depformer_weights_per_step") == 0)
      ok = get_bool (&rd, v, key, &wps);
    else if (strcmp (key, "depformer_weights_per_step_schedule") == 0) {
      schedule = v;
      have_schedule = !is_null (v);
    } else if (strcmp (key, "depformer_pos_emb") == 0)
      ok = get_pos (&rd, v, key, &dep_pos);
    else if (strcmp (key, "depformer_norm") == 0) {
      cfg->has_depformer_norm = !is_null (v);
      ok = is_null (v) || get_norm (&rd, v, key, &cfg->depformer_norm);
    } else if (strcmp (key, "depformer_num_heads") == 0)
      ok = get_int (&rd, v, key, 1, 4096, &dep_num_heads);
    else if (g_str_has_prefix (key, "depformer_")) {
      int r = transformer_kwarg (&rd, &dep_overrides, key + strlen ("depformer_"), key, v);
      if (r < 0) {
        g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG, "%s: \"%s\" is not supported", what, key);
        ok = FALSE;
      } else {
        ok = r;
        g_ptr_array_add (dep_keys, (gpointer) key);
      }
    } else {
      int r = transformer_kwarg (&rd, &cfg->transformer, key, key, v);
      if (r < 0) {
        g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG, "%s: \"%s\" is not supported", what, key);
        ok = FALSE;
      } else {
        ok = r;
      }
    }
  }
  if (ok)
    ok = get_conditioners (&rd, cfg, conds, fuser);
  if (!ok) {
    g_ptr_array_unref (dep_keys);
    return FALSE;
  }

  /* Main transformer. "norm" is an LMModel argument that also reaches the depformer. */
  MoshiTransformerConfig *t = &cfg->transformer;
  t->d_model = cfg->dim;
  /* In range by LM_MAX_HIDDEN_SCALE; at least 1 so that a tiny scale cannot give an empty layer. */
  t->dim_feedforward = MAX (1, (int) (hidden_scale * cfg->dim));
  t->context = context;
  if (cfg->text_card_out == 0)
    cfg->text_card_out = cfg->text_card;

  /* Depformer: the main kwargs, then the depformer_ ones, then the forced settings. */
  MoshiTransformerConfig *d = &cfg->depformer;
  *d = *t;
  for (guint i = 0; i < dep_keys->len; i++) {
    const char *name = (const char *) dep_keys->pdata[i] + strlen ("depformer_");
    const MoshiJson *v = moshi_json_get (root, dep_keys->pdata[i]);
    transformer_kwarg (&rd, d, name, dep_keys->pdata[i], v);
  }
  g_ptr_array_unref (dep_keys);
  d->d_model = cfg->depformer_dim;
  d->num_heads = dep_num_heads;
  d->dim_feedforward = dep_ff ? dep_ff : MAX (1, (int) (hidden_scale * cfg->depformer_dim));
  d->positional_embedding = dep_pos;
  d->context = 0;
  d->weights_per_step = wps ? cfg->dep_q : 0;
  d->n_weight_sets = 1;
  for (int k = 0; k < MOSHI_LM_MAX_DEP_STEPS; k++)
    d->schedule[k] = wps ? k : 0;
  if (wps)
    d->n_weight_sets = cfg->dep_q;
  if (have_schedule) {
    if (moshi_json_kind (schedule) != MOSHI_JSON_ARRAY
        || (int) moshi_json_length (schedule) != cfg->dep_q || !wps)
      return bad (&rd, "depformer_weights_per_step_schedule",
          "a list of dep_q integers, with depformer_weights_per_step true");
    d->n_weight_sets = 0;
    for (int k = 0; k < cfg->dep_q; k++) {
      if (!get_int (&rd, moshi_json_index (schedule, k), "depformer_weights_per_step_schedule", 0,
              cfg->dep_q - 1, &d->schedule[k]))
        return FALSE;
      d->n_weight_sets = MAX (d->n_weight_sets, d->schedule[k] + 1);
    }
  }

  int streams = moshi_lm_config_num_streams (cfg);
  if (have_delays) {
    if (moshi_json_kind (delays) != MOSHI_JSON_ARRAY || (int) moshi_json_length (delays) != streams) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
          "%s: \"delays\" must list %d delays (text + n_q = %d audio streams)", what, streams,
          cfg->n_q);
      return FALSE;
    }
    for (int k = 0; k < streams; k++)
      if (!get_int (&rd, moshi_json_index (delays, k), "delays", 0, 1000, &cfg->delays[k]))
        return FALSE;
  } else if (streams != 1) {
    /* The upstream default [0] only fits a model without audio streams. */
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
        "%s: \"delays\" is missing (%d streams need one delay each)", what, streams);
    return FALSE;
  }

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
  if (wps && d->gating == MOSHI_GATING_NONE) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
        "%s: depformer weights per step need a gated feed-forward (as upstream)", what);
    return FALSE;
  }
  return check_relations (cfg, what, error);
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
