#include "mimi-config.h"

#include "config-table.h"
#include "moshi-error.h"
#include "moshi-file.h"
#include "moshi-json.h"

#include <math.h>
#include <string.h>

/* ---- the keys, with their ranges and the released values as defaults ---- */

#define MIMI_OFFSET(field) G_STRUCT_OFFSET (MimiReading, field)
#define KEY_INT(k, field, lo, hi, def) { .key = k, .type = MOSHI_CONFIG_INT, \
    .offset = MIMI_OFFSET (field), .min = lo, .max = hi, .default_value = def }
#define KEY_NUMBER(k, field, lo, hi, def) { .key = k, .type = MOSHI_CONFIG_NUMBER, \
    .offset = MIMI_OFFSET (field), .min = lo, .max = hi, .default_value = def }
#define KEY_PRESENT(k, field, def) { .key = k, .type = MOSHI_CONFIG_PRESENT, \
    .offset = MIMI_OFFSET (field), .default_value = def }
#define KEY_EXPECT(k, type_, value) { .key = k, .type = MOSHI_CONFIG_EXPECT_##type_, \
    .default_value = value }
#define KEY_EXPECT_NAME(k, names) { .key = k, .type = MOSHI_CONFIG_EXPECT_NAME, .choices = names }
#define KEY(k, type_) { .key = k, .type = MOSHI_CONFIG_##type_ }

/* What the tables fill: the config, and the keys read into something else first. */
typedef struct {
  MoshiMimiConfig cfg;
  int transformer_input_dimension;      /* 0: d_model */
} MimiReading;

static const MoshiConfigChoice elu[] = { { "ELU", 0 }, { NULL, 0 } };
static const MoshiConfigChoice no_norm[] = { { "none", 0 }, { NULL, 0 } };
static const MoshiConfigChoice constant[] = { { "constant", 0 }, { NULL, 0 } };
static const MoshiConfigChoice layer_norm[] = { { "layer_norm", 0 }, { NULL, 0 } };
static const MoshiConfigChoice rope[] = { { "rope", 0 }, { NULL, 0 } };
static const MoshiConfigChoice no_gating[] = { { "none", 0 }, { NULL, 0 } };

/* Widths up to 2^16 and n_filters << 8 ratios within 2^24 keep every convolution's
 * weights and every activation row within an int; the hop is bounded separately, by
 * MIMI_MAX_HOP, since its range depends on the number of ratios. */
static const MoshiConfigKey root_keys[] = {
  KEY_INT ("sample_rate", cfg.sample_rate, 1000, 384000, 24000),
  KEY_INT ("channels", cfg.channels, 1, 1, 1),
  KEY_NUMBER ("frame_rate", cfg.frame_rate, 0.1, 10000, 12.5),
  KEY ("seanet", CUSTOM),
  KEY ("quantizer", CUSTOM),
  KEY ("transformer", CUSTOM),
};

static const MoshiConfigKey seanet_keys[] = {
  KEY_EXPECT ("channels", INT, 1),
  KEY_INT ("dimension", cfg.seanet.dimension, 1, 65536, 512),
  KEY_EXPECT ("causal", BOOL, TRUE),
  KEY_INT ("n_filters", cfg.seanet.n_filters, 1, 65536, 64),
  KEY_INT ("n_residual_layers", cfg.seanet.n_residual_layers, 0, 16, 1),
  KEY_EXPECT_NAME ("activation", elu),
  KEY_INT ("compress", cfg.seanet.compress, 1, 64, 2),
  KEY_INT ("dilation_base", cfg.seanet.dilation_base, 1, 16, 2),
  /* upstream leaves the outer blocks without norm; with norm "none" that changes nothing */
  KEY ("disable_norm_outer_blocks", IGNORED),
  KEY_INT ("kernel_size", cfg.seanet.kernel_size, 1, 64, 7),
  KEY_INT ("residual_kernel_size", cfg.seanet.residual_kernel_size, 1, 64, 3),
  KEY_INT ("last_kernel_size", cfg.seanet.last_kernel_size, 1, 64, 3),
  KEY_EXPECT_NAME ("norm", no_norm),
  KEY_EXPECT_NAME ("pad_mode", constant),
  /* 1 to MOSHI_MIMI_MAX_RATIOS integers in [1, 64], read by read_ratios */
  KEY ("ratios", CUSTOM),
  /* convolutional shortcuts are not implemented */
  KEY_EXPECT ("true_skip", BOOL, TRUE),
  KEY ("lstm", OFF),
};

