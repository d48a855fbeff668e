#include "mimi-config.h"

#include "moshi-error.h"
#include "moshi-file.h"
#include "moshi-json.h"

#include <math.h>
#include <string.h>

void
moshi_mimi_config_init_default (MoshiMimiConfig *cfg)
{
  static const int released_ratios[] = { 8, 6, 5, 4 };
  memset (cfg, 0, sizeof (*cfg));
  cfg->sample_rate = 24000;
  cfg->channels = 1;
  cfg->frame_rate = 12.5;
  cfg->seanet.dimension = 512;
  cfg->seanet.n_filters = 64;
  cfg->seanet.n_ratios = G_N_ELEMENTS (released_ratios);
  memcpy (cfg->seanet.ratios, released_ratios, sizeof (released_ratios));
  cfg->seanet.kernel_size = 7;
  cfg->seanet.residual_kernel_size = 3;
  cfg->seanet.last_kernel_size = 3;
  cfg->seanet.n_residual_layers = 1;
  cfg->seanet.compress = 2;
  cfg->seanet.dilation_base = 2;
  cfg->seanet.true_skip = TRUE;
  cfg->quantizer.dimension = 256;
  cfg->quantizer.n_q = 32;
  cfg->quantizer.bins = 2048;
  cfg->quantizer.input_dimension = 512;
  cfg->quantizer.output_dimension = 512;
  cfg->transformer.d_model = 512;
  cfg->transformer.num_heads = 8;
  cfg->transformer.num_layers = 8;
  cfg->transformer.dim_feedforward = 2048;
  cfg->transformer.context = 250;
  cfg->transformer.max_period = 10000;
  cfg->transformer.layer_scale = TRUE;
}

/* The SEANet hop (product of the ratios) may not exceed one frame at the highest sample rate
 * over the lowest frame rate; a bigger one cannot divide the frame size. */
#define MIMI_MAX_HOP (1 << 22)

/* 0 when the product exceeds MIMI_MAX_HOP, so that eight ratios of 64 (2^48) cannot wrap. */
static int
checked_hop (const MoshiMimiConfig *cfg)
{
  gint64 hop = 1;
  for (int i = 0; i < cfg->seanet.n_ratios; i++) {
    hop *= MAX (cfg->seanet.ratios[i], 1);
    if (hop > MIMI_MAX_HOP)
      return 0;
  }
  return (int) hop;
}

int
moshi_mimi_config_hop_length (const MoshiMimiConfig *cfg)
{
  /* Callers only use validated configs; MAX keeps a division by the hop defined regardless. */
  return MAX (checked_hop (cfg), 1);
}

int
moshi_mimi_config_frame_size (const MoshiMimiConfig *cfg)
{
  return (int) lround (cfg->sample_rate / cfg->frame_rate);
}

int
moshi_mimi_config_resample_stride (const MoshiMimiConfig *cfg)
{
  return moshi_mimi_config_frame_size (cfg) / moshi_mimi_config_hop_length (cfg);
}

/* ---- JSON reading ---- */

typedef struct {
  const char *what;
  GError **error;
} Reader;

static gboolean
read_int (Reader *rd, const MoshiJson *obj, const char *section, const char *key, int *out,
    int min, int max)
{
  const MoshiJson *v = moshi_json_get (obj, key);
  if (v == NULL)
    return TRUE;
  gint64 x;
  double d;
  if (!moshi_json_int64 (v, &x)) {
    /* Python writes some integral values as floats (e.g. 512.0). */
    if (!moshi_json_double (v, &d) || d != floor (d)) {
      g_set_error (rd->error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
          "%s: %s%s%s must be an integer", rd->what, section, *section ? "." : "", key);
      return FALSE;
    }
    /* Out of range before the cast, which is undefined for values beyond gint64. */
    if (!(d >= min && d <= max)) {
      g_set_error (rd->error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
          "%s: %s%s%s = %g is out of range [%d, %d]", rd->what, section, *section ? "." : "", key,
          d, min, max);
      return FALSE;
    }
    x = (gint64) d;
  }
  if (x < min || x > max) {
    g_set_error (rd->error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
        "%s: %s%s%s = %" G_GINT64_FORMAT " is out of range [%d, %d]", rd->what, section,
        *section ? "." : "", key, x, min, max);
    return FALSE;
  }
  *out = (int) x;
  return TRUE;
}

static gboolean
read_double (Reader *rd, const MoshiJson *obj, const char *section, const char *key, double *out,
    double min, double max)
{
  const MoshiJson *v = moshi_json_get (obj, key);
  if (v == NULL)
    return TRUE;
  double d;
  if (!moshi_json_double (v, &d) || !(d >= min && d <= max)) {
    g_set_error (rd->error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
        "%s: %s%s%s must be a number in [%g, %g]", rd->what, section, *section ? "." : "", key,
        min, max);
    return FALSE;
  }
  *out = d;
  return TRUE;
}

