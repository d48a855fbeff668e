/* moshi-tool bench serve: many live conversations at real-time pace through the scheduler (and,
 * for comparison, each stepping alone), with a paper estimate for data-centre GPUs. */
#include "bench-serve.h"

#include <moshi/moshi-dialog.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <moshi/moshi-error.h>
#include <moshi/moshi-scheduler.h>

/* The cards of the paper estimate: memory, memory bandwidth and dense BF16 tensor throughput
 * from the vendor's data sheets (SXM parts). */
typedef struct {
  const char *name;
  double memory_gb, bandwidth_gbs, bf16_tflops;
} Card;

static const Card cards[] = {
  { "H100", 80, 3350, 989 },
  { "H200", 141, 4800, 989 },
};

/* What a decode step reaches of those peaks, by the usual rule of thumb for memory-bound
 * kernels and skinny products (an assumption until measured: see docs/performance.md). */
#define BANDWIDTH_EFFICIENCY 0.8
#define COMPUTE_EFFICIENCY 0.5
/* memory left to the CUDA context, allocator slack and Mimi */
#define MEMORY_RESERVE_GB 4.0
#define FRAME_MS 80.0

static double
paper_tick_ms (const Card *card, const MoshiLmFootprint *fp, int n)
{
  double bytes = fp->weight_bytes_per_step + (double) n * fp->kv_bytes_per_step;
  double t_mem = bytes / (card->bandwidth_gbs * 1e9 * BANDWIDTH_EFFICIENCY);
  double t_flops = (double) n * fp->flops_per_step / (card->bf16_tflops * 1e12 * COMPUTE_EFFICIENCY);
  return 1e3 * MAX (t_mem, t_flops);
}

static int
paper_max_conversations (const Card *card, const MoshiLmFootprint *fp)
{
  double free_bytes = (card->memory_gb - MEMORY_RESERVE_GB) * 1e9 - fp->weight_bytes;
  int by_memory = free_bytes > 0 ? (int) (free_bytes / (fp->kv_bytes + fp->scratch_bytes)) : 0;
  int n = 0;
  while (n < by_memory && paper_tick_ms (card, fp, n + 1) <= FRAME_MS)
    n++;
  return n;
}

typedef struct {
  int index;
  MoshiDialog *dialog;          /* on the scheduler, or alone */
  gint64 start_us;
  int frames;
  gboolean audio;
  int n_user, frame_size, card;
  double budget_ms;             /* a result later than this after its frame's arrival is late */
  /* results */
  int misses;                   /* frames whose result came after the frame's own duration */
  double worst_ms;
  GError *error;
} Driver;

/* One conversation at real-time pace: frame k is handed over at start + k frames, as a live
 * source would, and is late when its result comes more than its budget after that: one frame
 * alone, one frame plus the batch wait on the scheduler (the latency moshidialog reports). */
static gpointer
drive (gpointer data)
{
  Driver *d = data;
  g_autofree float *pcm = g_new (float, d->frame_size);
  g_autofree float *out = d->audio ? g_new (float, d->frame_size) : NULL;
  guint32 seed = 2654435761u * (d->index + 1);
  for (int k = 0; k < d->frames && d->error == NULL; k++) {
    gint64 due = d->start_us + (gint64) (k * FRAME_MS * 1000);
    gint64 now = g_get_monotonic_time ();
    if (due > now)
      g_usleep (due - now);
    MoshiDialogFrame f;
    if (d->audio) {
      for (int i = 0; i < d->frame_size; i++) {
        seed = seed * 1664525u + 1013904223u;
        pcm[i] = 0.1f * sinf (0.03f * (i + k * d->frame_size) * (1 + d->index % 5))
            + ((seed >> 8) / 16777216.0f - 0.5f) * 0.02f;
      }
      moshi_dialog_step_pcm (d->dialog, pcm, &f, out, &d->error);
    } else {
      int32_t codes[64];
      for (int j = 0; j < d->n_user; j++) {
        seed = seed * 1664525u + 1013904223u;
        codes[j] = (int32_t) ((seed >> 8) % (guint32) d->card);
      }
      moshi_dialog_step_codes (d->dialog, codes, d->n_user, &f, NULL, &d->error);
    }
    double late_ms = (g_get_monotonic_time () - MAX (due, now)) / 1e3;
    d->worst_ms = MAX (d->worst_ms, late_ms);
    if (late_ms > d->budget_ms)
      d->misses++;
  }
  return NULL;
}