/* input_dimension and output_dimension default to seanet.dimension (set before reading). */
static const MoshiConfigKey quantizer_keys[] = {
  KEY_INT ("dimension", cfg.quantizer.dimension, 1, 65536, 256),
  KEY_INT ("n_q", cfg.quantizer.n_q, 2, 64, 32),
  KEY_INT ("bins", cfg.quantizer.bins, 2, 1 << 20, 2048),
  KEY_INT ("input_dimension", cfg.quantizer.input_dimension, 1, 65536, 512),
  KEY_INT ("output_dimension", cfg.quantizer.output_dimension, 1, 65536, 512),
};

/* d_model defaults to seanet.dimension (set before reading). */
static const MoshiConfigKey transformer_keys[] = {
  KEY_INT ("d_model", cfg.transformer.d_model, 1, 65536, 512),
  KEY_INT ("num_heads", cfg.transformer.num_heads, 1, 1024, 8),
  KEY_INT ("num_layers", cfg.transformer.num_layers, 0, 1024, 8),
  KEY_EXPECT ("causal", BOOL, TRUE),
  /* the initial LayerScale value: null means no LayerScale */
  KEY_PRESENT ("layer_scale", cfg.transformer.layer_scale, TRUE),
  KEY_INT ("context", cfg.transformer.context, 1, 1 << 20, 250),
  KEY_EXPECT ("conv_layout", BOOL, TRUE),
  /* RoPE takes log (max_period) */
  KEY_NUMBER ("max_period", cfg.transformer.max_period, 1, 1e12, 10000),
  KEY_EXPECT_NAME ("gating", no_gating),
  KEY_EXPECT_NAME ("norm", layer_norm),
  KEY_EXPECT_NAME ("positional_embedding", rope),
  KEY_INT ("dim_feedforward", cfg.transformer.dim_feedforward, 1, 1 << 20, 2048),
  /* projected transformers are not implemented: 0 (absent) or d_model */
  KEY_INT ("input_dimension", transformer_input_dimension, 0, 65536, 0),
  /* every entry must equal d_model, read by check_output_dimensions */
  KEY ("output_dimensions", CUSTOM),
};

static void
reading_defaults (MimiReading *rd)
{
  static const int released_ratios[] = { 8, 6, 5, 4 };
  memset (rd, 0, sizeof (*rd));
  moshi_config_set_defaults (root_keys, G_N_ELEMENTS (root_keys), rd);
  moshi_config_set_defaults (seanet_keys, G_N_ELEMENTS (seanet_keys), rd);
  moshi_config_set_defaults (quantizer_keys, G_N_ELEMENTS (quantizer_keys), rd);
  moshi_config_set_defaults (transformer_keys, G_N_ELEMENTS (transformer_keys), rd);
  rd->cfg.seanet.n_ratios = G_N_ELEMENTS (released_ratios);
  memcpy (rd->cfg.seanet.ratios, released_ratios, sizeof (released_ratios));
  /* not configurable: the shortcut kind that "true_skip" must keep */
  rd->cfg.seanet.true_skip = TRUE;
}

void
moshi_mimi_config_init_default (MoshiMimiConfig *cfg)
{
  MimiReading rd;
  reading_defaults (&rd);
  *cfg = rd.cfg;
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

static gboolean
read_ratios (MimiReading *rd, const MoshiJson *ratios, const char *what, GError **error)
{
  gsize n = moshi_json_length (ratios);
  if (moshi_json_kind (ratios) != MOSHI_JSON_ARRAY || n < 1 || n > MOSHI_MIMI_MAX_RATIOS) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
        "%s: \"seanet.ratios\" must be an array of 1 to %d integers", what, MOSHI_MIMI_MAX_RATIOS);
    return FALSE;
  }
  static const MoshiConfigKey ratio_key = KEY_INT ("ratios", cfg.seanet.ratios, 1, 64, 1);
  rd->cfg.seanet.n_ratios = (int) n;
  for (gsize i = 0; i < n; i++)
    if (!moshi_config_read_int_element (&ratio_key, ratios, i, rd, what, "seanet.ratios", error))
      return FALSE;
  return TRUE;
}

