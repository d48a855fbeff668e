/* The CUDA backend's accounting (get_stats) on the emulated backend: kernel launches, cuBLAS
 * calls and weight bytes read per LM step (batch 1) and per Mimi frame, against counts derived
 * independently: from the checkpoint's tensors (which ones a step must read, how often), from
 * the config and the code structure of lm.c (per layer), and from random models whose layer
 * counts differ (the measured per-layer slope). Prints the figures, and the ones the same
 * formulas give for the released Moshi 7B (docs/cuda.md). */
#include "moshi-lm.h"
#include "moshi-mimi.h"
#include "moshi-recorder.h"
#include "moshi-safetensors.h"
#include "test-support.h"

#include <stdio.h>
#include <string.h>

static int failures;

#define EXPECT_EQ(got, want, ...) \
  G_STMT_START { \
    guint64 g_ = (got), w_ = (want); \
    if (g_ != w_) { \
      failures++; \
      printf ("FAIL: "); printf (__VA_ARGS__); \
      printf (": %" G_GUINT64_FORMAT ", expected %" G_GUINT64_FORMAT "\n", g_, w_); \
    } \
  } G_STMT_END

typedef struct {
  guint64 launches, blas, bytes;
} Count;

static int
ffn_hidden (const MoshiTransformerConfig *t)
{
  if (t->gating == MOSHI_GATING_NONE)
    return t->dim_feedforward;
  return t->dim_feedforward == 4 * t->d_model ? 21 * t->d_model / 8 : 2 * t->dim_feedforward / 3;
}

static guint64
norm_bytes (MoshiNormKind k, int d)
{
  return (k == MOSHI_NORM_RMS_NORM || k == MOSHI_NORM_RMS_NORM_F32 ? 1 : 2) * (guint64) d * 4;
}

/* One layer of transformer_forward (lm.c) at batch 1: launches, linears and bytes. m is the
 * bytes per matrix element on the device (BF16 matrices stay BF16, vectors are F32). */
static void
layer_count (const MoshiTransformerConfig *t, int capacity, int m, Count *c)
{
  gboolean rope = t->positional_embedding == MOSHI_POS_ROPE
      || t->positional_embedding == MOSHI_POS_SIN_ROPE;
  /* kernels/attention.cu: split (2 launches) from 512 slots while heads x rows < 512 */
  int att = capacity >= 512 && t->num_heads < 512 ? 2 : 1;
  /* norm, [rope x2], kv_write, attention, add, norm, activation, add */
  c->launches += 6 + (rope ? 2 : 0) + att;
  /* 4 linears: the BF16 GEMV kernel (batch <= 8 rows), or cublasSgemm for F32 weights */
  if (m == 2)
    c->launches += 4;
  else
    c->blas += 4;
  guint64 d = t->d_model, h = ffn_hidden (t);
  guint64 mats = 4 * d * d + (t->gating == MOSHI_GATING_NONE ? 2 : 3) * d * h;
  c->bytes += mats * m + 2 * norm_bytes (t->norm, t->d_model) + (t->layer_scale ? 2 * d * 4 : 0);
}

static void
linear_count (guint64 n_out, guint64 n_in, int m, Count *c)
{
  if (m == 2)
    c->launches++;
  else
    c->blas++;
  c->bytes += n_out * n_in * m;
}