typedef struct {
  int conversations;
  gboolean scheduled;
  double tick_p50, tick_p99, tick_max, worst_ms;
  guint64 ticks, deadline_misses, late_frames;
  int frame_misses, frames;
} RunResult;

static gboolean
run_conversations (MoshiDialogModel *model, int n, gboolean scheduled, int threads, double seconds,
    gboolean audio, RunResult *res, GError **error)
{
  memset (res, 0, sizeof (*res));
  res->conversations = n;
  res->scheduled = scheduled;
  g_autoptr (MoshiScheduler) sched = NULL;
  if (scheduled) {
    MoshiSchedulerOptions so = { .max_conversations = n, .n_threads = threads };
    if ((sched = moshi_scheduler_new (model, &so, error)) == NULL)
      return FALSE;
  }
  Driver *drivers = g_new0 (Driver, n);
  GThread **th = g_new0 (GThread *, n);
  gboolean ok = TRUE;
  int frames = MAX (1, (int) (seconds * 1000 / FRAME_MS));
  for (int i = 0; i < n && ok; i++) {
    MoshiLmSamplingParams p;
    moshi_lm_sampling_params_init (&p);
    p.seed = 1 + i;
    /* on the scheduler, one Mimi thread per conversation: their frames run in parallel */
    MoshiDialogOptions o = { .n_threads = scheduled ? 1 : threads, .scheduler = sched,
      .max_wait_us = -1 };
    drivers[i] = (Driver) { .index = i, .frames = frames, .audio = audio,
      .n_user = moshi_dialog_model_user_codebooks (model),
      .card = moshi_lm_get_config (moshi_dialog_model_get_lm (model))->card,
      .frame_size = moshi_dialog_model_frame_size (model),
      .budget_ms = scheduled ? 2 * FRAME_MS : FRAME_MS };
    if ((drivers[i].dialog = moshi_dialog_new_full (model, &p, &o, error)) == NULL)
      ok = FALSE;
  }
  /* the conversations start spread over one frame, as independent callers would */
  gint64 start = g_get_monotonic_time () + 50000;
  for (int i = 0; i < n && ok; i++) {
    drivers[i].start_us = start + (gint64) (FRAME_MS * 1000 * i / n);
    th[i] = g_thread_new ("conversation", drive, &drivers[i]);
  }
  for (int i = 0; i < n; i++) {
    if (th[i])
      g_thread_join (th[i]);
    if (ok && drivers[i].error) {
      g_propagate_error (error, drivers[i].error);
      drivers[i].error = NULL;
      ok = FALSE;
    }
    g_clear_error (&drivers[i].error);
    res->frame_misses += drivers[i].misses;
    res->worst_ms = MAX (res->worst_ms, drivers[i].worst_ms);
    moshi_dialog_free (drivers[i].dialog);
  }
  res->frames = frames * n;
  if (ok && sched) {
    MoshiSchedulerStats st;
    moshi_scheduler_get_stats (sched, &st);
    res->tick_p50 = st.tick_ms_p50;
    res->tick_p99 = st.tick_ms_p99;
    res->tick_max = st.tick_ms_max;
    res->ticks = st.ticks;
    res->deadline_misses = st.deadline_misses;
    res->late_frames = st.late_frames;
  }
  g_free (drivers);
  g_free (th);
  return ok;
}