static gboolean
read_bool (Reader *rd, const MoshiJson *obj, const char *section, const char *key, gboolean *out)
{
  const MoshiJson *v = moshi_json_get (obj, key);
  if (v == NULL)
    return TRUE;
  if (!moshi_json_bool (v, out)) {
    g_set_error (rd->error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
        "%s: %s.%s must be true or false", rd->what, section, key);
    return FALSE;
  }
  return TRUE;
}

/* Keys whose value must be exactly what this implementation does (the released values). */
static gboolean
expect_string (Reader *rd, const MoshiJson *obj, const char *section, const char *key,
    const char *const *accepted)
{
  const MoshiJson *v = moshi_json_get (obj, key);
  if (v == NULL || moshi_json_kind (v) == MOSHI_JSON_NULL)
    return TRUE;
  const char *s = moshi_json_string (v);
  for (int i = 0; s && accepted[i]; i++)
    if (strcmp (s, accepted[i]) == 0)
      return TRUE;
  g_set_error (rd->error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
      "%s: %s.%s = %s is not supported (supported: %s)", rd->what, section, key,
      s ? s : "(not a string)", accepted[0]);
  return FALSE;
}

static gboolean
expect_bool (Reader *rd, const MoshiJson *obj, const char *section, const char *key,
    gboolean wanted)
{
  gboolean value = wanted;
  if (!read_bool (rd, obj, section, key, &value))
    return FALSE;
  if (value != wanted) {
    g_set_error (rd->error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
        "%s: %s.%s = %s is not supported", rd->what, section, key, value ? "true" : "false");
    return FALSE;
  }
  return TRUE;
}

/* Unknown keys are errors, as in the LM config: a misspelt key would otherwise silently keep
 * the released value. */
static gboolean
check_keys (Reader *rd, const MoshiJson *obj, const char *section, const char *const *known)
{
  for (gsize i = 0; obj && i < moshi_json_length (obj); i++) {
    const char *key = moshi_json_member_name (obj, i);
    if (!g_strv_contains (known, key)) {
      g_set_error (rd->error, MOSHI_ERROR, MOSHI_ERROR_CONFIG, "%s: %s%s%s is not a known key",
          rd->what, section, *section ? "." : "", key);
      return FALSE;
    }
  }
  return TRUE;
}

static const char *const root_keys[] = {
  "sample_rate", "channels", "frame_rate", "seanet", "quantizer", "transformer", NULL
};
static const char *const seanet_keys[] = {
  "channels", "dimension", "causal", "n_filters", "n_residual_layers", "activation", "compress",
  "dilation_base", "disable_norm_outer_blocks", "kernel_size", "residual_kernel_size",
  "last_kernel_size", "norm", "pad_mode", "ratios", "true_skip", "lstm", NULL
};
static const char *const quantizer_keys[] = {
  "dimension", "n_q", "bins", "input_dimension", "output_dimension", NULL
};
static const char *const transformer_keys[] = {
  "d_model", "num_heads", "num_layers", "causal", "layer_scale", "context", "conv_layout",
  "max_period", "gating", "norm", "positional_embedding", "dim_feedforward", "input_dimension",
  "output_dimensions", NULL
};

static const MoshiJson *
section_of (Reader *rd, const MoshiJson *root, const char *name, gboolean *ok)
{
  const MoshiJson *s = moshi_json_get (root, name);
  *ok = TRUE;
  if (s != NULL && moshi_json_kind (s) != MOSHI_JSON_OBJECT) {
    g_set_error (rd->error, MOSHI_ERROR, MOSHI_ERROR_CONFIG, "%s: \"%s\" must be an object",
        rd->what, name);
    *ok = FALSE;
    return NULL;
  }
  return s;
}