/* One LM step at batch 1 from the config and lm.c's structure. */
static Count
lm_step_formula (const MoshiLmConfig *cfg, int m)
{
  Count c = { 0 };
  const MoshiTransformerConfig *t = &cfg->transformer, *dt = &cfg->depformer;
  c.launches += cfg->n_q + 1;                             /* embeddings, one row each */
  c.bytes += (guint64) (cfg->n_q + 1) * cfg->dim * m;
  if (t->positional_embedding == MOSHI_POS_SIN || t->positional_embedding == MOSHI_POS_SIN_ROPE)
    c.launches++;
  for (int l = 0; l < t->num_layers; l++)
    layer_count (t, t->context, m, &c);
  c.launches++;                                           /* out_norm */
  c.bytes += norm_bytes (t->norm, cfg->dim);
  linear_count (cfg->text_card_out, cfg->dim, m, &c);
  c.launches += 1 + cfg->dep_q;                           /* the tokens sampled on the device */
  for (int k = 0; k < cfg->dep_q; k++) {
    linear_count (cfg->depformer_dim, cfg->dim, m, &c);  /* depformer_in */
    c.launches++;                                         /* embedding row */
    int r = cfg->depformer_low_rank ? cfg->depformer_low_rank : cfg->depformer_dim;
    c.bytes += (guint64) r * m;
    if (cfg->depformer_low_rank)
      linear_count (cfg->depformer_dim, r, m, &c);
    if (dt->positional_embedding == MOSHI_POS_SIN || dt->positional_embedding == MOSHI_POS_SIN_ROPE)
      c.launches++;
    for (int l = 0; l < dt->num_layers; l++)
      layer_count (dt, cfg->dep_q, m, &c);
    if (cfg->has_depformer_norm) {
      c.launches++;
      c.bytes += norm_bytes (cfg->depformer_norm, cfg->depformer_dim);
    }
    linear_count (cfg->card, cfg->depformer_dim, m, &c);  /* linears.k */
  }
  return c;
}

/* Every weight of the model in bytes at m bytes per element (the checkpoint's size). */
static guint64
lm_total_bytes (const MoshiLmConfig *cfg, int m)
{
  guint64 d = cfg->dim, dd = cfg->depformer_dim, n = 0;
  n += (guint64) cfg->n_q * (cfg->card + 1) * d + (guint64) (cfg->text_card + 1) * d;
  const MoshiTransformerConfig *ts[] = { &cfg->transformer, &cfg->depformer };
  for (int i = 0; i < (cfg->dep_q ? 2 : 1); i++) {
    const MoshiTransformerConfig *t = ts[i];
    guint64 e = t->d_model, h = ffn_hidden (t);
    guint64 ffn_sets = t->gating == MOSHI_GATING_NONE || !t->weights_per_step ? 1 : t->n_weight_sets;
    n += (guint64) t->num_layers * (4 * e * e * t->n_weight_sets
        + ffn_sets * (t->gating == MOSHI_GATING_NONE ? 2 : 3) * e * h
        + 2 * norm_bytes (t->norm, t->d_model) / 4);
  }
  n += (guint64) cfg->text_card_out * d + norm_bytes (cfg->transformer.norm, cfg->dim) / 4;
  if (cfg->dep_q) {
    int n_in = cfg->depformer_multi_linear ? cfg->depformer.n_weight_sets : 1;
    if (cfg->depformer_multi_linear && !cfg->depformer.weights_per_step)
      n_in = cfg->dep_q;
    n += n_in * dd * d + (guint64) (cfg->text_card + 1) * dd
        + (guint64) (cfg->dep_q - 1) * (cfg->card + 1) * dd + (guint64) cfg->dep_q * cfg->card * dd;
  }
  return n * m;
}

/* Independent of the formula: the step's reads from the checkpoint's own tensor list. */
static guint64
lm_step_bytes_from_file (const char *path, const MoshiLmConfig *cfg)
{
  g_autoptr (GError) error = NULL;
  MoshiSafetensors *st = moshi_safetensors_open (path, &error);
  g_assert_no_error (error);
  guint64 sum = 0;
  for (gsize i = 0; i < moshi_safetensors_n_tensors (st); i++) {
    const MoshiTensorEntry *e = moshi_safetensors_nth (st, i);
    gsize es = e->ndim == 2 && e->dtype == MOSHI_DTYPE_BF16 ? 2 : 4;  /* device dtype */
    guint64 bytes = (guint64) moshi_shape_numel (e->shape, e->ndim) * es;
    const char *nm = e->name;
    if ((g_str_has_prefix (nm, "emb.") || g_str_has_prefix (nm, "text_emb.")
            || g_str_has_prefix (nm, "depformer_text_emb.") || g_str_has_prefix (nm, "depformer_emb."))
        && !strstr (nm, "low_rank"))
      sum += (guint64) e->shape[1] * es;                  /* one row gathered */
    else if (g_str_has_prefix (nm, "depformer.layers.") && !strstr (nm, "gating")
        && !strstr (nm, "self_attn"))
      sum += bytes * cfg->dep_q;                          /* norms shared by the dep_q steps */
    else
      sum += bytes;                                       /* everything else exactly once */
  }
  moshi_safetensors_unref (st);
  return sum;
}

