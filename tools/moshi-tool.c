/* moshi-tool: inspect checkpoints, encode and decode with Mimi, and benchmark. */
#include <moshi/moshi-error.h>
#include <moshi/moshi-dialog.h>
#include <moshi/moshi-dialog-load.h>
#include <moshi/moshi-hub.h>
#include <moshi/moshi-lm.h>
#include <moshi/moshi-tokenizer.h>
#include <moshi/moshi-mimi.h>
#include <moshi/moshi-safetensors.h>
#include "moshi-wav.h"
#include "moshi-codes.h"
#include "bench-serve.h"
#include "moshi-progress.h"
#include "moshi-tool-version.h"

#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int (*CommandFunc) (int argc, char **argv);

static int
fail (GError *error)
{
  g_printerr ("moshi-tool: %s\n", error->message);
  g_error_free (error);
  return 1;
}

static gboolean
parse_options (GOptionContext *ctx, int *argc, char ***argv, int n_positional)
{
  GError *error = NULL;
  if (!g_option_context_parse (ctx, argc, argv, &error)) {
    g_printerr ("moshi-tool: %s\n", error->message);
    g_error_free (error);
    return FALSE;
  }
  if (*argc != n_positional + 1) {
    g_autofree char *help = g_option_context_get_help (ctx, TRUE, NULL);
    g_printerr ("%s", help);
    return FALSE;
  }
  return TRUE;
}

/* ------------------------------------------------------------------ model downloads */

/* Enabled in main even when stderr is not a terminal: a download is rare and long, and a log
 * should show what it waited for. */
static MoshiProgress download_meter;
static const MoshiHubOptions download_options = {
  .progress = moshi_progress_download, .user_data = &download_meter,
};

/* A model named as the elements name it: a file, a folder holding default_filename, or a
 * Hugging Face repo id (owner/name[@revision][:file]), downloaded into the hub cache when it
 * is not there. Paths that exist but are not folders come back as they are, for the loaders
 * to judge, so that their errors (a FIFO, a device) stay. */
static char *
resolve_model (const char *spec, const char *default_filename, GError **error)
{
  return moshi_hub_resolve_full (spec, default_filename, &download_options, error);
}

static MoshiLm *
load_lm (const char *spec, const char *config, const MoshiLmLoadOptions *opts, GError **error)
{
  g_autofree char *path = resolve_model (spec, MOSHI_HUB_LM_FILENAME, error);
  return path ? moshi_lm_load (path, config, opts, error) : NULL;
}

/* --device: FALSE (after saying why) when the name is not a device. */
static gboolean
parse_device (const char *name, MoshiDevice *out)
{
  *out = MOSHI_DEVICE_AUTO;
  if (name == NULL || moshi_device_from_name (name, out))
    return TRUE;
  g_printerr ("moshi-tool: --device=%s: expected auto, cpu or cuda\n", name);
  return FALSE;
}

/* Option values outside their range are usage errors (exit 2), reported before any work: a
 * zero codebook or frame count used to crash or write an empty file. */
#define MAX_THREADS 1024

static gboolean
check_int_option (const char *cmd, const char *option, int value, int min, int max)
{
  if (value >= min && value <= max)
    return TRUE;
  g_printerr ("moshi-tool %s: --%s=%d is out of range: give an integer in [%d, %d]\n", cmd, option,
      value, min, max);
  return FALSE;
}

static gboolean
check_double_option (const char *cmd, const char *option, double value, double min, double max)
{
  if (value >= min && value <= max)
    return TRUE;
  g_printerr ("moshi-tool %s: --%s=%g is out of range: give a number in [%g, %g]\n", cmd, option,
      value, min, max);
  return FALSE;
}

/* One entry of a comma-separated list of integers, parsed whole (atoi took "2x" as 2 and "x"
 * as 0). */
static gboolean
parse_list_int (const char *cmd, const char *option, const char *text, int min, int max, int *out)
{
  gint64 v;
  if (!g_ascii_string_to_signed (g_strstrip ((char *) text), 10, min, max, &v, NULL)) {
    g_printerr ("moshi-tool %s: --%s: '%s' is not an integer in [%d, %d]\n", cmd, option, text,
        min, max);
    return FALSE;
  }
  *out = (int) v;
  return TRUE;
}

/* The sampling options shared by the commands that generate. */
typedef struct {
  MoshiLmSamplingParams params;
  double text_temperature, audio_temperature;
  gint64 seed;
  gboolean greedy;
} SamplingOptions;

/* Adds the sampling options to the command's own (GLib copies the entries). */
static void
add_sampling_options (GOptionContext *ctx, SamplingOptions *o)
{
  moshi_lm_sampling_params_init (&o->params);
  o->text_temperature = o->params.text_temperature;
  o->audio_temperature = o->params.audio_temperature;
  o->seed = (gint64) o->params.seed;
  o->greedy = FALSE;
  GOptionEntry entries[] = {
    { "text-temperature", 0, 0, G_OPTION_ARG_DOUBLE, &o->text_temperature, "Text temperature (0 = greedy; default 0.7)", "T" },
    { "text-topk", 0, 0, G_OPTION_ARG_INT, &o->params.text_topk, "Text top-k (default 25)", "K" },
    { "audio-temperature", 0, 0, G_OPTION_ARG_DOUBLE, &o->audio_temperature, "Audio temperature (0 = greedy; default 0.8)", "T" },
    { "audio-topk", 0, 0, G_OPTION_ARG_INT, &o->params.audio_topk, "Audio top-k (default 250)", "K" },
    { "greedy", 'g', 0, G_OPTION_ARG_NONE, &o->greedy, "Greedy decoding (both temperatures 0)", NULL },
    { "seed", 's', 0, G_OPTION_ARG_INT64, &o->seed, "Random seed (default 4242)", "S" },
    { NULL }
  };
  g_option_context_add_main_entries (ctx, entries, NULL);
}

/* FALSE (after saying why) when a sampling option is out of range. */
static gboolean
check_sampling_options (const char *cmd, const SamplingOptions *o)
{
  return check_double_option (cmd, "text-temperature", o->text_temperature, 0, 1e6)
      && check_double_option (cmd, "audio-temperature", o->audio_temperature, 0, 1e6)
      && check_int_option (cmd, "text-topk", o->params.text_topk, 0, 1 << 24)
      && check_int_option (cmd, "audio-topk", o->params.audio_topk, 0, 1 << 24);
}

/* The parsed values as sampling parameters. */
static const MoshiLmSamplingParams *
sampling_options_params (SamplingOptions *o)
{
  o->params.text_temperature = o->greedy ? 0.0f : (float) o->text_temperature;
  o->params.audio_temperature = o->greedy ? 0.0f : (float) o->audio_temperature;
  o->params.seed = (guint64) o->seed;
  return &o->params;
}

/* ------------------------------------------------------------------ info */

static const char *
detect_model_kind (MoshiSafetensors *st)
{
  if (moshi_safetensors_lookup (st, "encoder.model.0.conv.conv.weight")
      && moshi_safetensors_lookup (st, "quantizer.rvq_first.input_proj.weight"))
    return "mimi (neural audio codec)";
  if (moshi_safetensors_lookup (st, "text_emb.weight") && moshi_safetensors_lookup (st, "emb.0.weight"))
    return "moshi lm (RQ-Transformer)";
  return "unknown";
}