static gboolean
check_output_dimensions (const MimiReading *rd, const MoshiJson *outs, const char *what,
    GError **error)
{
  for (gsize i = 0; outs && i < moshi_json_length (outs); i++) {
    gint64 od;
    if (!moshi_json_int64 (moshi_json_index (outs, i), &od) || od != rd->cfg.transformer.d_model) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
          "%s: \"transformer.output_dimensions\" must all equal d_model (%d)", what,
          rd->cfg.transformer.d_model);
      return FALSE;
    }
  }
  return TRUE;
}

/* The object of a section, NULL when absent; FALSE when it is not an object. */
static gboolean
section_of (const MoshiJson *root, const char *name, const MoshiJson **out, const char *what,
    GError **error)
{
  *out = moshi_json_get (root, name);
  if (*out != NULL && moshi_json_kind (*out) != MOSHI_JSON_OBJECT) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG, "%s: \"%s\" must be an object", what,
        name);
    return FALSE;
  }
  return TRUE;
}

gboolean
moshi_mimi_config_from_json_text (MoshiMimiConfig *cfg, const char *text, gsize len,
    const char *what, GError **error)
{
  moshi_mimi_config_init_default (cfg);
  g_autoptr (MoshiJson) root = moshi_json_parse (text, len, what, error);
  if (root == NULL)
    return FALSE;
  if (moshi_json_kind (root) != MOSHI_JSON_OBJECT) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG, "%s: the config must be a JSON object",
        what);
    return FALSE;
  }
  MimiReading rd;
  reading_defaults (&rd);
  const MoshiJson *seanet, *quantizer, *tr;
  if (!moshi_config_read_object (root_keys, G_N_ELEMENTS (root_keys), root, &rd, what, "", error)
      || !section_of (root, "seanet", &seanet, what, error)
      || !section_of (root, "quantizer", &quantizer, what, error)
      || !section_of (root, "transformer", &tr, what, error))
    return FALSE;

  if (seanet != NULL) {
    if (!moshi_config_read_object (seanet_keys, G_N_ELEMENTS (seanet_keys), seanet, &rd, what,
            "seanet", error))
      return FALSE;
    const MoshiJson *ratios = moshi_json_get (seanet, "ratios");
    if (ratios != NULL && !read_ratios (&rd, ratios, what, error))
      return FALSE;
  }

  /* The projections and the transformer width default to the SEANet dimension, as in the
   * upstream kwargs. */
  rd.cfg.quantizer.input_dimension = rd.cfg.quantizer.output_dimension = rd.cfg.seanet.dimension;
  rd.cfg.transformer.d_model = rd.cfg.seanet.dimension;
  if (quantizer != NULL && !moshi_config_read_object (quantizer_keys,
          G_N_ELEMENTS (quantizer_keys), quantizer, &rd, what, "quantizer", error))
    return FALSE;
  if (tr != NULL) {
    if (!moshi_config_read_object (transformer_keys, G_N_ELEMENTS (transformer_keys), tr, &rd,
            what, "transformer", error)
        || !check_output_dimensions (&rd, moshi_json_get (tr, "output_dimensions"), what, error))
      return FALSE;
    if (rd.transformer_input_dimension != 0
        && rd.transformer_input_dimension != rd.cfg.transformer.d_model) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG,
          "%s: \"transformer.input_dimension\" (%d) != d_model (%d): projected transformers "
          "are not supported", what, rd.transformer_input_dimension, rd.cfg.transformer.d_model);
      return FALSE;
    }
  }
  *cfg = rd.cfg;
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