static MoshiBackend *
backend (void)
{
  g_autoptr (GError) error = NULL;
  MoshiBackend *be = moshi_backend_open (MOSHI_DEVICE_CUDA, &error);
  g_assert_no_error (error);
  g_assert_nonnull (be->ops->get_stats);
  return be;
}

/* Runs LM steps 0..2 of n sessions in one batch; returns the counts of step 2 (checks that
 * the steps agree). */
static Count
measure_lm_batch (MoshiLm *lm, int n, const char *what)
{
  g_autoptr (GError) error = NULL;
  MoshiBackend *be = backend ();
  const MoshiLmConfig *cfg = moshi_lm_get_config (lm);
  MoshiLmSamplingParams params;
  moshi_lm_sampling_params_init (&params);
  MoshiLmSession *s[4];
  g_assert_true (n <= 4);
  for (int r = 0; r < n; r++) {
    s[r] = moshi_lm_session_new (lm, &params, &error);
    g_assert_no_error (error);
  }
  MoshiLmBatch *b = moshi_lm_batch_new (lm, n, 1, &error);
  g_assert_no_error (error);
  int32_t user[4 * MOSHI_LM_MAX_STREAMS] = { 0 }, text[4], audio[4 * MOSHI_LM_MAX_STREAMS];
  gboolean ret[4];
  Count c[3];
  gboolean graphs = moshi_graphs_enabled ();
  for (int step = 0; step < 3; step++) {
    /* the public counters (moshi-device.h), which moshi-tool bench lm prints */
    moshi_device_reset_stats (MOSHI_DEVICE_CUDA);
    g_assert_true (moshi_lm_batch_step (b, s, n, user, text, audio, ret, NULL, &error));
    MoshiDeviceStats st;
    g_assert_true (moshi_device_get_stats (MOSHI_DEVICE_CUDA, &st));
    c[step] = (Count) { st.kernel_launches, st.blas_calls, st.weight_bytes };
    /* the step input up, the tokens down, one wait; from the second step a recorded step
     * replayed (the first runs eagerly and sizes the scratch buffers) */
    EXPECT_EQ (st.memory_ops, 2, "%s: copies in step %d", what, step);
    EXPECT_EQ (st.syncs, 1, "%s: host waits in step %d", what, step);
    EXPECT_EQ (st.graph_launches, graphs && step > 0, "%s: recorded steps launched in step %d",
        what, step);
    if (step == 2)
      printf ("%-34s launches %5" G_GUINT64_FORMAT ", cuBLAS %4" G_GUINT64_FORMAT
          ", copies %" G_GUINT64_FORMAT ", host waits %" G_GUINT64_FORMAT ", graph launches %"
          G_GUINT64_FORMAT ", weight bytes %9" G_GUINT64_FORMAT " per step\n", what,
          st.kernel_launches, st.blas_calls, st.memory_ops, st.syncs, st.graph_launches,
          st.weight_bytes);
  }
  for (int step = 0; step < 2; step++) {
    EXPECT_EQ (c[step].launches, c[2].launches, "%s: launches of step %d vs 2", what, step);
    EXPECT_EQ (c[step].blas, c[2].blas, "%s: cuBLAS calls of step %d vs 2", what, step);
    EXPECT_EQ (c[step].bytes, c[2].bytes, "%s: weight bytes of step %d vs 2", what, step);
  }
  (void) cfg;
  moshi_lm_batch_free (b);
  for (int r = 0; r < n; r++)
    moshi_lm_session_free (s[r]);
  moshi_backend_unref (be);
  return c[2];
}

static Count
measure_lm (MoshiLm *lm, const char *what)
{
  return measure_lm_batch (lm, 1, what);
}