gboolean
moshi_mimi_config_from_json_text (MoshiMimiConfig *cfg, const char *text, gsize len,
    const char *what, GError **error)
{
  moshi_mimi_config_init_default (cfg);
  g_autoptr (MoshiJson) root = moshi_json_parse (text, len, what, error);
  if (root == NULL)
    return FALSE;
  Reader rd = { what, error };
  if (moshi_json_kind (root) != MOSHI_JSON_OBJECT) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG, "%s: the config must be a JSON object",
        what);
    return FALSE;
  }

  gboolean ok;
  if (!check_keys (&rd, root, "", root_keys))
    return FALSE;
  if (!read_int (&rd, root, "", "sample_rate", &cfg->sample_rate, 1000, 384000)
      || !read_int (&rd, root, "", "channels", &cfg->channels, 1, 1)
      || !read_double (&rd, root, "", "frame_rate", &cfg->frame_rate, 0.1, 10000))
    return FALSE;

  const MoshiJson *seanet = section_of (&rd, root, "seanet", &ok);
  if (!ok)
    return FALSE;
  if (seanet && !check_keys (&rd, seanet, "seanet", seanet_keys))
    return FALSE;
  if (seanet) {
    static const char *const elu[] = { "ELU", NULL };
    static const char *const none[] = { "none", NULL };
    static const char *const constant[] = { "constant", NULL };
    int channels = cfg->channels;
    const MoshiJson *ratios = moshi_json_get (seanet, "ratios");
    if (ratios) {
      gsize n = moshi_json_length (ratios);
      if (moshi_json_kind (ratios) != MOSHI_JSON_ARRAY || n < 1 || n > MOSHI_MIMI_MAX_RATIOS) {
        g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
            "%s: seanet.ratios must be an array of 1 to %d integers", what, MOSHI_MIMI_MAX_RATIOS);
        return FALSE;
      }
      cfg->seanet.n_ratios = (int) n;
      for (gsize i = 0; i < n; i++) {
        gint64 r;
        if (!moshi_json_int64 (moshi_json_index (ratios, i), &r) || r < 1 || r > 64) {
          g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
              "%s: seanet.ratios[%" G_GSIZE_FORMAT "] must be an integer in [1, 64]", what, i);
          return FALSE;
        }
        cfg->seanet.ratios[i] = (int) r;
      }
    }
    if (!read_int (&rd, seanet, "seanet", "channels", &channels, 1, 1)
        || !read_int (&rd, seanet, "seanet", "dimension", &cfg->seanet.dimension, 1, 65536)
        || !read_int (&rd, seanet, "seanet", "n_filters", &cfg->seanet.n_filters, 1, 65536)
        || !read_int (&rd, seanet, "seanet", "kernel_size", &cfg->seanet.kernel_size, 1, 64)
        || !read_int (&rd, seanet, "seanet", "residual_kernel_size",
            &cfg->seanet.residual_kernel_size, 1, 64)
        || !read_int (&rd, seanet, "seanet", "last_kernel_size", &cfg->seanet.last_kernel_size, 1, 64)
        || !read_int (&rd, seanet, "seanet", "n_residual_layers", &cfg->seanet.n_residual_layers, 0, 16)
        || !read_int (&rd, seanet, "seanet", "compress", &cfg->seanet.compress, 1, 64)
        || !read_int (&rd, seanet, "seanet", "dilation_base", &cfg->seanet.dilation_base, 1, 16)
        || !read_bool (&rd, seanet, "seanet", "true_skip", &cfg->seanet.true_skip)
        || !expect_bool (&rd, seanet, "seanet", "causal", TRUE)
        || !expect_string (&rd, seanet, "seanet", "activation", elu)
        || !expect_string (&rd, seanet, "seanet", "norm", none)
        || !expect_string (&rd, seanet, "seanet", "pad_mode", constant))
      return FALSE;
    gint64 lstm = 0;
    const MoshiJson *v = moshi_json_get (seanet, "lstm");
    if (v && moshi_json_int64 (v, &lstm) && lstm != 0) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG, "%s: seanet.lstm is not supported", what);
      return FALSE;
    }
    if (!cfg->seanet.true_skip) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
          "%s: seanet.true_skip = false (convolutional shortcuts) is not supported", what);
      return FALSE;
    }
  }

  const MoshiJson *quantizer = section_of (&rd, root, "quantizer", &ok);
  if (!ok)
    return FALSE;
  /* The projections default to the SEANet dimension, as in the upstream kwargs. */
  cfg->quantizer.input_dimension = cfg->quantizer.output_dimension = cfg->seanet.dimension;
  if (quantizer && !check_keys (&rd, quantizer, "quantizer", quantizer_keys))
    return FALSE;
  if (quantizer
      && (!read_int (&rd, quantizer, "quantizer", "dimension", &cfg->quantizer.dimension, 1, 65536)
          || !read_int (&rd, quantizer, "quantizer", "n_q", &cfg->quantizer.n_q, 2, 64)
          || !read_int (&rd, quantizer, "quantizer", "bins", &cfg->quantizer.bins, 2, 1 << 20)
          || !read_int (&rd, quantizer, "quantizer", "input_dimension",
              &cfg->quantizer.input_dimension, 1, 65536)
          || !read_int (&rd, quantizer, "quantizer", "output_dimension",
              &cfg->quantizer.output_dimension, 1, 65536)))
    return FALSE;

  const MoshiJson *tr = section_of (&rd, root, "transformer", &ok);
  if (!ok)
    return FALSE;
  cfg->transformer.d_model = cfg->seanet.dimension;
  if (tr && !check_keys (&rd, tr, "transformer", transformer_keys))
    return FALSE;
  if (tr) {
    static const char *const layer_norm[] = { "layer_norm", NULL };
    static const char *const rope[] = { "rope", NULL };
    static const char *const none[] = { "none", NULL };
    int input_dimension = 0;
    if (!read_int (&rd, tr, "transformer", "d_model", &cfg->transformer.d_model, 1, 65536)
        || !read_int (&rd, tr, "transformer", "num_heads", &cfg->transformer.num_heads, 1, 1024)
        || !read_int (&rd, tr, "transformer", "num_layers", &cfg->transformer.num_layers, 0, 1024)
        || !read_int (&rd, tr, "transformer", "dim_feedforward",
            &cfg->transformer.dim_feedforward, 1, 1 << 20)
        || !read_int (&rd, tr, "transformer", "context", &cfg->transformer.context, 1, 1 << 20)
        || !read_double (&rd, tr, "transformer", "max_period", &cfg->transformer.max_period, 1, 1e12)
        || !expect_bool (&rd, tr, "transformer", "causal", TRUE)
        || !expect_bool (&rd, tr, "transformer", "conv_layout", TRUE)
        || !expect_string (&rd, tr, "transformer", "norm", layer_norm)
        || !expect_string (&rd, tr, "transformer", "positional_embedding", rope)
        || !expect_string (&rd, tr, "transformer", "gating", none)
        || !read_int (&rd, tr, "transformer", "input_dimension", &input_dimension, 0, 65536))
      return FALSE;
    if (input_dimension != 0 && input_dimension != cfg->transformer.d_model) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
          "%s: transformer.input_dimension (%d) != d_model (%d): projected transformers are not "
          "supported", what, input_dimension, cfg->transformer.d_model);
      return FALSE;
    }
    const MoshiJson *ls = moshi_json_get (tr, "layer_scale");
    if (ls != NULL)
      cfg->transformer.layer_scale = moshi_json_kind (ls) != MOSHI_JSON_NULL;
    const MoshiJson *outs = moshi_json_get (tr, "output_dimensions");
    for (gsize i = 0; outs && i < moshi_json_length (outs); i++) {
      gint64 od;
      if (!moshi_json_int64 (moshi_json_index (outs, i), &od) || od != cfg->transformer.d_model) {
        g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
            "%s: transformer.output_dimensions must all equal d_model (%d)", what,
            cfg->transformer.d_model);
        return FALSE;
      }
    }
  }
  return moshi_mimi_config_validate (cfg, what, error);
}