static int
cmd_info (int argc, char **argv)
{
  gboolean quiet = FALSE;
  GOptionEntry entries[] = {
    { "summary", 's', 0, G_OPTION_ARG_NONE, &quiet, "Print only the summary", NULL },
    { NULL }
  };
  g_autoptr (GOptionContext) ctx = g_option_context_new ("MODEL.safetensors - list tensors and detect the model");
  g_option_context_add_main_entries (ctx, entries, NULL);
  if (!parse_options (ctx, &argc, &argv, 1))
    return 2;
  GError *error = NULL;
  g_autoptr (MoshiSafetensors) st = moshi_safetensors_open (argv[1], &error);
  if (st == NULL)
    return fail (error);
  gsize n = moshi_safetensors_n_tensors (st);
  int64_t params = 0;
  gsize bytes = 0;
  int64_t per_dtype[MOSHI_DTYPE_COUNT] = { 0 };
  for (gsize i = 0; i < n; i++) {
    const MoshiTensorEntry *e = moshi_safetensors_nth (st, i);
    int64_t numel = moshi_shape_numel (e->shape, e->ndim);
    params += numel;
    bytes += e->nbytes;
    per_dtype[e->dtype] += numel;
    if (!quiet) {
      char shape[MOSHI_SHAPE_STRING_LEN];
      g_print ("%-70s %-5s %s\n", e->name, moshi_dtype_name (e->dtype),
          moshi_shape_to_string (e->shape, e->ndim, shape, sizeof (shape)));
    }
  }
  g_print ("file: %s\n", argv[1]);
  g_print ("model: %s\n", detect_model_kind (st));
  g_print ("tensors: %" G_GSIZE_FORMAT "\n", n);
  g_print ("elements: %" G_GINT64_FORMAT " (%.1f M)\n", params, params / 1e6);
  g_print ("data bytes: %" G_GSIZE_FORMAT " (%.1f MB)\n", bytes, bytes / 1e6);
  for (int d = 0; d < MOSHI_DTYPE_COUNT; d++)
    if (per_dtype[d])
      g_print ("  %s: %" G_GINT64_FORMAT " elements\n", moshi_dtype_name (d), per_dtype[d]);
  return 0;
}


/* ------------------------------------------------------------------ encode / decode */

/* model: a file, a folder holding Mimi, or a Hugging Face repo id (downloaded if needed). */
static MoshiMimi *
load_mimi (const char *model, const char *config, const char *device, GError **error)
{
  MoshiMimiLoadOptions opts = { MOSHI_DEVICE_AUTO };
  if (device && !moshi_device_from_name (device, &opts.device)) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
        "--device=%s: expected auto, cpu or cuda", device);
    return NULL;
  }
  g_autofree char *path = resolve_model (model, MOSHI_HUB_MIMI_FILENAME, error);
  return path ? moshi_mimi_load (path, config, &opts, error) : NULL;
}

static int
cmd_encode (int argc, char **argv)
{
  g_autofree char *model = NULL, *config = NULL, *device = NULL;
  int codebooks = 8, threads = 0;
  gboolean streaming = FALSE;
  GOptionEntry entries[] = {
    { "model", 'm', 0, G_OPTION_ARG_FILENAME, &model, "Mimi weights: a safetensors file or a repo id (kyutai/moshiko-pytorch-bf16)", "W" },
    { "config", 'c', 0, G_OPTION_ARG_FILENAME, &config, "Mimi config JSON (default: released model)", "C" },
    { "codebooks", 'k', 0, G_OPTION_ARG_INT, &codebooks, "Codebooks to produce (default 8)", "N" },
    { "threads", 't', 0, G_OPTION_ARG_INT, &threads, "CPU threads (0 = automatic)", "T" },
    { "device", 'd', 0, G_OPTION_ARG_STRING, &device, "auto, cpu or cuda", "D" },
    { "streaming", 's', 0, G_OPTION_ARG_NONE, &streaming,
      "Encode frame by frame as a live stream (default: one-shot, as upstream encode())", NULL },
    { NULL }
  };
  g_autoptr (GOptionContext) ctx = g_option_context_new ("IN.wav OUT.safetensors - encode audio to Mimi codes");
  g_option_context_add_main_entries (ctx, entries, NULL);
  if (!parse_options (ctx, &argc, &argv, 2))
    return 2;
  if (model == NULL) {
    g_printerr ("moshi-tool encode: --model is required\n");
    return 2;
  }
  if (!check_int_option ("encode", "codebooks", codebooks, 1, 64)
      || !check_int_option ("encode", "threads", threads, 0, MAX_THREADS))
    return 2;
  GError *error = NULL;
  g_autoptr (MoshiMimi) mimi = load_mimi (model, config, device, &error);
  if (mimi == NULL)
    return fail (error);
  MoshiWav wav;
  if (!moshi_wav_read (argv[1], &wav, &error))
    return fail (error);
  int rate = moshi_mimi_sample_rate (mimi);
  if (wav.sample_rate != rate || wav.channels != 1) {
    g_printerr ("moshi-tool: %s is %d Hz with %d channel(s); expected %d Hz mono "
        "(convert it first, e.g. sox %s -r %d -c 1 out.wav)\n", argv[1], wav.sample_rate,
        wav.channels, rate, argv[1], rate);
    moshi_wav_clear (&wav);
    return 1;
  }
  int32_t *codes = NULL;
  int n_frames = 0;
  gboolean ok;
  if (streaming) {
    MoshiMimiSessionOptions opts = { .n_threads = threads, .num_codebooks = codebooks,
      .max_frames_per_call = 1 };
    g_autoptr (MoshiMimiSession) s = moshi_mimi_session_new (mimi, &opts, &error);
    ok = s != NULL;
    if (ok) {
      int frame = moshi_mimi_frame_size (mimi);
      n_frames = (int) ((wav.n_frames + frame - 1) / frame);
      float *padded = g_new0 (float, (gsize) MAX (n_frames, 1) * frame);
      memcpy (padded, wav.samples, wav.n_frames * sizeof (float));
      codes = g_new (int32_t, (gsize) MAX (n_frames, 1) * codebooks);
      ok = moshi_mimi_session_encode (s, padded, n_frames, codes, &error);
      g_free (padded);
    }
  } else {
    ok = moshi_mimi_encode (mimi, wav.samples, wav.n_frames, codebooks, threads, &codes,
        &n_frames, &error);
  }
  moshi_wav_clear (&wav);
  if (!ok) {
    g_free (codes);
    g_prefix_error (&error, "%s: ", argv[1]);
    return fail (error);
  }

  gsize n = (gsize) codebooks * n_frames;
  g_autofree int64_t *codes64 = g_new (int64_t, MAX (n, 1));
  for (gsize i = 0; i < n; i++)
    codes64[i] = codes[i];
  g_free (codes);
  MoshiTensorEntry entry = { .name = "codes", .dtype = MOSHI_DTYPE_I64, .ndim = 3,
    .shape = { 1, codebooks, n_frames }, .data = codes64, .nbytes = n * sizeof (int64_t) };
  if (!moshi_safetensors_write (argv[2], &entry, 1, NULL, &error))
    return fail (error);
  g_print ("%s: %d frames x %d codebooks\n", argv[2], n_frames, codebooks);
  return 0;
}