static void
print_footprint (const MoshiLmConfig *cfg, const char *what, const char *kv_name,
    const MoshiLmFootprint *fp, gboolean json)
{
  gboolean paper = fp->weight_bytes > 100000000;
  if (json) {
    g_print ("{\"model\": \"%s\", \"kv\": \"%s\", \"context\": %d, \"weight_bytes\": %" G_GUINT64_FORMAT
        ", \"weight_bytes_per_step\": %" G_GUINT64_FORMAT ", \"kv_bytes_per_conversation\": %"
        G_GUINT64_FORMAT ", \"scratch_bytes_per_conversation\": %" G_GUINT64_FORMAT
        ", \"flops_per_conversation_step\": %" G_GUINT64_FORMAT, what, kv_name,
        cfg->transformer.context, fp->weight_bytes, fp->weight_bytes_per_step, fp->kv_bytes,
        fp->scratch_bytes, fp->flops_per_step);
    for (guint c = 0; paper && c < G_N_ELEMENTS (cards); c++)
      g_print (", \"%s_max_conversations\": %d, \"%s_tick_ms_at_64\": %.2f", cards[c].name,
          paper_max_conversations (&cards[c], fp), cards[c].name,
          paper_tick_ms (&cards[c], fp, 64));
    g_print ("}\n");
    return;
  }
  g_print ("model: %s; KV caches %s at context %d\n", what, kv_name, cfg->transformer.context);
  g_print ("  weights %.3f GB resident, %.3f GB read per step; per conversation: KV %.3f GB, "
      "scratch %.2f MB, %.2f GFLOP per step\n", fp->weight_bytes / 1e9,
      fp->weight_bytes_per_step / 1e9, fp->kv_bytes / 1e9, fp->scratch_bytes / 1e6,
      fp->flops_per_step / 1e9);
  if (!paper)
    return;
  g_print ("  on paper (%.0f%% of peak bandwidth, %.0f%% of dense BF16, %.0f GB reserved, full "
      "context):\n", BANDWIDTH_EFFICIENCY * 100, COMPUTE_EFFICIENCY * 100, MEMORY_RESERVE_GB);
  for (guint c = 0; c < G_N_ELEMENTS (cards); c++)
    g_print ("    %s: %d real-time conversations; a tick of 64 takes %.1f ms, of 1 %.1f ms\n",
        cards[c].name, paper_max_conversations (&cards[c], fp), paper_tick_ms (&cards[c], fp, 64),
        paper_tick_ms (&cards[c], fp, 1));
}

static void
print_result (const RunResult *r, const MoshiLmFootprint *fp, gboolean json)
{
  if (json) {
    g_print ("{\"conversations\": %d, \"scheduler\": %s, \"frames\": %d, \"frame_misses\": %d, "
        "\"worst_frame_ms\": %.2f, \"ticks\": %" G_GUINT64_FORMAT ", \"tick_ms_p50\": %.3f, "
        "\"tick_ms_p99\": %.3f, \"tick_ms_max\": %.3f, \"deadline_misses\": %" G_GUINT64_FORMAT
        ", \"late_frames\": %" G_GUINT64_FORMAT ", \"kv_bytes_per_conversation\": %"
        G_GUINT64_FORMAT ", \"scratch_bytes_per_conversation\": %" G_GUINT64_FORMAT
        ", \"weight_bytes\": %" G_GUINT64_FORMAT "}\n", r->conversations,
        r->scheduled ? "true" : "false", r->frames, r->frame_misses, r->worst_ms, r->ticks,
        r->tick_p50, r->tick_p99, r->tick_max, r->deadline_misses, r->late_frames, fp->kv_bytes,
        fp->scratch_bytes, fp->weight_bytes);
    return;
  }
  if (r->scheduled)
    g_print ("%4d conversations, scheduler: %" G_GUINT64_FORMAT " ticks, tick p50 %.2f ms, p99 "
        "%.2f ms, max %.2f ms, %" G_GUINT64_FORMAT " deadline misses; %d of %d frames over "
        "160 ms (worst %.1f ms)%s\n", r->conversations, r->ticks, r->tick_p50, r->tick_p99, r->tick_max,
        r->deadline_misses, r->frame_misses, r->frames, r->worst_ms,
        r->frame_misses == 0 ? ": real time" : "");
  else
    g_print ("%4d conversations, each alone:  %d of %d frames over 80 ms (worst %.1f ms)%s\n",
        r->conversations, r->frame_misses, r->frames, r->worst_ms,
        r->frame_misses == 0 ? ": real time" : "");
}