static void
check_formula (const char *what, Count got, Count want)
{
  EXPECT_EQ (got.launches, want.launches, "%s: launches vs the config's count", what);
  EXPECT_EQ (got.blas, want.blas, "%s: cuBLAS calls vs the config's count", what);
  EXPECT_EQ (got.bytes, want.bytes, "%s: weight bytes vs the config's count", what);
}

static void
test_lm (void)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *config = moshi_test_data_path ("lm/small7b/config.json");
  MoshiLmConfig cfg;
  g_assert_true (moshi_lm_config_load (&cfg, config, &error));
  MoshiLmLoadOptions opts = { .device = MOSHI_DEVICE_CUDA };
  const char *files[] = { "lm/small7b/model.safetensors", "lm/small7b/model_bf16.safetensors" };
  for (int i = 0; i < 2; i++) {
    g_autofree char *path = moshi_test_data_path (files[i]);
    MoshiLm *lm = moshi_lm_load (path, config, &opts, &error);
    g_assert_no_error (error);
    Count got = measure_lm (lm, files[i]);
    int m = i == 0 ? 4 : 2;
    check_formula (files[i], got, lm_step_formula (&cfg, m));
    EXPECT_EQ (got.bytes, lm_step_bytes_from_file (path, &cfg),
        "%s: weight bytes vs the checkpoint's tensors", files[i]);
    /* three sessions in one step: every op covers all rows in one launch (attention included)
     * and reads each weight once; only the embedding rows gathered grow */
    g_autofree char *what3 = g_strdup_printf ("%s, 3 sessions", files[i]);
    Count three = measure_lm_batch (lm, 3, what3);
    EXPECT_EQ (three.launches, got.launches, "%s: launches vs 1 session", what3);
    EXPECT_EQ (three.blas, got.blas, "%s: cuBLAS calls vs 1 session", what3);
    guint64 rows_bytes = (guint64) (cfg.n_q + 1) * cfg.dim * m
        + (guint64) cfg.dep_q * (cfg.depformer_low_rank ? cfg.depformer_low_rank : cfg.depformer_dim) * m;
    EXPECT_EQ (three.bytes, got.bytes + 2 * rows_bytes, "%s: weight bytes vs 1 session", what3);
    moshi_lm_unref (lm);
  }

  /* The layer counts varied (random BF16 weights): the measured per-layer slopes. */
  Count by[2][2];
  for (int tl = 1; tl <= 2; tl++)
    for (int dl = 1; dl <= 2; dl++) {
      MoshiLmConfig c2 = cfg;
      c2.transformer.num_layers = 2 * tl - 1;     /* 1 or 3 */
      c2.depformer.num_layers = 2 * dl - 1;
      MoshiLm *lm = moshi_lm_new_random (&c2, MOSHI_DTYPE_BF16, 7, MOSHI_DEVICE_CUDA, &error);
      g_assert_no_error (error);
      g_autofree char *what = g_strdup_printf ("random bf16, %d + %d x %d layers",
          c2.transformer.num_layers, c2.dep_q, c2.depformer.num_layers);
      by[tl - 1][dl - 1] = measure_lm (lm, what);
      check_formula (what, by[tl - 1][dl - 1], lm_step_formula (&c2, 2));
      moshi_lm_unref (lm);
    }
  guint64 per_temporal = (by[1][0].launches - by[0][0].launches) / 2;
  guint64 per_dep = (by[0][1].launches - by[0][0].launches) / 2 / cfg.dep_q;
  guint64 fixed = by[0][0].launches - per_temporal - per_dep * cfg.dep_q;
  EXPECT_EQ (by[1][1].launches, fixed + 3 * per_temporal + 3 * per_dep * cfg.dep_q,
      "launches additive in the layer counts");
  printf ("measured: %" G_GUINT64_FORMAT " launches per temporal layer, %" G_GUINT64_FORMAT
      " per depformer layer and step, %" G_GUINT64_FORMAT " besides (n_q %d, dep_q %d)\n",
      per_temporal, per_dep, fixed, cfg.n_q, cfg.dep_q);

  /* The released Moshi 7B (bf16), by the same formula */
  MoshiLmConfig big;
  moshi_lm_config_init_moshi_7b (&big);
  Count c7 = lm_step_formula (&big, 2);
  guint64 total = lm_total_bytes (&big, 2);
  printf ("Moshi 7B (bf16), batch 1: %" G_GUINT64_FORMAT " launches, %" G_GUINT64_FORMAT
      " cuBLAS calls, %.4f GB of weights read per step of %.4f GB in all (%.2f%%)\n",
      c7.launches, c7.blas, c7.bytes / 1e9, total / 1e9, 100.0 * c7.bytes / total);
}