static int
cmd_decode (int argc, char **argv)
{
  g_autofree char *model = NULL, *config = NULL, *device = NULL;
  int threads = 0;
  gboolean streaming = FALSE;
  GOptionEntry entries[] = {
    { "model", 'm', 0, G_OPTION_ARG_FILENAME, &model, "Mimi weights: a safetensors file or a repo id (kyutai/moshiko-pytorch-bf16)", "W" },
    { "config", 'c', 0, G_OPTION_ARG_FILENAME, &config, "Mimi config JSON (default: released model)", "C" },
    { "threads", 't', 0, G_OPTION_ARG_INT, &threads, "CPU threads (0 = automatic)", "T" },
    { "device", 'd', 0, G_OPTION_ARG_STRING, &device, "auto, cpu or cuda", "D" },
    { "streaming", 's', 0, G_OPTION_ARG_NONE, &streaming, "Decode frame by frame as a live stream", NULL },
    { NULL }
  };
  g_autoptr (GOptionContext) ctx = g_option_context_new ("CODES.safetensors OUT.wav - decode Mimi codes to audio");
  g_option_context_add_main_entries (ctx, entries, NULL);
  if (!parse_options (ctx, &argc, &argv, 2))
    return 2;
  if (model == NULL) {
    g_printerr ("moshi-tool decode: --model is required\n");
    return 2;
  }
  if (!check_int_option ("decode", "threads", threads, 0, MAX_THREADS))
    return 2;
  GError *error = NULL;
  g_autoptr (MoshiMimi) mimi = load_mimi (model, config, device, &error);
  if (mimi == NULL)
    return fail (error);
  g_autofree int32_t *codes = NULL;
  int k, t;
  if (!moshi_codes_read (argv[1], &codes, &k, &t, &error))
    return fail (error);
  g_autofree float *pcm = NULL;
  if (streaming) {
    MoshiMimiSessionOptions opts = { .n_threads = threads, .max_frames_per_call = 1 };
    g_autoptr (MoshiMimiSession) s = moshi_mimi_session_new (mimi, &opts, &error);
    if (s == NULL)
      return fail (error);
    pcm = g_new (float, MAX ((gsize) t * moshi_mimi_frame_size (mimi), 1));
    if (!moshi_mimi_session_decode (s, codes, k, t, pcm, &error)) {
      g_prefix_error (&error, "%s: ", argv[1]);
      return fail (error);
    }
  } else if (!moshi_mimi_decode (mimi, codes, k, t, threads, &pcm, &error)) {
    g_prefix_error (&error, "%s: ", argv[1]);
    return fail (error);
  }
  gsize n = (gsize) t * moshi_mimi_frame_size (mimi);
  if (!moshi_wav_write_f32 (argv[2], pcm, n, 1, moshi_mimi_sample_rate (mimi), &error))
    return fail (error);
  g_print ("%s: %" G_GSIZE_FORMAT " samples at %d Hz\n", argv[2], n, moshi_mimi_sample_rate (mimi));
  return 0;
}

/* ------------------------------------------------------------------ bench */

/* A deterministic speech-like test signal: a voiced source with a moving pitch, shaped by
 * syllable-rate envelopes, plus a little noise. */
static void
synth_speech (float *x, gsize n, int rate)
{
  guint32 seed = 12345;
  double phase = 0;
  for (gsize i = 0; i < n; i++) {
    double t = (double) i / rate;
    double f0 = 120 + 30 * sin (2 * G_PI * 0.7 * t);
    phase += 2 * G_PI * f0 / rate;
    double v = 0;
    for (int h = 1; h <= 12; h++)
      v += sin (h * phase) / h * (1.0 + 0.5 * sin (2 * G_PI * (0.3 * h + 1.1) * t));
    double env = 0.5 + 0.5 * sin (2 * G_PI * 4.0 * t);
    seed = seed * 1664525u + 1013904223u;
    double noise = ((seed >> 8) / 16777216.0 - 0.5) * 0.05;
    x[i] = (float) (0.15 * env * v + noise);
  }
}

/* bench mimi --batch: n streams, each encoding and decoding every frame, stepped one after the
 * other (each session alone, on `threads` threads) and as one MoshiMimiBatch per direction
 * (single-threaded sessions, the batch on `threads` threads). The two take turns frame by
 * frame, so that other load on the machine weighs on both alike. Stream i starts i frames
 * into the audio. Prints frames per second over all streams and ms per stream frame. */
static gboolean
bench_mimi_batch (MoshiMimi *mimi, const float *audio, int n_frames, int codebooks, int threads,
    int n, gboolean json, GError **error)
{
  int frame = moshi_mimi_frame_size (mimi);
  g_autoptr (MoshiMimiBatch) batch = moshi_mimi_batch_new (mimi, n, threads, error);
  if (batch == NULL)
    return FALSE;
  /* [0, n): stepped alone, [n, 2n): batched */
  g_autofree MoshiMimiSession **sessions = g_new0 (MoshiMimiSession *, 2 * n);
  g_autofree const float **in = g_new0 (const float *, n);
  g_autofree int32_t **codes = g_new0 (int32_t *, n);
  g_autofree float **out = g_new0 (float *, n);
  g_autofree int32_t *codes_buf = g_new0 (int32_t, (gsize) n * codebooks);
  g_autofree float *out_buf = g_new0 (float, (gsize) n * frame);
  gboolean ok = TRUE;
  for (int i = 0; i < 2 * n && ok; i++) {
    MoshiMimiSessionOptions opts = { .n_threads = i < n ? threads : 1,
      .num_codebooks = codebooks, .max_frames_per_call = 1 };
    ok = (sessions[i] = moshi_mimi_session_new (mimi, &opts, error)) != NULL;
  }
  for (int i = 0; i < n; i++) {
    codes[i] = codes_buf + (gsize) i * codebooks;
    out[i] = out_buf + (gsize) i * frame;
  }
  double seconds[2] = { 0, 0 };
  int timed = 0;
  for (int f = 0; f < n_frames && ok; f++) {
    for (int i = 0; i < n; i++)
      in[i] = audio + (gsize) ((f + i) % n_frames) * frame;
    for (int batched = 0; batched < 2 && ok; batched++) {
      gint64 t0 = g_get_monotonic_time ();
      MoshiMimiSession **s = sessions + batched * n;
      if (batched) {
        ok = moshi_mimi_batch_encode (batch, s, n, in, codes, error)
            && moshi_mimi_batch_decode (batch, s, n, (const int32_t *const *) codes, codebooks,
                out, error);
      } else {
        for (int i = 0; i < n && ok; i++)
          ok = moshi_mimi_session_encode (s[i], in[i], 1, codes[i], error)
              && moshi_mimi_session_decode (s[i], codes[i], codebooks, 1, out[i], error);
      }
      if (f > 0)                /* the first frame: page faults, cold caches */
        seconds[batched] += (g_get_monotonic_time () - t0) / 1e6;
    }
    timed += f > 0;
  }
  for (int i = 0; i < 2 * n; i++)
    moshi_mimi_session_free (sessions[i]);
  if (!ok)
    return FALSE;
  double frames = (double) timed * n;
  double alone_fps = frames / seconds[0], batched_fps = frames / seconds[1];
  if (json)
    g_print ("{\"impl\":\"gst-moshi\",\"threads\":%d,\"streams\":%d,\"frames\":%d,"
        "\"alone_frames_per_s\":%.2f,\"batched_frames_per_s\":%.2f,\"speedup\":%.3f}\n",
        threads, n, timed, alone_fps, batched_fps, batched_fps / alone_fps);
  else
    g_print ("threads %d, %d streams (encode + decode): alone %.1f frames/s (%.2f ms a stream "
        "frame), batched %.1f frames/s (%.2f ms a stream frame): x%.2f\n", threads, n, alone_fps,
        1000.0 / alone_fps, batched_fps, 1000.0 / batched_fps, batched_fps / alone_fps);
  return TRUE;
}