gboolean
moshi_mimi_config_load (MoshiMimiConfig *cfg, const char *path, GError **error)
{
  g_autofree char *text = NULL;
  gsize len = 0;
  if (!moshi_file_read_all (path, "Mimi config", MOSHI_FILE_MAX_CONFIG_BYTES, &text, &len, error))
    return FALSE;
  return moshi_mimi_config_from_json_text (cfg, text, len, path, error);
}

gboolean
moshi_mimi_config_validate (const MoshiMimiConfig *cfg, const char *what, GError **error)
{
  double frame = cfg->sample_rate / cfg->frame_rate;
  int hop = checked_hop (cfg);
  if (hop == 0) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
        "%s: the product of seanet.ratios must be at most %d", what, MIMI_MAX_HOP);
    return FALSE;
  }
  if (fabs (frame - lround (frame)) > 1e-9 || lround (frame) % hop != 0) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
        "%s: sample_rate / frame_rate = %g samples must be a whole multiple of the SEANet hop "
        "length %d", what, frame, hop);
    return FALSE;
  }
  if (cfg->transformer.d_model != cfg->seanet.dimension) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
        "%s: transformer.d_model (%d) must equal seanet.dimension (%d)", what,
        cfg->transformer.d_model, cfg->seanet.dimension);
    return FALSE;
  }
  if (cfg->transformer.d_model % cfg->transformer.num_heads != 0
      || (cfg->transformer.d_model / cfg->transformer.num_heads) % 2 != 0) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
        "%s: transformer.d_model (%d) must split into num_heads (%d) heads of even size", what,
        cfg->transformer.d_model, cfg->transformer.num_heads);
    return FALSE;
  }
  if (cfg->quantizer.input_dimension != cfg->seanet.dimension
      || cfg->quantizer.output_dimension != cfg->seanet.dimension) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
        "%s: quantizer input/output dimensions (%d/%d) must equal seanet.dimension (%d)", what,
        cfg->quantizer.input_dimension, cfg->quantizer.output_dimension, cfg->seanet.dimension);
    return FALSE;
  }
  if (cfg->seanet.n_filters << cfg->seanet.n_ratios > (1 << 24)
      || cfg->seanet.n_filters % cfg->seanet.compress != 0) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
        "%s: seanet widths are out of range (n_filters %d, %d ratios, compress %d)", what,
        cfg->seanet.n_filters, cfg->seanet.n_ratios, cfg->seanet.compress);
    return FALSE;
  }
  return TRUE;
}