#define MIMI_FRAMES 6

/* Runs MIMI_FRAMES one-frame encode + decode calls of a new session on the same input; the
 * counters of each call into e[] and d[], the codes and PCM of every frame into codes_out and
 * pcm_out. */
static void
run_mimi (MoshiMimi *mimi, MoshiBackend *be, MoshiExecStats *e, MoshiExecStats *d,
    int32_t *codes_out, float *pcm_out)
{
  g_autoptr (GError) error = NULL;
  MoshiMimiSessionOptions so = { 0 };
  so.num_codebooks = 8;
  so.max_frames_per_call = 1;
  MoshiMimiSession *s = moshi_mimi_session_new (mimi, &so, &error);
  g_assert_no_error (error);
  int fs = moshi_mimi_frame_size (mimi);
  float *pcm = g_new0 (float, fs);
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 3);
  for (int f = 0; f < MIMI_FRAMES; f++) {
    int32_t *codes = codes_out + f * 8;
    moshi_test_fill_uniform (&rng, pcm, fs, 0.3f);
    be->ops->reset_stats (be, NULL);
    g_assert_true (moshi_mimi_session_encode (s, pcm, 1, codes, &error));
    be->ops->get_stats (be, NULL, &e[f]);
    be->ops->reset_stats (be, NULL);
    g_assert_true (moshi_mimi_session_decode (s, codes, 8, 1, pcm_out + (gsize) f * fs, &error));
    be->ops->get_stats (be, NULL, &d[f]);
  }
  g_free (pcm);
  moshi_mimi_session_free (s);
}