/* bench lm: ms per LM step (temporal + depformer + sampling) at several batch sizes, on a
 * checkpoint or on random BF16 weights of the config's shapes (the released 7B by default). */
static int
cmd_bench_lm (int argc, char **argv)
{
  g_autofree char *weights = NULL, *config = NULL, *batch_list = NULL, *device = NULL;
  int steps = 10, threads = 0;
  GOptionEntry entries[] = {
    { "config", 'c', 0, G_OPTION_ARG_FILENAME, &config, "LM config JSON (default: the released Moshi 7B)", "C" },
    { "weights", 'w', 0, G_OPTION_ARG_FILENAME, &weights, "LM weights, a file or a repo id (default: random BF16 of the config's shapes)", "W" },
    { "device", 'd', 0, G_OPTION_ARG_STRING, &device, "auto, cpu or cuda (default auto)", "D" },
    { "batch", 'b', 0, G_OPTION_ARG_STRING, &batch_list, "Batch sizes, comma separated (default 1)", "LIST" },
    { "steps", 'n', 0, G_OPTION_ARG_INT, &steps, "Timed steps per batch size (default 10, after 2 warm-up steps)", "N" },
    { "threads", 't', 0, G_OPTION_ARG_INT, &threads, "CPU threads (default: automatic)", "T" },
    { NULL }
  };
  g_autoptr (GOptionContext) ctx = g_option_context_new ("- time LM steps");
  g_option_context_add_main_entries (ctx, entries, NULL);
  g_autoptr (GError) error = NULL;
  if (!g_option_context_parse (ctx, &argc, &argv, &error)) {
    g_printerr ("moshi-tool bench lm: %s\n", error->message);
    return 2;
  }
  MoshiDevice dev;
  if (!parse_device (device, &dev))
    return 2;
  if (!check_int_option ("bench lm", "steps", steps, 1, 1000000)
      || !check_int_option ("bench lm", "threads", threads, 0, MAX_THREADS))
    return 2;
  g_auto (GStrv) batches = g_strsplit (batch_list ? batch_list : "1", ",", -1);
  int max_batch = 0;
  for (int i = 0; batches[i]; i++) {
    int n;
    if (!parse_list_int ("bench lm", "batch", batches[i], 1, 4096, &n))
      return 2;
    max_batch = MAX (max_batch, n);
  }
  if (max_batch == 0) {
    g_printerr ("moshi-tool bench lm: --batch lists no batch size\n");
    return 2;
  }
  if (dev == MOSHI_DEVICE_CUDA) {
    g_autofree char *cuda = moshi_device_describe (MOSHI_DEVICE_CUDA, NULL, &error);
    if (cuda == NULL) {
      g_print ("SKIP: moshi-tool bench lm --device cuda: %s\n", error->message);
      return 77;
    }
  }
  MoshiLmConfig cfg;
  if (config) {
    if (!moshi_lm_config_load (&cfg, config, &error))
      return fail (g_steal_pointer (&error));
  } else {
    moshi_lm_config_init_moshi_7b (&cfg);
  }
  gint64 t0 = g_get_monotonic_time ();
  MoshiLmLoadOptions opts = { .device = dev };
  g_autoptr (MoshiLm) lm = weights ? load_lm (weights, config, &opts, &error)
      : moshi_lm_new_random (&cfg, MOSHI_DTYPE_BF16, 1, dev, &error);
  if (lm == NULL)
    return fail (g_steal_pointer (&error));
  MoshiDevice used = moshi_lm_get_device (lm);
  g_autofree char *description = moshi_lm_describe_device (lm);
  g_print ("model: %s, %d + %d x %d layers, dim %d; device %s; loaded in %.1f s\n",
      weights ? weights : "random BF16 weights", cfg.transformer.num_layers, cfg.dep_q,
      cfg.depformer.num_layers, cfg.dim, description, (g_get_monotonic_time () - t0) / 1e6);
  int n_user = moshi_lm_user_codebooks (lm), dep_q = moshi_lm_generated_codebooks (lm);
  MoshiLmSession **sessions = g_new0 (MoshiLmSession *, max_batch);
  int32_t *user = g_new0 (int32_t, (gsize) max_batch * MAX (n_user, 1));
  int32_t *text = g_new0 (int32_t, max_batch);
  int32_t *audio = g_new0 (int32_t, (gsize) max_batch * MAX (dep_q, 1));
  gboolean *ret = g_new0 (gboolean, max_batch);
  int rc = 0;
  for (int i = 0; batches[i] && rc == 0; i++) {
    int n = (int) g_ascii_strtoll (batches[i], NULL, 10);   /* checked above */
    MoshiLmBatch *b = moshi_lm_batch_new (lm, n, threads, &error);
    for (int r = 0; b && r < n; r++)
      if ((sessions[r] = moshi_lm_session_new (lm, NULL, &error)) == NULL)
        break;
    gboolean ok = b != NULL && error == NULL;
    if (ok)
      moshi_device_reset_stats (used);
    double ms = 0;
    for (int s = 0; ok && s < steps + 2; s++) {
      gint64 t = g_get_monotonic_time ();
      ok = moshi_lm_batch_step (b, sessions, n, user, text, audio, ret, NULL, &error);
      if (s == 1)
        moshi_device_reset_stats (used);
      if (s >= 2)
        ms += (g_get_monotonic_time () - t) / 1e3;
    }
    if (ok) {
      ms /= steps;
      g_print ("batch %3d: %8.2f ms per step, %7.1f steps/s, %8.1f session-steps/s", n, ms,
          1e3 / ms, n * 1e3 / ms);
      MoshiDeviceStats st;
      if (moshi_device_get_stats (used, &st)) {
        /* effective weight bandwidth: against the GPU's memory bandwidth, how close the
         * step is to its floor */
        g_print (" (%" G_GUINT64_FORMAT " kernels in %" G_GUINT64_FORMAT " graph launches, %"
            G_GUINT64_FORMAT " cuBLAS, %" G_GUINT64_FORMAT " host waits, %.3f GB of weights "
            "per step: %.0f GB/s)", st.kernel_launches / steps, st.graph_launches / steps,
            st.blas_calls / steps, st.syncs / steps, st.weight_bytes / 1e9 / steps,
            st.weight_bytes / 1e9 / steps / (ms / 1e3));
      }
      g_print ("\n");
    } else {
      rc = fail (g_steal_pointer (&error));
    }
    for (int r = 0; r < n; r++)
      g_clear_pointer (&sessions[r], moshi_lm_session_free);
    g_clear_pointer (&b, moshi_lm_batch_free);
  }
  g_free (sessions);
  g_free (user);
  g_free (text);
  g_free (audio);
  g_free (ret);
  return rc;
}