int
moshi_tool_bench_serve (int argc, char **argv)
{
  g_autofree char *config = NULL, *weights = NULL, *device = NULL, *kv = NULL;
  g_autofree char *mimi_model = NULL, *mimi_config = NULL, *list = NULL;
  double seconds = 5;
  int threads = 0;
  gboolean json = FALSE, random_weights = FALSE, compare = FALSE;
  GOptionEntry entries[] = {
    { "conversations", 'n', 0, G_OPTION_ARG_STRING, &list, "Conversations, comma separated (default 1)", "LIST" },
    { "config", 'c', 0, G_OPTION_ARG_FILENAME, &config, "LM config JSON (default: the released Moshi 7B)", "C" },
    { "weights", 'w', 0, G_OPTION_ARG_FILENAME, &weights, "LM weights (a file), or their format: bf16 (as stored, the default) or int8 (quantized at load)", "W" },
    { "random-weights", 'r', 0, G_OPTION_ARG_NONE, &random_weights, "Run on random BF16 weights of the config's shapes", NULL },
    { "mimi-model", 'm', 0, G_OPTION_ARG_FILENAME, &mimi_model, "Mimi weights: conversations in audio (default: in codes, no Mimi)", "M" },
    { "mimi-config", 0, 0, G_OPTION_ARG_FILENAME, &mimi_config, "Mimi config JSON", "C" },
    { "device", 'd', 0, G_OPTION_ARG_STRING, &device, "auto, cpu or cuda (default auto)", "D" },
    { "kv", 0, 0, G_OPTION_ARG_STRING, &kv, "KV caches: bf16 (default), fp8 or f32", "F" },
    { "seconds", 's', 0, G_OPTION_ARG_DOUBLE, &seconds, "Seconds of conversation per run (default 5)", "S" },
    { "threads", 't', 0, G_OPTION_ARG_INT, &threads, "CPU threads (default: automatic)", "T" },
    { "compare-alone", 'a', 0, G_OPTION_ARG_NONE, &compare, "Also run each count without the scheduler", NULL },
    { "json", 'j', 0, G_OPTION_ARG_NONE, &json, "One JSON object per line", NULL },
    { NULL }
  };
  g_autoptr (GOptionContext) ctx = g_option_context_new ("- live conversations through the scheduler");
  g_option_context_set_summary (ctx, "Without weights (no --weights FILE, no --random-weights) it "
      "prints the footprint and the paper estimate of the config's shapes and allocates nothing.");
  g_option_context_add_main_entries (ctx, entries, NULL);
  g_autoptr (GError) error = NULL;
  if (!g_option_context_parse (ctx, &argc, &argv, &error)) {
    g_printerr ("moshi-tool bench serve: %s\n", error->message);
    return 2;
  }
  MoshiDevice dev = MOSHI_DEVICE_AUTO;
  if (device && !moshi_device_from_name (device, &dev)) {
    g_printerr ("moshi-tool bench serve: --device=%s: expected auto, cpu or cuda\n", device);
    return 2;
  }
  MoshiLmKvCache kv_cache = MOSHI_LM_KV_DEFAULT;
  if (kv && !moshi_lm_kv_cache_from_name (kv, &kv_cache)) {
    g_printerr ("moshi-tool bench serve: --kv=%s: expected bf16, fp8 or f32\n", kv);
    return 2;
  }
  MoshiDType weight_dtype = MOSHI_DTYPE_BF16;
  MoshiLmWeights weight_format = MOSHI_LM_WEIGHTS_AS_STORED;
  if (g_strcmp0 (weights, "int8") == 0) {
    weight_dtype = MOSHI_DTYPE_I8;
    weight_format = MOSHI_LM_WEIGHTS_INT8;
    g_clear_pointer (&weights, g_free);
  } else if (g_strcmp0 (weights, "bf16") == 0) {
    g_clear_pointer (&weights, g_free);
  }
  if (!(seconds > 0 && seconds <= 3600) || threads < 0 || threads > 256) {
    g_printerr ("moshi-tool bench serve: --seconds must be in (0, 3600] and --threads in [0, 256]\n");
    return 2;
  }
  g_auto (GStrv) counts = g_strsplit (list ? list : "1", ",", -1);
  for (int i = 0; counts[i]; i++) {
    char *end;
    long n = strtol (counts[i], &end, 10);
    if (*end != '\0' || n < 1 || n > MOSHI_SCHEDULER_MAX_CONVERSATIONS) {
      g_printerr ("moshi-tool bench serve: bad conversation count '%s' (1 to %d)\n", counts[i],
          MOSHI_SCHEDULER_MAX_CONVERSATIONS);
      return 2;
    }
  }

  MoshiLmConfig cfg;
  if (config) {
    if (!moshi_lm_config_load (&cfg, config, &error)) {
      g_printerr ("moshi-tool bench serve: %s\n", error->message);
      return 1;
    }
  } else {
    moshi_lm_config_init_moshi_7b (&cfg);
  }
  MoshiLmFootprint fp;
  moshi_lm_config_footprint (&cfg, weight_dtype, moshi_lm_kv_cache_dtype (kv_cache), &fp);
  print_footprint (&cfg, config ? config : "Moshi 7B (released layout)",
      moshi_lm_kv_cache_name (kv_cache), &fp, json);
  if (weights == NULL && !random_weights)
    return 0;

  MoshiLmLoadOptions lo = { .device = dev, .kv_cache = kv_cache, .weights = weight_format };
  g_autoptr (MoshiLm) lm = weights ? moshi_lm_load (weights, config, &lo, &error)
      : moshi_lm_new_random_full (&cfg, MOSHI_DTYPE_BF16, 1, &lo, &error);
  g_autoptr (MoshiMimi) mimi = NULL;
  if (lm && mimi_model) {
    MoshiMimiLoadOptions mo = { dev };
    mimi = moshi_mimi_load (mimi_model, mimi_config, &mo, &error);
  }
  g_autoptr (MoshiDialogModel) model = lm && (mimi || !mimi_model)
      ? moshi_dialog_model_new (lm, mimi, NULL, &error) : NULL;
  if (model == NULL) {
    g_printerr ("moshi-tool bench serve: %s\n", error->message);
    return 1;
  }
  if (!json)
    g_print ("running %.1f s of conversation per count, in %s, on %s\n", seconds,
        mimi ? "audio (Mimi encode + LM + Mimi decode)" : "codes (LM only)",
        moshi_device_name (dev));
  int rc = 0;
  for (int i = 0; counts[i] && rc == 0; i++) {
    int n = atoi (counts[i]);
    for (int scheduled = 1; scheduled >= (compare ? 0 : 1) && rc == 0; scheduled--) {
      RunResult r;
      if (!run_conversations (model, n, scheduled, threads, seconds, mimi != NULL, &r, &error)) {
        g_printerr ("moshi-tool bench serve: %s\n", error->message);
        rc = 1;
        break;
      }
      print_result (&r, &fp, json);
    }
  }
  return rc;
}