static void
test_mimi (void)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *config = moshi_test_data_path ("mimi/small/config.json");
  g_autofree char *path = moshi_test_data_path ("mimi/small/model.safetensors");
  MoshiMimiLoadOptions opts = { MOSHI_DEVICE_CUDA };
  MoshiMimi *mimi = moshi_mimi_load (path, config, &opts, &error);
  g_assert_no_error (error);
  MoshiBackend *be = backend ();
  const MoshiMimiConfig *cfg = moshi_mimi_get_config (mimi);
  int fs = moshi_mimi_frame_size (mimi);
  gboolean graphs = moshi_graphs_enabled ();
  MoshiExecStats e[MIMI_FRAMES], d[MIMI_FRAMES];
  int32_t codes[MIMI_FRAMES * 8], codes_eager[MIMI_FRAMES * 8];
  float *pcm = g_new0 (float, (gsize) MIMI_FRAMES * fs);
  float *pcm_eager = g_new0 (float, (gsize) MIMI_FRAMES * fs);
  run_mimi (mimi, be, e, d, codes, pcm);

  /* Per call: the input up (PCM or codes, with the transformer's row table), the output down,
   * one wait. Decode's ConvTranspose1d layers (the upsample and one per SEANet stage, all with
   * kernel 2 x stride) each add their overlap's device-to-device copy. */
  int convtr = cfg->seanet.n_ratios + (moshi_mimi_config_resample_stride (cfg) > 1);
  for (int f = 0; f < MIMI_FRAMES; f++) {
    EXPECT_EQ (e[f].memory_ops, 2, "Mimi encode copies, frame %d", f);
    EXPECT_EQ (d[f].memory_ops, 2 + convtr, "Mimi decode copies, frame %d", f);
    EXPECT_EQ (e[f].syncs, 1, "Mimi encode host waits, frame %d", f);
    EXPECT_EQ (d[f].syncs, 1, "Mimi decode host waits, frame %d", f);
    /* encode: frame 0 takes the downsample's first-frame padding and frame 1 is the first
     * steady-state one, both run as they come; frame 2 is recorded and replayed, later ones
     * replayed. Decode has no first-frame branch: recorded at frame 1. */
    EXPECT_EQ (e[f].graph_launches, graphs && f >= 2, "Mimi encode recorded calls, frame %d", f);
    EXPECT_EQ (d[f].graph_launches, graphs && f >= 1, "Mimi decode recorded calls, frame %d", f);
  }
  /* the first frame also fills the initial state: steady from the second */
  for (int f = 1; f < MIMI_FRAMES - 1; f++) {
    const MoshiExecStats *el = &e[MIMI_FRAMES - 1], *dl = &d[MIMI_FRAMES - 1];
    EXPECT_EQ (e[f].kernel_launches, el->kernel_launches, "Mimi encode launches, frame %d vs last", f);
    EXPECT_EQ (d[f].kernel_launches, dl->kernel_launches, "Mimi decode launches, frame %d vs last", f);
    EXPECT_EQ (e[f].blas_calls, el->blas_calls, "Mimi encode cuBLAS calls, frame %d vs last", f);
    EXPECT_EQ (d[f].blas_calls, dl->blas_calls, "Mimi decode cuBLAS calls, frame %d vs last", f);
    EXPECT_EQ (e[f].weight_bytes, el->weight_bytes, "Mimi encode weight bytes, frame %d vs last", f);
    EXPECT_EQ (d[f].weight_bytes, dl->weight_bytes, "Mimi decode weight bytes, frame %d vs last", f);
  }
  for (int f = 0; f < MIMI_FRAMES; f++)
    printf ("mimi/small, 8 codebooks, frame %d: encode %3" G_GUINT64_FORMAT " launches + %"
        G_GUINT64_FORMAT " cuBLAS, %" G_GUINT64_FORMAT " copies, %" G_GUINT64_FORMAT
        " host waits, %" G_GUINT64_FORMAT " graph launches, %" G_GUINT64_FORMAT
        " weight bytes; decode %3" G_GUINT64_FORMAT " launches + %" G_GUINT64_FORMAT " cuBLAS, %"
        G_GUINT64_FORMAT " copies, %" G_GUINT64_FORMAT " host waits, %" G_GUINT64_FORMAT
        " graph launches, %" G_GUINT64_FORMAT " weight bytes\n", f,
        e[f].kernel_launches, e[f].blas_calls, e[f].memory_ops, e[f].syncs, e[f].graph_launches,
        e[f].weight_bytes, d[f].kernel_launches, d[f].blas_calls, d[f].memory_ops, d[f].syncs,
        d[f].graph_launches, d[f].weight_bytes);

  /* A replayed call computes what the same call run op by op does: the same session eagerly
   * (MOSHI_GRAPHS=0 is read when a session is created) gives bit-identical codes and PCM
   * on the (deterministic) emulator. */
  if (graphs) {
    g_setenv ("MOSHI_GRAPHS", "0", TRUE);
    MoshiExecStats e2[MIMI_FRAMES], d2[MIMI_FRAMES];
    run_mimi (mimi, be, e2, d2, codes_eager, pcm_eager);
    g_unsetenv ("MOSHI_GRAPHS");
    EXPECT_EQ (e2[MIMI_FRAMES - 1].graph_launches + d2[MIMI_FRAMES - 1].graph_launches, 0,
        "Mimi recorded calls with MOSHI_GRAPHS=0");
    EXPECT_EQ (memcmp (codes, codes_eager, sizeof codes) == 0, 1,
        "Mimi codes, recorded vs eager calls identical");
    EXPECT_EQ (memcmp (pcm, pcm_eager, (gsize) MIMI_FRAMES * fs * sizeof (float)) == 0, 1,
        "Mimi PCM, recorded vs eager calls identical");
  }
  g_free (pcm);
  g_free (pcm_eager);
  moshi_backend_unref (be);
  moshi_mimi_unref (mimi);
}

int
main (void)
{
  if (g_getenv ("MOSHI_CUDA_MODULE") == NULL) {
    printf ("SKIP: MOSHI_CUDA_MODULE is not set\n");
    return 77;
  }
  test_lm ();
  test_mimi ();
  printf ("%s\n", failures ? "FAILED" : "all counts as expected");
  return failures ? 1 : 0;
}