static int
cmd_bench (int argc, char **argv)
{
  if (argc > 1 && g_strcmp0 (argv[1], "lm") == 0)
    return cmd_bench_lm (argc - 1, argv + 1);
  if (argc > 1 && g_strcmp0 (argv[1], "serve") == 0)
    return moshi_tool_bench_serve (argc - 1, argv + 1);
  g_autofree char *model = NULL, *config = NULL, *threads_list = NULL, *device = NULL;
  g_autofree char *batch_list = NULL;
  double seconds = 10;
  int codebooks = 8, frames_per_call = 1;
  gboolean json = FALSE;
  GOptionEntry entries[] = {
    { "model", 'm', 0, G_OPTION_ARG_FILENAME, &model, "Mimi weights: a safetensors file or a repo id (kyutai/moshiko-pytorch-bf16)", "W" },
    { "config", 'c', 0, G_OPTION_ARG_FILENAME, &config, "Mimi config JSON (default: released model)", "C" },
    { "seconds", 's', 0, G_OPTION_ARG_DOUBLE, &seconds, "Audio length to stream (default 10)", "S" },
    { "threads", 't', 0, G_OPTION_ARG_STRING, &threads_list, "Thread counts, comma separated (default 1,2)", "LIST" },
    { "codebooks", 'k', 0, G_OPTION_ARG_INT, &codebooks, "Codebooks (default 8)", "N" },
    { "frames-per-call", 'f', 0, G_OPTION_ARG_INT, &frames_per_call, "Frames per call (default 1: live streaming)", "F" },
    { "device", 'd', 0, G_OPTION_ARG_STRING, &device, "auto, cpu or cuda", "D" },
    { "batch", 'b', 0, G_OPTION_ARG_STRING, &batch_list, "Also N streams alone vs batched, for each N of a comma-separated list", "LIST" },
    { "json", 'j', 0, G_OPTION_ARG_NONE, &json, "One JSON object per line", NULL },
    { NULL }
  };
  g_autoptr (GOptionContext) ctx = g_option_context_new ("mimi|lm|serve - benchmarks");
  g_option_context_set_summary (ctx, "Benchmarks (moshi-tool bench NAME --help for the options of lm and serve):\n"
      "  mimi    stream audio through Mimi and time it (the options below)\n"
      "  lm      time LM steps at several batch sizes\n"
      "  serve   run live conversations through the scheduler");
  g_option_context_add_main_entries (ctx, entries, NULL);
  if (!parse_options (ctx, &argc, &argv, 1))
    return 2;
  if (g_strcmp0 (argv[1], "mimi") != 0) {
    g_printerr ("moshi-tool bench: unknown benchmark '%s' (available: mimi, lm, serve)\n", argv[1]);
    return 2;
  }
  if (model == NULL) {
    g_printerr ("moshi-tool bench mimi: --model is required (tests/reference/gen_mimi.py --case full makes one)\n");
    return 2;
  }
  if (!check_int_option ("bench mimi", "codebooks", codebooks, 1, 64)
      || !check_int_option ("bench mimi", "frames-per-call", frames_per_call, 1, 4096)
      || !check_double_option ("bench mimi", "seconds", seconds, 0, 86400))
    return 2;
  g_auto (GStrv) counts = g_strsplit (threads_list ? threads_list : "1,2", ",", -1);
  g_autofree int *thread_counts = g_new0 (int, g_strv_length (counts) + 1);
  for (int c = 0; counts[c]; c++)
    if (!parse_list_int ("bench mimi", "threads", counts[c], 0, MAX_THREADS, &thread_counts[c]))
      return 2;
  g_auto (GStrv) batch_sizes = g_strsplit (batch_list ? batch_list : "", ",", -1);
  g_autofree int *streams = g_new0 (int, g_strv_length (batch_sizes) + 1);
  for (int b = 0; batch_list && batch_sizes[b]; b++)
    if (!parse_list_int ("bench mimi", "batch", batch_sizes[b], 1, 4096, &streams[b]))
      return 2;
  GError *error = NULL;
  /* as bench lm: no usable GPU is a skip (exit 77), not an error */
  if (g_strcmp0 (device, "cuda") == 0) {
    g_autofree char *cuda = moshi_device_describe (MOSHI_DEVICE_CUDA, NULL, &error);
    if (cuda == NULL) {
      g_print ("SKIP: moshi-tool bench mimi --device cuda: %s\n", error->message);
      g_error_free (error);
      return 77;
    }
  }
  g_autoptr (MoshiMimi) mimi = load_mimi (model, config, device, &error);
  if (mimi == NULL)
    return fail (error);
  int frame = moshi_mimi_frame_size (mimi);
  int n_frames = MAX ((int) (seconds * moshi_mimi_frame_rate (mimi)), 2);
  /* At least two calls: the first is not timed, and no timed call printed NaN. */
  n_frames = MAX ((n_frames + frames_per_call - 1) / frames_per_call, 2) * frames_per_call;
  g_autofree float *audio = g_new (float, (gsize) n_frames * frame);
  synth_speech (audio, (gsize) n_frames * frame, moshi_mimi_sample_rate (mimi));
  g_autofree float *out = g_new (float, (gsize) frames_per_call * frame);
  g_autofree int32_t *codes = g_new (int32_t, (gsize) frames_per_call * codebooks);

  g_autofree char *description = moshi_mimi_describe_device (mimi);
  if (!json)
    g_print ("Mimi streaming benchmark: %s, %d frames of %d samples, %d codebooks, %d frame(s) per call, backend %s\n",
        model, n_frames, frame, codebooks, frames_per_call, description);
  for (int c = 0; counts[c]; c++) {
    int threads = thread_counts[c];
    MoshiMimiSessionOptions opts = { .n_threads = threads, .num_codebooks = codebooks,
      .max_frames_per_call = frames_per_call };
    g_autoptr (MoshiMimiSession) s = moshi_mimi_session_new (mimi, &opts, &error);
    if (s == NULL)
      return fail (error);
    double enc_total = 0, dec_total = 0, enc_max = 0, dec_max = 0;
    int timed = 0;
    for (int f = 0; f < n_frames; f += frames_per_call) {
      gint64 t0 = g_get_monotonic_time ();
      if (!moshi_mimi_session_encode (s, audio + (gsize) f * frame, frames_per_call, codes, &error))
        return fail (error);
      gint64 t1 = g_get_monotonic_time ();
      if (!moshi_mimi_session_decode (s, codes, codebooks, frames_per_call, out, &error))
        return fail (error);
      gint64 t2 = g_get_monotonic_time ();
      if (f == 0)
        continue;               /* first call: page faults of the mapping, cold caches */
      double e = (t1 - t0) / 1000.0 / frames_per_call, d = (t2 - t1) / 1000.0 / frames_per_call;
      enc_total += e;
      dec_total += d;
      enc_max = MAX (enc_max, e);
      dec_max = MAX (dec_max, d);
      timed++;
    }
    double frame_ms = 1000.0 / moshi_mimi_frame_rate (mimi);
    double enc = enc_total / timed, dec = dec_total / timed;
    if (json) {
      g_print ("{\"impl\":\"gst-moshi\",\"threads\":%d,\"frames\":%d,\"frames_per_call\":%d,"
          "\"encode_ms_per_frame\":%.3f,\"decode_ms_per_frame\":%.3f,\"encode_max_ms\":%.3f,"
          "\"decode_max_ms\":%.3f,\"rtf\":%.4f}\n", threads, timed * frames_per_call,
          frames_per_call, enc, dec, enc_max, dec_max, (enc + dec) / frame_ms);
    } else {
      g_print ("threads %d: encode %.2f ms/frame (RTF %.3f, max %.2f), decode %.2f ms/frame "
          "(RTF %.3f, max %.2f), encode+decode RTF %.3f\n", threads, enc, enc / frame_ms, enc_max,
          dec, dec / frame_ms, dec_max, (enc + dec) / frame_ms);
    }
    for (int b = 0; streams[b] > 0; b++)
      if (!bench_mimi_batch (mimi, audio, n_frames, codebooks, threads, streams[b], json, &error))
        return fail (error);
  }
  return 0;
}


/* ------------------------------------------------------------------ LM */

static gboolean
read_i64_tensor (MoshiSafetensors *st, const char *path, const char *name, int ndim,
    int64_t *shape_out, int64_t **data_out, GError **error)
{
  int64_t any[MOSHI_MAX_DIMS];
  for (int i = 0; i < ndim; i++)
    any[i] = -1;
  const MoshiTensorEntry *e = moshi_safetensors_require (st, name, MOSHI_DTYPE_I64, ndim, any, error);
  if (e == NULL)
    return FALSE;
  memcpy (shape_out, e->shape, ndim * sizeof (int64_t));
  *data_out = g_memdup2 (e->data, MAX (e->nbytes, 1));
  return TRUE;
}

static int
cmd_lm_forward (int argc, char **argv)
{
  g_autofree char *config = NULL, *weights = NULL, *codes_path = NULL, *out = NULL, *device = NULL;
  int threads = 0;
  GOptionEntry entries[] = {
    { "config", 'c', 0, G_OPTION_ARG_FILENAME, &config, "LM config JSON (default: Moshi 7B)", "C" },
    { "weights", 'w', 0, G_OPTION_ARG_FILENAME, &weights, "LM weights: a safetensors file or a repo id", "W" },
    { "codes", 0, 0, G_OPTION_ARG_FILENAME, &codes_path, "Codes (safetensors, `codes` I64 [B, 1 + n_q, T])", "F" },
    { "out", 'o', 0, G_OPTION_ARG_FILENAME, &out, "Output safetensors (logits, text_logits, mask, text_mask)", "F" },
    { "threads", 't', 0, G_OPTION_ARG_INT, &threads, "CPU threads (0 = automatic)", "T" },
    { "device", 'd', 0, G_OPTION_ARG_STRING, &device, "auto, cpu or cuda", "D" },
    { NULL }
  };
  g_autoptr (GOptionContext) ctx = g_option_context_new ("- teacher-forced LM pass, as upstream LMModel.forward");
  g_option_context_add_main_entries (ctx, entries, NULL);
  if (!parse_options (ctx, &argc, &argv, 0))
    return 2;
  if (weights == NULL || codes_path == NULL || out == NULL) {
    g_printerr ("moshi-tool lm-forward: --weights, --codes and --out are required\n");
    return 2;
  }
  if (!check_int_option ("lm-forward", "threads", threads, 0, MAX_THREADS))
    return 2;
  GError *error = NULL;
  MoshiLmLoadOptions opts;
  if (!parse_device (device, &opts.device))
    return 2;
  g_autoptr (MoshiLm) lm = load_lm (weights, config, &opts, &error);
  if (lm == NULL)
    return fail (error);
  g_autoptr (MoshiSafetensors) st = moshi_safetensors_open (codes_path, &error);
  if (st == NULL)
    return fail (error);
  int64_t shape[3];
  g_autofree int64_t *codes = NULL;
  if (!read_i64_tensor (st, codes_path, "codes", 3, shape, &codes, &error))
    return fail (error);
  const MoshiLmConfig *cfg = moshi_lm_get_config (lm);
  if (shape[1] != moshi_lm_config_num_streams (cfg)) {
    g_printerr ("moshi-tool: %s: codes have %" G_GINT64_FORMAT " streams; the model takes %d (text + %d audio)\n",
        codes_path, shape[1], moshi_lm_config_num_streams (cfg), cfg->n_q);
    return 1;
  }
  /* Every product below fits a gsize once b * t fits an int (card, text_card <= 2^24). */
  if (shape[0] < 1 || shape[2] < 1 || shape[0] > G_MAXINT / shape[2]
      || (guint64) shape[0] * shape[2] * MAX (cfg->card, cfg->text_card_out) > G_MAXINT32) {
    g_printerr ("moshi-tool: %s: codes are [%" G_GINT64_FORMAT ", %" G_GINT64_FORMAT ", %"
        G_GINT64_FORMAT "]; batch x steps x vocabulary must be at least 1 and fit 2^31 logits\n",
        codes_path, shape[0], shape[1], shape[2]);
    return 1;
  }
  int b = (int) shape[0], t = (int) shape[2];
  gsize n_logits = (gsize) b * cfg->dep_q * t * cfg->card;
  gsize n_text = (gsize) b * t * cfg->text_card_out;
  g_autofree float *logits = g_new (float, MAX (n_logits, 1));
  g_autofree float *text_logits = g_new (float, n_text);
  g_autofree guint8 *mask = g_new (guint8, MAX ((gsize) b * cfg->dep_q * t, 1));
  g_autofree guint8 *text_mask = g_new (guint8, (gsize) b * t);
  if (!moshi_lm_forward (lm, codes, b, t, threads, logits, text_logits, mask, text_mask, &error)) {
    g_prefix_error (&error, "%s: ", codes_path);
    return fail (error);
  }
  MoshiTensorEntry entries_out[] = {
    { .name = "logits", .dtype = MOSHI_DTYPE_F32, .ndim = 4, .shape = { b, cfg->dep_q, t, cfg->card },
      .data = logits, .nbytes = n_logits * 4 },
    { .name = "text_logits", .dtype = MOSHI_DTYPE_F32, .ndim = 4, .shape = { b, 1, t, cfg->text_card_out },
      .data = text_logits, .nbytes = n_text * 4 },
    { .name = "mask", .dtype = MOSHI_DTYPE_BOOL, .ndim = 3, .shape = { b, cfg->dep_q, t },
      .data = mask, .nbytes = (gsize) b * cfg->dep_q * t },
    { .name = "text_mask", .dtype = MOSHI_DTYPE_BOOL, .ndim = 3, .shape = { b, 1, t },
      .data = text_mask, .nbytes = (gsize) b * t },
  };
  if (!moshi_safetensors_write (out, entries_out, G_N_ELEMENTS (entries_out), NULL, &error))
    return fail (error);
  g_print ("%s: logits [%d, %d, %d, %d], text_logits [%d, 1, %d, %d]\n", out, b, cfg->dep_q, t,
      cfg->card, b, t, cfg->text_card_out);
  return 0;
}

static int
cmd_lm_generate (int argc, char **argv)
{
  g_autofree char *config = NULL, *weights = NULL, *user_path = NULL, *out = NULL, *device = NULL;
  int threads = 0;
  gboolean progress = FALSE;
  SamplingOptions sampling;
  GOptionEntry entries[] = {
    { "config", 'c', 0, G_OPTION_ARG_FILENAME, &config, "LM config JSON (default: Moshi 7B)", "C" },
    { "weights", 'w', 0, G_OPTION_ARG_FILENAME, &weights, "LM weights: a safetensors file or a repo id", "W" },
    { "progress", 'p', 0, G_OPTION_ARG_NONE, &progress, "A progress line on stderr even when it is not a terminal", NULL },
    { "user-codes", 'u', 0, G_OPTION_ARG_FILENAME, &user_path, "User codes (safetensors, `codes` I64 [1, K_user, T])", "F" },
    { "out", 'o', 0, G_OPTION_ARG_FILENAME, &out, "Output safetensors (text_tokens, audio_codes)", "F" },
    { "threads", 't', 0, G_OPTION_ARG_INT, &threads, "CPU threads (0 = automatic)", "T" },
    { "device", 'd', 0, G_OPTION_ARG_STRING, &device, "auto, cpu or cuda", "D" },
    { NULL }
  };
  g_autoptr (GOptionContext) ctx = g_option_context_new ("- run the streaming generator (upstream LMGen) over user codes");
  g_option_context_add_main_entries (ctx, entries, NULL);
  add_sampling_options (ctx, &sampling);
  if (!parse_options (ctx, &argc, &argv, 0))
    return 2;
  if (weights == NULL || user_path == NULL || out == NULL) {
    g_printerr ("moshi-tool lm-generate: --weights, --user-codes and --out are required\n");
    return 2;
  }
  if (!check_int_option ("lm-generate", "threads", threads, 0, MAX_THREADS)
      || !check_sampling_options ("lm-generate", &sampling))
    return 2;
  GError *error = NULL;
  MoshiLmLoadOptions opts;
  if (!parse_device (device, &opts.device))
    return 2;
  g_autoptr (MoshiLm) lm = load_lm (weights, config, &opts, &error);
  if (lm == NULL)
    return fail (error);
  g_autoptr (MoshiSafetensors) st = moshi_safetensors_open (user_path, &error);
  if (st == NULL)
    return fail (error);
  int64_t shape[3];
  g_autofree int64_t *user = NULL;
  if (!read_i64_tensor (st, user_path, "codes", 3, shape, &user, &error))
    return fail (error);
  int n_user = moshi_lm_user_codebooks (lm), dep_q = moshi_lm_generated_codebooks (lm);
  if (shape[0] != 1 || shape[1] < n_user || shape[2] > G_MAXINT / MAX (dep_q, 1)) {
    g_printerr ("moshi-tool: %s: user codes are [%" G_GINT64_FORMAT ", %" G_GINT64_FORMAT ", T]; "
        "expected [1, K >= %d, T <= %d]\n", user_path, shape[0], shape[1], n_user,
        G_MAXINT / MAX (dep_q, 1));
    return 1;
  }
  int t = (int) shape[2];
  g_autoptr (MoshiLmSession) session = moshi_lm_session_new (lm, sampling_options_params (&sampling),
      &error);
  if (session == NULL)
    return fail (error);
  g_autoptr (MoshiLmBatch) batch = moshi_lm_batch_new (lm, 1, threads, &error);
  if (batch == NULL)
    return fail (error);
  g_autofree int64_t *text = g_new (int64_t, t);
  g_autofree int64_t *audio = g_new (int64_t, MAX ((gsize) dep_q * t, 1));
  g_autofree int32_t *in = g_new (int32_t, MAX (n_user, 1));
  g_autofree int32_t *audio_step = g_new (int32_t, MAX (dep_q, 1));
  MoshiProgress meter;
  moshi_progress_init (&meter, progress, "step", t);
  for (int step = 0; step < t; step++) {
    moshi_progress_update (&meter, step);
    for (int j = 0; j < n_user; j++) {
      int64_t v = user[(gsize) j * t + step];
      in[j] = v < G_MININT32 || v > G_MAXINT32 ? G_MININT32 : (int32_t) v;
    }
    int32_t text_step;
    gboolean returned;
    if (!moshi_lm_batch_step (batch, &session, 1, in, &text_step, audio_step, &returned, NULL, &error)) {
      g_prefix_error (&error, "%s, step %d: ", user_path, step);
      return fail (error);
    }
    text[step] = text_step;
    for (int k = 0; k < dep_q; k++)
      audio[(gsize) k * t + step] = audio_step[k];
  }
  moshi_progress_end (&meter, t);
  MoshiTensorEntry entries_out[] = {
    { .name = "text_tokens", .dtype = MOSHI_DTYPE_I64, .ndim = 2, .shape = { 1, t },
      .data = text, .nbytes = (gsize) t * 8 },
    { .name = "audio_codes", .dtype = MOSHI_DTYPE_I64, .ndim = 3, .shape = { 1, dep_q, t },
      .data = audio, .nbytes = (gsize) dep_q * t * 8 },
  };
  if (!moshi_safetensors_write (out, entries_out, G_N_ELEMENTS (entries_out), NULL, &error))
    return fail (error);
  g_print ("%s: %d steps\n", out, t);
  return 0;
}


static int
cmd_chat (int argc, char **argv)
{
  g_autofree char *model = NULL, *lm_config = NULL, *mimi_model = NULL, *mimi_config = NULL;
  g_autofree char *tokenizer_path = NULL, *device = NULL, *hf_repo = NULL;
  int threads = 0;
  gboolean progress = FALSE;
  SamplingOptions sampling;
  GOptionEntry entries[] = {
    { "progress", 'p', 0, G_OPTION_ARG_NONE, &progress, "A progress line on stderr even when it is not a terminal", NULL },
    { "hf-repo", 0, 0, G_OPTION_ARG_STRING, &hf_repo, "Hugging Face repo id (owner/name[@revision]) or folder holding the LM, Mimi, the tokenizer and config.json; downloaded when not in the hub cache (e.g. kyutai/moshiko-pytorch-bf16)", "R" },
    { "model", 'm', 0, G_OPTION_ARG_FILENAME, &model, "LM weights: a safetensors file, folder or repo id (default: from --hf-repo)", "W" },
    { "lm-config", 0, 0, G_OPTION_ARG_FILENAME, &lm_config, "LM config JSON (default: the repo's config.json, else Moshi 7B)", "C" },
    { "mimi-model", 0, 0, G_OPTION_ARG_FILENAME, &mimi_model, "Mimi weights: a safetensors file, folder or repo id (default: the LM's repo or folder)", "W" },
    { "mimi-config", 0, 0, G_OPTION_ARG_FILENAME, &mimi_config, "Mimi config JSON (default: released Mimi)", "C" },
    { "tokenizer", 0, 0, G_OPTION_ARG_FILENAME, &tokenizer_path, "SentencePiece model for the transcript (default: the repo's, if any)", "T" },
    { "threads", 't', 0, G_OPTION_ARG_INT, &threads, "CPU threads (0 = automatic)", "T" },
    { "device", 'd', 0, G_OPTION_ARG_STRING, &device, "auto, cpu or cuda", "D" },
    { NULL }
  };
  g_autoptr (GOptionContext) ctx = g_option_context_new ("IN.wav OUT.wav - offline full duplex: the model listens to IN and speaks into OUT");
  g_option_context_add_main_entries (ctx, entries, NULL);
  add_sampling_options (ctx, &sampling);
  if (!parse_options (ctx, &argc, &argv, 2))
    return 2;
  if (hf_repo == NULL && model == NULL) {
    g_printerr ("moshi-tool chat: give --hf-repo, or --model (and --mimi-model when the LM is a file)\n");
    return 2;
  }
  if (!check_int_option ("chat", "threads", threads, 0, MAX_THREADS)
      || !check_sampling_options ("chat", &sampling))
    return 2;
  GError *error = NULL;
  MoshiDialogLoadOptions load = moshi_dialog_load_options_default ();
  if (!parse_device (device, &load.device))
    return 2;
  load.lm = model;
  load.lm_config = lm_config;
  load.mimi = mimi_model;
  load.mimi_config = mimi_config;
  load.tokenizer = tokenizer_path;
  load.hub = download_options;
  MoshiDialogLoadInfo info = { 0 };
  g_autoptr (MoshiDialogModel) dm = moshi_dialog_model_load (hf_repo, &load, &info, &error);
  if (dm == NULL) {
    g_prefix_error (&error, "%s: ", moshi_dialog_part_name (info.failed));
    moshi_dialog_load_info_clear (&info);
    return fail (error);
  }
  moshi_dialog_load_info_clear (&info);
  g_autoptr (MoshiDialog) dialog = moshi_dialog_new (dm, sampling_options_params (&sampling), threads, &error);
  if (dialog == NULL)
    return fail (error);

  /* Frame by frame from the input file to the output file: a long conversation is never held
   * in memory whole. */
  MoshiWavReader reader;
  if (!moshi_wav_reader_open (&reader, argv[1], &error))
    return fail (error);
  int rate = moshi_dialog_model_sample_rate (dm), frame = moshi_dialog_model_frame_size (dm);
  if (reader.sample_rate != rate || reader.channels != 1) {
    g_printerr ("moshi-tool: %s is %d Hz with %d channel(s); expected %d Hz mono\n", argv[1],
        reader.sample_rate, reader.channels, rate);
    moshi_wav_reader_close (&reader);
    return 1;
  }
  gsize n_frames = (reader.n_frames + frame - 1) / frame;
  MoshiWavWriter writer;
  if (!moshi_wav_writer_open (&writer, argv[2], n_frames * frame, 1, rate, &error)) {
    moshi_wav_reader_close (&reader);
    return fail (error);
  }
  g_autofree float *in = g_new (float, frame);
  g_autofree float *out = g_new (float, frame);
  g_autoptr (GString) transcript = g_string_new (NULL);
  gint64 t0 = g_get_monotonic_time ();
  MoshiProgress meter;
  moshi_progress_init (&meter, progress, "frame", n_frames);
  gboolean ok = TRUE;
  gsize f;
  for (f = 0; f < n_frames; f++) {
    gsize got;
    moshi_progress_update (&meter, f);
    MoshiDialogFrame step;
    /* The last frame is padded with silence. */
    memset (in, 0, frame * sizeof (float));
    if (!(ok = moshi_wav_reader_read (&reader, in, frame, &got, &error)))
      break;
    if (!(ok = moshi_dialog_step_pcm (dialog, in, &step, out, &error))) {
      g_prefix_error (&error, "%s, frame %" G_GSIZE_FORMAT ": ", argv[1], f);
      break;
    }
    moshi_wav_writer_write (&writer, out, frame);
    if (step.text)
      g_string_append (transcript, step.text);
  }
  moshi_progress_end (&meter, f);
  double seconds = (g_get_monotonic_time () - t0) / 1e6;
  moshi_wav_reader_close (&reader);
  if (!ok) {
    moshi_wav_writer_close (&writer, FALSE, NULL);
    return fail (error);
  }
  if (!moshi_wav_writer_close (&writer, TRUE, &error))
    return fail (error);
  g_print ("transcript:%s\n", transcript->len ? transcript->str : " (no words)");
  g_print ("%s: %" G_GSIZE_FORMAT " frames (%.2f s of audio) in %.2f s, %.1f ms per step\n", argv[2],
      n_frames, n_frames * (double) frame / rate, seconds, n_frames ? seconds * 1000 / n_frames : 0.0);
  return 0;
}

/* ------------------------------------------------------------------ main */

static const struct {
  const char *name;
  CommandFunc func;
  const char *summary;
} commands[] = {
  { "info", cmd_info, "list the tensors of a safetensors file and detect the model" },
  { "encode", cmd_encode, "encode a 24 kHz mono WAV into Mimi codes" },
  { "decode", cmd_decode, "decode Mimi codes into a float WAV" },
  { "bench", cmd_bench, "benchmark streaming Mimi (bench mimi), LM steps (bench lm) or live conversations (bench serve)" },
  { "lm-forward", cmd_lm_forward, "teacher-forced LM pass (logits, as upstream LMModel.forward)" },
  { "lm-generate", cmd_lm_generate, "streaming LM generation over user codes (as upstream LMGen)" },
  { "chat", cmd_chat, "offline full duplex: listen to a WAV, speak into another, print the text" },
};

static void
usage (void)
{
  g_printerr ("usage: moshi-tool COMMAND [OPTIONS] ...\n\ncommands:\n");
  for (guint i = 0; i < G_N_ELEMENTS (commands); i++)
    g_printerr ("  %-8s %s\n", commands[i].name, commands[i].summary);
  g_printerr ("\nmoshi-tool COMMAND --help for the options of a command; moshi-tool --version.\n"
      "Models are safetensors files, folders, or Hugging Face repo ids (owner/name[@revision][:file])\n"
      "found in the local hub cache, as the GStreamer elements take them.\n");
}

int
main (int argc, char **argv)
{
  /* GLib writes messages (ours, GOption's “quotes”, the transcript) in the locale's charset:
   * the C locale turns everything beyond ASCII into '?'. */
  setlocale (LC_ALL, "");
  if (argc < 2 || g_str_equal (argv[1], "--help") || g_str_equal (argv[1], "-h")) {
    usage ();
    return argc < 2 ? 2 : 0;
  }
  if (g_str_equal (argv[1], "--version")) {
    moshi_tool_print_version ("moshi-tool");
    return 0;
  }
  moshi_progress_init (&download_meter, TRUE, "download", 0);
  for (guint i = 0; i < G_N_ELEMENTS (commands); i++) {
    if (g_str_equal (argv[1], commands[i].name)) {
      /* The command sees itself as argv[0]. */
      g_autofree char *prog = g_strdup_printf ("moshi-tool %s", argv[1]);
      argv[1] = prog;
      return commands[i].func (argc - 1, argv + 1);
    }
  }
  g_printerr ("moshi-tool: unknown command '%s'\n\n", argv[1]);
  usage ();
  return 2;
}
