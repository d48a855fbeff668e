/* gst-moshi: moshidialog, a spoken conversation with Moshi. */

/**
 * SECTION:element-moshidialog
 * @title: moshidialog
 * @see_also: mimienc, mimidec
 *
 * Runs Kyutai's Moshi, a full-duplex speech-to-speech model: the user's voice
 * goes in on the sink pad, the model's voice comes out on `src` and the words
 * it speaks come out as timed UTF-8 text on `text_src`.
 *
 * The model works in steps of 80 ms (1920 samples at 24 kHz). Every input
 * frame makes exactly one output frame, with the input frame's timestamp, so
 * the output is as long as the input and stays in step with it. Until the
 * model's first frame is generated (its acoustic delay, one step for the
 * released Moshi) the output is silence. Input may come in buffers of any
 * size; timestamp gaps and GAP events are filled with silence so that the
 * conversation keeps running in real time.
 *
 * The sink also takes Mimi tokens (`audio/x-mimi`, as mimienc makes them), and
 * the src pad makes tokens instead of audio when downstream asks for
 * `audio/x-mimi` (for example a mimidec in another process).
 *
 * `text_src` carries one buffer per word piece the model speaks (" Hello",
 * ...), stamped with the time of the output frame it belongs to; frames
 * without a word advance the text stream with GAP events. Each word is also
 * posted as a `moshi-text` element message, for applications that do not link
 * `text_src` (which may stay unlinked).
 *
 * The element reports (1 + delay) × 80 ms of latency: one frame to fill the
 * input frame plus the model's acoustic delay; on the shared scheduler also the
 * batch wait (one frame by default).
 *
 * Every moshidialog of a process on the same loaded models joins one shared
 * scheduler by default: one batched model step per 80 ms for all their
 * conversations, the weights read once (`shared-scheduler`,
 * `max-conversations`, `batch-wait`). The scheduler's figures are in
 * `scheduler-stats` and, once a second of output, in a `moshi-scheduler`
 * element message.
 *
 * ## Example pipelines
 * |[
 * gst-launch-1.0 -e autoaudiosrc ! queue ! audioconvert ! audioresample ! \
 *     moshidialog name=m model=kyutai/moshiko-pytorch-bf16 \
 *         tokenizer=kyutai/moshiko-pytorch-bf16 \
 *     m.src ! queue ! audioconvert ! audioresample ! autoaudiosink \
 *     m.text_src ! queue ! fdsink fd=1
 * ]| A conversation through the microphone and the speaker (use headphones),
 * printing what Moshi says.
 * |[
 * gst-launch-1.0 filesrc location=question.wav ! wavparse ! audioconvert ! \
 *     audioresample ! moshidialog name=m model=... mimi-model=... \
 *     m.src ! audioconvert ! wavenc ! filesink location=answer.wav \
 *     m.text_src ! filesink location=answer.txt
 * ]| Answers a recorded question.
 */

#include "gstmoshidialog.h"

#include <gst/audio/audio.h>
#include <gst/base/base.h>
#include <math.h>
#include <string.h>

#include "gstmoshielements.h"
#include <moshi/moshi-dialog.h>
#include <moshi/moshi-dialog-load.h>
#include <moshi/moshi-error.h>
#include <moshi/moshi-hub.h>
#include <moshi/moshi-scheduler.h>

#include "gstmoshihub.h"

GST_DEBUG_CATEGORY_STATIC (gst_moshi_dialog_debug);
#define GST_CAT_DEFAULT gst_moshi_dialog_debug

/* The files in Kyutai's repositories (kyutai/moshiko-pytorch-bf16 and siblings). */
#define LM_HUB_FILENAME MOSHI_HUB_LM_FILENAME
#define TOKENIZER_HUB_FILENAME MOSHI_HUB_TOKENIZER_FILENAME

#define DEFAULT_TEXT_TEMPERATURE 0.7f
#define DEFAULT_TEXT_TOPK 25
#define DEFAULT_AUDIO_TEMPERATURE 0.8f
#define DEFAULT_AUDIO_TOPK 250
#define DEFAULT_SEED 4242
#define MAX_TEMPERATURE 100.0f

/* The codebook counts the token caps allow (as mimienc and mimidec). */
#define MAX_TOKEN_CODEBOOKS 32

/* Input timestamps within this distance of where the stream should be are taken as
 * continuous (GstAudioEncoder's default tolerance). */
#define TOLERANCE (40 * GST_MSECOND)
/* Longer gaps are not filled with silence: the element resynchronises to the new
 * timestamps instead (as mimidec does with its concealment). */
#define MAX_SILENCE_FILL (10 * GST_SECOND)

/* Key of the object data pointing at the element's MoshiLm while it is open, as
 * GST_MOSHI_MODEL_DATA_KEY does for Mimi: lets tests check sharing. Not an API. */
#define LM_DATA_KEY "gst-moshi-lm-model"

/* The name of the element message carrying each word. */
#define TEXT_MESSAGE_NAME "moshi-text"
/* The name of the element message reporting the shared scheduler, once a second. */
#define SCHEDULER_MESSAGE_NAME "moshi-scheduler"

#define DEFAULT_SHARED_SCHEDULER TRUE
#define DEFAULT_MAX_CONVERSATIONS MOSHI_SCHEDULER_DEFAULT_MAX_CONVERSATIONS
#define DEFAULT_BATCH_WAIT (-1)
#define DEFAULT_EOS_TAIL 0
#define DEFAULT_FILL_STALLS TRUE

enum
{
  PROP_0,
  PROP_MODEL,
  PROP_LM_CONFIG,
  PROP_MIMI_MODEL,
  PROP_MIMI_CONFIG,
  PROP_TOKENIZER,
  PROP_DEVICE,
  PROP_THREADS,
  PROP_TEXT_TEMPERATURE,
  PROP_TEXT_TOPK,
  PROP_AUDIO_TEMPERATURE,
  PROP_AUDIO_TOPK,
  PROP_SEED,
  PROP_KV_CACHE,
  PROP_WEIGHTS,
  PROP_SHARED_SCHEDULER,
  PROP_MAX_CONVERSATIONS,
  PROP_BATCH_WAIT,
  PROP_SCHEDULER_STATS,
  PROP_MAX_OBSERVED_DELAY,
  PROP_EOS_TAIL,
  PROP_FILL_STALLS,
};

/* What the model properties name: compared with what is loaded to notice changes made
 * in READY. */
typedef struct
{
  gchar *model;
  gchar *lm_config;
  gchar *mimi_model;
  gchar *mimi_config;
  gchar *tokenizer;
  GstMoshiDevice device;
  MoshiLmKvCache kv_cache;
  MoshiLmWeights weights;
} ModelSpec;

/* Everything a property sets, under the object lock. The streaming thread and the state
 * changes work from a copy (settings_snapshot, or settings_sampling once a step), so that
 * they see one consistent set whatever the application changes meanwhile. */
typedef struct
{
  ModelSpec models;
  gint threads;
  gboolean shared_scheduler;
  guint max_conversations;
  gint batch_wait_ms;           /* -1: one frame */
  guint eos_tail_ms;
  gboolean fill_stalls;
  MoshiLmSamplingParams sampling;
  /* Counts changes of the sampling properties, which may happen while streaming: a
   * conversation compares it with the count it runs with. */
  guint sampling_serial;
} Settings;

/* The loaded models, from NULL->READY to READY->NULL (replaced at READY->PAUSED when the
 * model properties changed in READY). Written only by the state changes, which the state
 * lock serialises; the streaming thread reads them while a State exists, and the models
 * only change while there is none. */
typedef struct
{
  ModelSpec spec;               /* what they were loaded from */
  GstMoshiLoadedModel mimi;
  MoshiLm *lm;
  MoshiDialogModel *model;
} Models;

/* What the queries need to know of the loaded models; NONE / 0 while nothing is loaded. */
typedef struct
{
  GstClockTime latency;
  gint user_codebooks;
  gint model_codebooks;
  gint codebook_size;
  gint rate;
  gint frame_size;
} ModelInfo;

/* What the pads' queries and upstream events and the read-only properties need, from any
 * thread: under the object lock, as they cannot wait for the stream lock (the streaming
 * thread may hold it for as long as a sink prerolls). Written by the state changes, but for
 * the seek seqnum. */
typedef struct
{
  ModelInfo models;
  /* Of the running conversation: the scheduler it shares (a reference, or NULL) and how
   * long its frames may wait there (part of the latency). */
  MoshiScheduler *scheduler;
  GstClockTime batch_wait;
  /* The last seek forwarded upstream: both sinks of a pipeline send it. */
  guint32 last_seek_seqnum;
} Published;

typedef enum
{
  INPUT_NONE,
  INPUT_PCM,
  INPUT_CODES,
} InputKind;

typedef enum
{
  OUTPUT_NONE,
  OUTPUT_F32,
  OUTPUT_S16,
  OUTPUT_CODES,
} OutputKind;

/* Where the stream is on its timeline: what a flush starts afresh, all of it at once
 * (timeline_reset). Output frames follow base_ts + samples_out / rate; the next input sample
 * is expected at base_ts + (samples_out + filled) / rate. */
typedef struct
{
  GstSegment segment;
  gsize filled;                 /* samples in the input frame being filled */
  gboolean have_base;
  GstClockTime base_ts;
  guint64 samples_out;
  guint64 stats_samples;        /* output since the last scheduler message */
  gboolean discont;             /* mark the next output buffers DISCONT */
  gboolean text_discont;
} Timeline;

/* One stream: created at READY->PAUSED (state_new), freed at PAUSED->READY, so that a restart
 * finds nothing of the last one; a flush resets it (state_reset). Used under the sink pad's
 * stream lock (chain, serialized events, the stall watcher's fills) or while the pads are
 * inactive. */
typedef struct
{
  /* The conversation and what it runs on. */
  MoshiDialog *dialog;
  MoshiScheduler *scheduler;    /* NULL: stepped alone */
  guint applied_serial;         /* the sampling_serial the dialog runs with */
  gint rate;
  gint frame_size;
  gint user_codebooks;
  gint model_codebooks;
  gint codebook_size;
  gfloat *pcm;                  /* the input frame being filled */
  gint32 *codes;                /* one input token frame */
  gfloat *out_pcm;              /* one output frame */
  GstFlowCombiner *combiner;

  /* Kept across flushes, as the caps and the stream are. */
  gboolean have_stream_start;
  InputKind in_kind;
  GstAudioFormat in_format;
  gint in_codebooks;
  OutputKind out_kind;
  gboolean warned_non_finite;   /* one warning per stream */
  gboolean warned_bad_tokens;
  gboolean device_failed;       /* the device failure is posted */

  Timeline tl;
} State;

/* The stall watcher (live input only, in PLAYING): when a frame is past its due time on the
 * pipeline clock and no input has arrived for two frames, it steps the conversation on a
 * frame of silence, so that the model keeps talking, paced, through an RTP gap or silence
 * suppression (stall_watcher). The thread is started and joined by the state changes (not
 * under the stream lock, which the streaming thread may hold, blocked downstream, until a
 * state change is over); the rest is under lock: what the streaming thread publishes and the
 * watcher's wait. */
typedef struct
{
  GThread *thread;
  GMutex lock;
  GCond cond;
  gboolean stop;
  GstClockID clock_id;
  GstClockTime frame_duration;
  guint64 input_serial;         /* input buffers and gaps seen */
  GstClockTime frame_end_rt;    /* running time at which the frame being filled is complete;
                                 * NONE while nothing is expected (no stream, after EOS) */
  GstClockTime last_activity;   /* clock time of the last input, or of the last filled frame */
  gboolean last_was_fill;
} Watcher;

struct _GstMoshiDialog
{
  GstElement parent;

  GstPad *sinkpad;
  GstPad *srcpad;
  GstPad *textpad;

  Settings settings;            /* object lock */
  Published published;          /* object lock */
  Models models;                /* state changes */
  State *state;                 /* sink pad's stream lock; NULL outside PAUSED and PLAYING */
  Watcher watch;                /* watch.lock */
};

#define GST_TYPE_MOSHI_KV_CACHE (gst_moshi_kv_cache_get_type ())
static GType
gst_moshi_kv_cache_get_type (void)
{
  static GType type = 0;
  static const GEnumValue values[] = {
    {MOSHI_LM_KV_DEFAULT, "The default: bf16", "default"},
    {MOSHI_LM_KV_F32, "32-bit float", "f32"},
    {MOSHI_LM_KV_BF16, "bfloat16", "bf16"},
    {MOSHI_LM_KV_FP8, "FP8 E4M3 with a scale per position and head", "fp8"},
    {0, NULL, NULL},
  };
  if (g_once_init_enter (&type))
    g_once_init_leave (&type, g_enum_register_static ("GstMoshiKvCache", values));
  return type;
}

#define GST_TYPE_MOSHI_WEIGHTS (gst_moshi_weights_get_type ())
static GType
gst_moshi_weights_get_type (void)
{
  static GType type = 0;
  static const GEnumValue values[] = {
    {MOSHI_LM_WEIGHTS_AS_STORED, "As the checkpoint stores them", "as-stored"},
    {MOSHI_LM_WEIGHTS_INT8, "Weight-only int8, quantized at load", "int8"},
    {0, NULL, NULL},
  };
  if (g_once_init_enter (&type))
    g_once_init_leave (&type, g_enum_register_static ("GstMoshiWeights", values));
  return type;
}

#define gst_moshi_dialog_parent_class parent_class
G_DEFINE_TYPE (GstMoshiDialog, gst_moshi_dialog, GST_TYPE_ELEMENT);
GST_ELEMENT_REGISTER_DEFINE_WITH_CODE (moshidialog, "moshidialog",
    GST_RANK_NONE, GST_TYPE_MOSHI_DIALOG, moshi_element_init (plugin));

#define RAW_CAPS "audio/x-raw, format = (string) { F32LE, S16LE }, " \
    "layout = (string) interleaved, rate = (int) 24000, channels = (int) 1"
#define TOKEN_CAPS GST_MOSHI_TOKEN_CAPS
#define TEXT_CAPS "text/x-raw, format = (string) utf8"

static GstStaticPadTemplate sink_template = GST_STATIC_PAD_TEMPLATE ("sink",
    GST_PAD_SINK,
    GST_PAD_ALWAYS,
    GST_STATIC_CAPS (RAW_CAPS "; " TOKEN_CAPS));

static GstStaticPadTemplate src_template = GST_STATIC_PAD_TEMPLATE ("src",
    GST_PAD_SRC,
    GST_PAD_ALWAYS,
    GST_STATIC_CAPS (RAW_CAPS "; " TOKEN_CAPS));

static GstStaticPadTemplate text_src_template =
GST_STATIC_PAD_TEMPLATE ("text_src",
    GST_PAD_SRC,
    GST_PAD_ALWAYS,
    GST_STATIC_CAPS (TEXT_CAPS));

/* ------------------------------------------------------------------ settings */

static void
model_spec_clear (ModelSpec * spec)
{
  g_clear_pointer (&spec->model, g_free);
  g_clear_pointer (&spec->lm_config, g_free);
  g_clear_pointer (&spec->mimi_model, g_free);
  g_clear_pointer (&spec->mimi_config, g_free);
  g_clear_pointer (&spec->tokenizer, g_free);
  spec->device = GST_MOSHI_DEFAULT_DEVICE;
}

static void
model_spec_copy (ModelSpec * dest, const ModelSpec * src)
{
  dest->model = g_strdup (src->model);
  dest->lm_config = g_strdup (src->lm_config);
  dest->mimi_model = g_strdup (src->mimi_model);
  dest->mimi_config = g_strdup (src->mimi_config);
  dest->tokenizer = g_strdup (src->tokenizer);
  dest->device = src->device;
  dest->kv_cache = src->kv_cache;
  dest->weights = src->weights;
}

static gboolean
model_spec_equal (const ModelSpec * a, const ModelSpec * b)
{
  return g_strcmp0 (a->model, b->model) == 0
      && g_strcmp0 (a->lm_config, b->lm_config) == 0
      && g_strcmp0 (a->mimi_model, b->mimi_model) == 0
      && g_strcmp0 (a->mimi_config, b->mimi_config) == 0
      && g_strcmp0 (a->tokenizer, b->tokenizer) == 0 && a->device == b->device
      && a->kv_cache == b->kv_cache && a->weights == b->weights;
}

static void
settings_init (Settings * settings)
{
  *settings = (Settings) {
    .models = {.device = GST_MOSHI_DEFAULT_DEVICE, .kv_cache = MOSHI_LM_KV_DEFAULT,
        .weights = MOSHI_LM_WEIGHTS_AS_STORED},
    .threads = GST_MOSHI_DEFAULT_THREADS,
    .shared_scheduler = DEFAULT_SHARED_SCHEDULER,
    .max_conversations = DEFAULT_MAX_CONVERSATIONS,
    .batch_wait_ms = DEFAULT_BATCH_WAIT,
    .eos_tail_ms = DEFAULT_EOS_TAIL,
    .fill_stalls = DEFAULT_FILL_STALLS,
    .sampling = {.text_temperature = DEFAULT_TEXT_TEMPERATURE,
        .text_topk = DEFAULT_TEXT_TOPK, .audio_temperature = DEFAULT_AUDIO_TEMPERATURE,
        .audio_topk = DEFAULT_AUDIO_TOPK, .seed = DEFAULT_SEED},
  };
}

static void
settings_clear (Settings * settings)
{
  model_spec_clear (&settings->models);
}

/* A copy of the settings as they are now; settings_clear it. */
static void
settings_snapshot (GstMoshiDialog * self, Settings * copy)
{
  GST_OBJECT_LOCK (self);
  *copy = self->settings;
  model_spec_copy (&copy->models, &self->settings.models);
  GST_OBJECT_UNLOCK (self);
}

/* The sampling settings and their serial, taken together: read once a step, where a whole
 * snapshot would copy the model names for nothing. */
static guint
settings_sampling (GstMoshiDialog * self, MoshiLmSamplingParams * params)
{
  GST_OBJECT_LOCK (self);
  *params = self->settings.sampling;
  guint serial = self->settings.sampling_serial;
  GST_OBJECT_UNLOCK (self);
  return serial;
}

/* ------------------------------------------------------------------ models */

static void
close_models (GstMoshiDialog * self)
{
  Models *models = &self->models;

  GST_OBJECT_LOCK (self);
  self->published.models = (ModelInfo) {
    .latency = GST_CLOCK_TIME_NONE,
  };
  GST_OBJECT_UNLOCK (self);

  g_object_set_data (G_OBJECT (self), LM_DATA_KEY, NULL);
  g_clear_pointer (&models->model, moshi_dialog_model_unref);
  g_clear_pointer (&models->lm, moshi_lm_unref);
  gst_moshi_loaded_model_clear (&models->mimi, GST_ELEMENT (self));
  model_spec_clear (&models->spec);
}

/* Posts the element error for the part of the conversation model that failed. */
static void
post_model_error (GstMoshiDialog * self, const ModelSpec * spec,
    const MoshiDialogLoadInfo * info, const GError * error)
{
  const gchar *what = moshi_dialog_part_name (info->failed);
  const gchar *device = moshi_device_name ((MoshiDevice) spec->device);
  g_autofree gchar *details = NULL;

  switch (info->failed) {
    case MOSHI_DIALOG_PART_MIMI:
      if (info->mimi == NULL) {
        GST_ELEMENT_ERROR (self, RESOURCE, NOT_FOUND, ("No Mimi model given"),
            ("set the \"mimi-model\" property to a Mimi safetensors file or to "
                "a Hugging Face repo id such as kyutai/moshiko-pytorch-bf16 (it "
                "defaults to the LM's repository or directory, but model=%s is a "
                "file)", spec->model));
        return;
      }
      if (info->not_found)
        break;
      details = g_strdup_printf ("model=%s (file %s), config=%s, device=%s: %s",
          info->mimi, info->mimi_path, info->mimi_config ? info->mimi_config :
          "(released Mimi)", device, error->message);
      gst_moshi_post_load_error (GST_ELEMENT (self), what, info->mimi,
          info->mimi_path, info->mimi_config, error, details);
      return;
    case MOSHI_DIALOG_PART_TOKENIZER:
      if (info->not_found)
        break;
      details = g_strdup_printf ("tokenizer=%s (file %s): %s", info->tokenizer,
          info->tokenizer_path, error->message);
      gst_moshi_post_load_error (GST_ELEMENT (self), what, info->tokenizer,
          info->tokenizer_path, NULL, error, details);
      return;
    case MOSHI_DIALOG_PART_MODEL:
      GST_ELEMENT_ERROR (self, RESOURCE, SETTINGS,
          ("Moshi LM \"%s\" and Mimi model \"%s\" do not fit together: %s",
              info->lm, info->mimi, error->message),
          ("model=%s, lm-config=%s, mimi-model=%s, mimi-config=%s", info->lm,
              info->lm_config ? info->lm_config : "(released)", info->mimi,
              info->mimi_config ? info->mimi_config : "(released)"));
      return;
    case MOSHI_DIALOG_PART_LM:
    case MOSHI_DIALOG_PART_NONE:
    default:
      if (info->not_found)
        break;
      details = g_strdup_printf ("model=%s (file %s), lm-config=%s, device=%s: %s",
          info->lm, info->lm_path, info->lm_config ? info->lm_config :
          "(released Moshi 7B)", device, error->message);
      /* No LM file yet when the repository's own config.json was unreadable. */
      gst_moshi_post_load_error (GST_ELEMENT (self), what, info->lm,
          info->lm_path ? info->lm_path : info->lm_config, info->lm_config, error,
          details);
      return;
  }
  /* Not found: the spec could not be turned into a file (or fetched). */
  const gchar *spec_text = info->failed == MOSHI_DIALOG_PART_MIMI ? info->mimi :
      info->failed == MOSHI_DIALOG_PART_TOKENIZER ? info->tokenizer : info->lm;
  GST_ELEMENT_ERROR (self, RESOURCE, NOT_FOUND,
      ("Could not find %s \"%s\": %s", what, spec_text, error->message),
      ("model=%s", spec_text));
}

/* Makes sure the models wanted names are loaded. On failure posts an element error naming the
 * file at fault and returns FALSE, with nothing loaded. */
static gboolean
ensure_models (GstMoshiDialog * self, const ModelSpec * wanted)
{
  g_autoptr (GError) error = NULL;
  Models *models = &self->models;
  MoshiDialogLoadInfo info = { 0 };

  if (models->model != NULL && model_spec_equal (wanted, &models->spec))
    return TRUE;
  close_models (self);

  if (wanted->model == NULL || wanted->model[0] == '\0') {
    GST_ELEMENT_ERROR (self, RESOURCE, NOT_FOUND, ("No Moshi LM given"),
        ("set the \"model\" property to the LM's safetensors file or to a "
            "Hugging Face repo id such as kyutai/moshiko-pytorch-bf16"));
    goto failed;
  }

  /* Mimi defaults to the LM's repository or directory, which in Kyutai's releases also
   * holds it; the tokenizer is only loaded when asked for. Shared copies: another element
   * of the process on the same files uses the same weights. */
  MoshiDialogLoadOptions options = moshi_dialog_load_options_default ();
  options.lm = wanted->model;
  options.lm_config = wanted->lm_config;
  options.mimi = wanted->mimi_model;
  options.mimi_config = wanted->mimi_config;
  options.tokenizer = wanted->tokenizer ? wanted->tokenizer : "";
  options.device = (MoshiDevice) wanted->device;
  options.kv_cache = wanted->kv_cache;
  options.weights = wanted->weights;
  options.shared = TRUE;
  options.hub = gst_moshi_hub_options (GST_ELEMENT (self));
  models->model = moshi_dialog_model_load (NULL, &options, &info, &error);
  if (models->model == NULL) {
    post_model_error (self, wanted, &info, error);
    goto failed;
  }
  models->lm = moshi_lm_ref (moshi_dialog_model_get_lm (models->model));
  models->mimi.mimi = moshi_mimi_ref (moshi_dialog_model_get_mimi (models->model));
  models->mimi.model = g_strdup (info.mimi);
  models->mimi.config = g_strdup (info.mimi_config);
  models->mimi.device = wanted->device;
  g_object_set_data (G_OBJECT (self), GST_MOSHI_MODEL_DATA_KEY, models->mimi.mimi);
  if (!gst_moshi_check_mimi (GST_ELEMENT (self), models->mimi.mimi, info.mimi,
          info.mimi_path, info.mimi_config))
    goto failed;
  if (info.lm_config != NULL && wanted->lm_config == NULL)
    GST_INFO_OBJECT (self, "LM config from the model's repository: %s",
        info.lm_config);
  if (moshi_dialog_model_model_codebooks (models->model) > MAX_TOKEN_CODEBOOKS
      || moshi_dialog_model_user_codebooks (models->model) > MAX_TOKEN_CODEBOOKS)
    goto too_many_codebooks;

  const MoshiLmConfig *cfg = moshi_lm_get_config (models->lm);
  if (info.tokenizer_path == NULL)
    GST_INFO_OBJECT (self, "no tokenizer: text_src only carries GAP events");

  gint frame_size = moshi_dialog_model_frame_size (models->model);
  gint rate = moshi_dialog_model_sample_rate (models->model);
  gint delay = moshi_dialog_model_delay_steps (models->model);
  GST_INFO_OBJECT (self, "LM %s: %d user and %d model codebooks of %d entries, "
      "text vocabulary %d, delay %d steps; Mimi %s: %d samples per frame at "
      "%d Hz", moshi_lm_get_path (models->lm),
      moshi_dialog_model_user_codebooks (models->model),
      moshi_dialog_model_model_codebooks (models->model), cfg->card,
      cfg->text_card, delay, moshi_mimi_get_path (models->mimi.mimi),
      frame_size, rate);

  ModelInfo model_info = {
    .latency = gst_util_uint64_scale_int (GST_SECOND, (1 + delay) * frame_size, rate),
    .user_codebooks = moshi_dialog_model_user_codebooks (models->model),
    .model_codebooks = moshi_dialog_model_model_codebooks (models->model),
    .codebook_size = moshi_mimi_codebook_size (models->mimi.mimi),
    .rate = rate,
    .frame_size = frame_size,
  };
  GST_OBJECT_LOCK (self);
  self->published.models = model_info;
  GST_OBJECT_UNLOCK (self);

  model_spec_copy (&models->spec, wanted);
  g_object_set_data (G_OBJECT (self), LM_DATA_KEY, models->lm);
  moshi_dialog_load_info_clear (&info);
  return TRUE;

  /* ERRORS */
too_many_codebooks:
  {
    GST_ELEMENT_ERROR (self, RESOURCE, SETTINGS,
        ("Moshi LM \"%s\" uses %d user and %d model codebooks; this element "
            "handles at most %d", wanted->model,
            moshi_dialog_model_user_codebooks (models->model),
            moshi_dialog_model_model_codebooks (models->model),
            MAX_TOKEN_CODEBOOKS), ("file %s", moshi_lm_get_path (models->lm)));
    goto failed;
  }
failed:
  {
    moshi_dialog_load_info_clear (&info);
    close_models (self);
    return FALSE;
  }
}

/* ------------------------------------------------------------------ stream state */

static void
timeline_reset (Timeline * tl)
{
  *tl = (Timeline) {
    .base_ts = GST_CLOCK_TIME_NONE,
    .discont = TRUE,
    .text_discont = TRUE,
  };
  gst_segment_init (&tl->segment, GST_FORMAT_TIME);
}

static void
state_free (State * state)
{
  g_clear_pointer (&state->dialog, moshi_dialog_free);
  moshi_scheduler_unref (state->scheduler);
  g_free (state->pcm);
  g_free (state->out_pcm);
  g_free (state->codes);
  gst_flow_combiner_free (state->combiner);
  g_free (state);
}

/* A fresh conversation on the loaded models with the settings given, or NULL after posting
 * an element error. */
static State *
state_new (GstMoshiDialog * self, const Settings * settings)
{
  g_autoptr (GError) error = NULL;
  MoshiDialogModel *model = self->models.model;
  MoshiScheduler *scheduler = NULL;

  if (settings->shared_scheduler) {
    MoshiSchedulerOptions sched_opts = {
      .max_conversations = settings->max_conversations,
      .n_threads = settings->threads,
    };
    scheduler = moshi_scheduler_get_shared (model, &sched_opts, &error);
    if (scheduler == NULL) {
      GST_ELEMENT_ERROR (self, LIBRARY, INIT,
          ("Could not start the shared Moshi scheduler: %s", error->message),
          ("LM %s, max-conversations=%d, threads=%d",
              moshi_lm_get_path (self->models.lm), sched_opts.max_conversations,
              settings->threads));
      return NULL;
    }
  }
  gint64 frame_us = gst_util_uint64_scale_int (G_USEC_PER_SEC,
      moshi_dialog_model_frame_size (model), moshi_dialog_model_sample_rate (model));
  MoshiDialogOptions dialog_opts = {
    .n_threads = settings->threads,
    .scheduler = scheduler,
    .max_wait_us = settings->batch_wait_ms < 0 ? frame_us :
        (gint64) settings->batch_wait_ms * 1000,
  };
  MoshiDialog *dialog = moshi_dialog_new_full (model, &settings->sampling, &dialog_opts,
      &error);
  if (dialog == NULL) {
    if (g_error_matches (error, MOSHI_ERROR, MOSHI_ERROR_BUSY))
      GST_ELEMENT_ERROR (self, RESOURCE, BUSY,
          ("Too many Moshi conversations: %s", error->message),
          ("raise max-conversations on the first element of the process, or set "
              "shared-scheduler=false for a conversation of its own"));
    else if (!gst_moshi_post_no_memory (GST_ELEMENT (self),
            "Could not start a Moshi conversation", error))
      GST_ELEMENT_ERROR (self, LIBRARY, INIT,
          ("Could not start a Moshi conversation: %s", error->message),
          ("LM %s, threads=%d", moshi_lm_get_path (self->models.lm),
              settings->threads));
    moshi_scheduler_unref (scheduler);
    return NULL;
  }

  State *state = g_new0 (State, 1);
  state->dialog = dialog;
  state->scheduler = scheduler;
  state->applied_serial = settings->sampling_serial;
  state->rate = moshi_dialog_model_sample_rate (model);
  state->frame_size = moshi_dialog_model_frame_size (model);
  state->user_codebooks = moshi_dialog_model_user_codebooks (model);
  state->model_codebooks = moshi_dialog_model_model_codebooks (model);
  state->codebook_size = moshi_mimi_codebook_size (self->models.mimi.mimi);
  state->pcm = g_new0 (gfloat, state->frame_size);
  state->out_pcm = g_new0 (gfloat, state->frame_size);
  state->codes = g_new0 (gint32, MAX_TOKEN_CODEBOOKS);
  state->combiner = gst_flow_combiner_new ();
  gst_flow_combiner_add_pad (state->combiner, self->srcpad);
  gst_flow_combiner_add_pad (state->combiner, self->textpad);
  state->in_kind = INPUT_NONE;
  state->out_kind = OUTPUT_NONE;
  timeline_reset (&state->tl);

  GST_OBJECT_LOCK (self);
  self->published.scheduler = scheduler ? moshi_scheduler_ref (scheduler) : NULL;
  self->published.batch_wait = scheduler ?
      (GstClockTime) dialog_opts.max_wait_us * GST_USECOND : 0;
  self->published.last_seek_seqnum = GST_SEQNUM_INVALID;
  GST_OBJECT_UNLOCK (self);
  return state;
}

/* Starts a stream (READY->PAUSED), while the pads are inactive: no data can arrive before
 * the conversation exists. */
static gboolean
start_stream (GstMoshiDialog * self, const Settings * settings)
{
  g_assert (self->state == NULL);
  self->state = state_new (self, settings);
  return self->state != NULL;
}

/* Ends the stream (PAUSED->READY), once the pads are inactive: the streaming thread has left
 * the element. */
static void
stop_stream (GstMoshiDialog * self)
{
  GST_OBJECT_LOCK (self);
  MoshiScheduler *scheduler = g_steal_pointer (&self->published.scheduler);
  self->published.batch_wait = 0;
  GST_OBJECT_UNLOCK (self);
  moshi_scheduler_unref (scheduler);
  g_clear_pointer (&self->state, state_free);
}

/* Restarts the conversation with the current sampling settings, the seed included: a reset
 * takes the seed of the settings it finds, so this is a fresh conversation, and it keeps its
 * place on the shared scheduler. */
static void
restart_conversation (GstMoshiDialog * self, State * state)
{
  MoshiLmSamplingParams params;
  guint serial = settings_sampling (self, &params);

  moshi_dialog_set_sampling_params (state->dialog, &params);
  moshi_dialog_reset (state->dialog);
  state->applied_serial = serial;
}

/* What a flush starts afresh: the conversation, the timeline and the combined flow. The
 * negotiated formats stay, as the caps do. */
static void
state_reset (GstMoshiDialog * self, State * state)
{
  restart_conversation (self, state);
  timeline_reset (&state->tl);
  gst_flow_combiner_reset (state->combiner);
}

/* Sampling properties changed while streaming apply from the next step (the seed from the
 * next flush or stream, as a running conversation keeps its random sequence). */
static void
apply_sampling_changes (GstMoshiDialog * self, State * state)
{
  MoshiLmSamplingParams params;
  guint serial = settings_sampling (self, &params);

  if (G_LIKELY (serial == state->applied_serial))
    return;
  /* Nothing to lose yet: a conversation that has not started takes every setting, the
   * seed included. */
  if (moshi_dialog_steps (state->dialog) == 0) {
    restart_conversation (self, state);
    return;
  }
  moshi_dialog_set_sampling_params (state->dialog, &params);
  state->applied_serial = serial;
  GST_DEBUG_OBJECT (self, "sampling: text %g/%d, audio %g/%d",
      params.text_temperature, params.text_topk, params.audio_temperature,
      params.audio_topk);
}

/* ------------------------------------------------------------------ caps */

static GstCaps *
raw_caps (const gchar * format)
{
  return gst_caps_new_simple ("audio/x-raw", "format", G_TYPE_STRING, format,
      "layout", G_TYPE_STRING, "interleaved", "rate", G_TYPE_INT, 24000,
      "channels", G_TYPE_INT, 1, NULL);
}

/* The pad template, with the token structure narrowed to what the loaded model takes or
 * makes (all of the template while nothing is loaded). */
static GstCaps *
pad_caps (GstMoshiDialog * self, GstPad * pad)
{
  GstCaps *templ = gst_pad_get_pad_template_caps (pad);

  GST_OBJECT_LOCK (self);
  ModelInfo info = self->published.models;
  GST_OBJECT_UNLOCK (self);
  if (info.codebook_size == 0)
    return templ;

  GstCaps *caps = gst_caps_make_writable (templ);
  gint gcd = gst_util_greatest_common_divisor (info.rate, info.frame_size);
  for (guint i = 0; i < gst_caps_get_size (caps); i++) {
    GstStructure *s = gst_caps_get_structure (caps, i);
    if (!gst_structure_has_name (s, "audio/x-mimi"))
      continue;
    gst_structure_set (s, "codebook-size", G_TYPE_INT, info.codebook_size,
        "framerate", GST_TYPE_FRACTION, info.rate / gcd, info.frame_size / gcd, NULL);
    if (pad == self->sinkpad)
      gst_structure_set (s, "codebooks", GST_TYPE_INT_RANGE, info.user_codebooks,
          MAX_TOKEN_CODEBOOKS, NULL);
    else
      gst_structure_set (s, "codebooks", G_TYPE_INT, info.model_codebooks, NULL);
  }
  return caps;
}

/* Chooses the output caps: raw F32LE, raw S16LE or tokens, in the order downstream
 * prefers them (raw F32LE when it takes anything or nothing is linked). */
static gboolean
negotiate_src (GstMoshiDialog * self, State * state)
{
  g_autoptr (GstCaps) f32 = raw_caps ("F32LE");
  g_autoptr (GstCaps) s16 = raw_caps ("S16LE");
  g_autoptr (GstCaps) tokens = gst_moshi_token_caps_new (self->models.mimi.mimi,
      state->model_codebooks);
  g_autoptr (GstCaps) allowed = gst_pad_get_allowed_caps (self->srcpad);
  GstCaps *candidates[] = { f32, s16, tokens };
  const OutputKind kinds[] = { OUTPUT_F32, OUTPUT_S16, OUTPUT_CODES };
  gint chosen = -1;

  GST_DEBUG_OBJECT (self, "downstream allows %" GST_PTR_FORMAT, allowed);
  if (allowed == NULL) {
    chosen = 0;                 /* not linked */
  } else {
    for (guint i = 0; i < gst_caps_get_size (allowed) && chosen < 0; i++) {
      g_autoptr (GstCaps) one = gst_caps_copy_nth (allowed, i);
      for (guint c = 0; c < G_N_ELEMENTS (candidates) && chosen < 0; c++)
        if (gst_caps_can_intersect (one, candidates[c]))
          chosen = c;
    }
  }
  if (chosen < 0)
    goto not_negotiated;

  GST_DEBUG_OBJECT (self, "output caps %" GST_PTR_FORMAT, candidates[chosen]);
  /* Stored on the pad even when downstream refuses them; a refusal shows in the flow
   * return of the next buffer. */
  gst_pad_push_event (self->srcpad, gst_event_new_caps (candidates[chosen]));
  state->out_kind = kinds[chosen];
  return TRUE;

  /* ERRORS */
not_negotiated:
  {
    GST_ELEMENT_ERROR (self, CORE, NEGOTIATION,
        ("Downstream of moshidialog takes neither 24 kHz mono raw audio nor "
            "the tokens of Mimi model \"%s\"", self->models.mimi.model),
        ("downstream allows %" GST_PTR_FORMAT ", the model makes %"
            GST_PTR_FORMAT " tokens", allowed, tokens));
    return FALSE;
  }
}

static gboolean
set_input_caps (GstMoshiDialog * self, State * state, GstCaps * caps)
{
  GstStructure *s = gst_caps_get_structure (caps, 0);
  gint codebooks, value, num, den;

  GST_DEBUG_OBJECT (self, "input caps %" GST_PTR_FORMAT, caps);
  if (gst_structure_has_name (s, "audio/x-raw")) {
    GstAudioInfo info;
    if (!gst_audio_info_from_caps (&info, caps)
        || GST_AUDIO_INFO_RATE (&info) != state->rate
        || GST_AUDIO_INFO_CHANNELS (&info) != 1)
      goto wrong_raw;
    state->in_kind = INPUT_PCM;
    state->in_format = GST_AUDIO_INFO_FORMAT (&info);
    return TRUE;
  }

  if (!gst_structure_get_int (s, "codebooks", &codebooks))
    goto no_codebooks;
  if ((gst_structure_get_int (s, "codebook-size", &value)
          && value != state->codebook_size)
      || (gst_structure_get_int (s, "rate", &value) && value != state->rate)
      || (gst_structure_get_fraction (s, "framerate", &num, &den)
          && (gint64) num * state->frame_size != (gint64) den * state->rate))
    goto other_model;
  if (codebooks < state->user_codebooks || codebooks > MAX_TOKEN_CODEBOOKS)
    goto too_few_codebooks;
  state->in_kind = INPUT_CODES;
  state->in_codebooks = codebooks;
  return TRUE;

  /* ERRORS */
wrong_raw:
  {
    GST_ELEMENT_ERROR (self, CORE, NEGOTIATION,
        ("moshidialog takes %d Hz mono audio", state->rate),
        ("caps %" GST_PTR_FORMAT "; put audioconvert ! audioresample in front",
            caps));
    return FALSE;
  }
no_codebooks:
  {
    GST_ELEMENT_ERROR (self, CORE, NEGOTIATION, (NULL),
        ("caps without a codebooks field: %" GST_PTR_FORMAT, caps));
    return FALSE;
  }
other_model:
  {
    g_autoptr (GstCaps) expected = gst_moshi_token_caps_new (self->models.mimi.mimi,
        state->user_codebooks);
    GST_ELEMENT_ERROR (self, CORE, NEGOTIATION,
        ("The tokens were made by another Mimi model than \"%s\"",
            self->models.mimi.model), ("caps %" GST_PTR_FORMAT ", the model makes %"
            GST_PTR_FORMAT " (file %s)", caps, expected,
            moshi_mimi_get_path (self->models.mimi.mimi)));
    return FALSE;
  }
too_few_codebooks:
  {
    GST_ELEMENT_ERROR (self, CORE, NEGOTIATION,
        ("The tokens have %d codebooks, but Moshi LM \"%s\" reads %d",
            codebooks, self->models.spec.model, state->user_codebooks),
        ("caps %" GST_PTR_FORMAT, caps));
    return FALSE;
  }
}

/* ------------------------------------------------------------------ output */

static GstClockTime
out_time (const State * state, guint64 samples)
{
  return state->tl.base_ts + gst_util_uint64_scale_int (samples, GST_SECOND,
      state->rate);
}

static GstFlowReturn
push_audio (GstMoshiDialog * self, State * state, const MoshiDialogFrame * frame,
    gsize valid, GstClockTime pts, GstClockTime duration)
{
  GstBuffer *out;
  GstMapInfo map;

  if (gst_pad_check_reconfigure (self->srcpad) && !negotiate_src (self, state)) {
    gst_pad_mark_reconfigure (self->srcpad);
    return GST_PAD_IS_FLUSHING (self->srcpad) ? GST_FLOW_FLUSHING :
        GST_FLOW_NOT_NEGOTIATED;
  }

  switch (state->out_kind) {
    case OUTPUT_CODES:
      if (!frame->returned) {
        /* Nothing generated yet: no tokens to send, the time passes as a gap. */
        gst_pad_push_event (self->srcpad, gst_event_new_gap (pts, duration));
        return GST_FLOW_OK;
      }
      out = gst_buffer_new_allocate (NULL, (gsize) state->model_codebooks * 2,
          NULL);
      gst_buffer_map (out, &map, GST_MAP_WRITE);
      gst_moshi_codes_pack (map.data, frame->audio_codes, state->model_codebooks);
      gst_buffer_unmap (out, &map);
      if (valid < (gsize) state->frame_size)
        gst_buffer_add_audio_clipping_meta (out, GST_FORMAT_DEFAULT, 0,
            state->frame_size - valid);
      break;
    case OUTPUT_S16:
      out = gst_buffer_new_allocate (NULL, valid * 2, NULL);
      gst_buffer_map (out, &map, GST_MAP_WRITE);
      for (gsize i = 0; i < valid; i++) {
        gfloat v = roundf (state->out_pcm[i] * 32768.0f);
        GST_WRITE_UINT16_LE (map.data + 2 * i,
            (guint16) (gint16) CLAMP (v, -32768.0f, 32767.0f));
      }
      gst_buffer_unmap (out, &map);
      break;
    case OUTPUT_F32:
    default:
      out = gst_buffer_new_memdup (state->out_pcm, valid * sizeof (gfloat));
      break;
  }

  GST_BUFFER_PTS (out) = pts;
  GST_BUFFER_DURATION (out) = duration;
  if (state->tl.discont) {
    GST_BUFFER_FLAG_SET (out, GST_BUFFER_FLAG_DISCONT);
    state->tl.discont = FALSE;
  }
  return gst_pad_push (self->srcpad, out);
}

static void
post_text_message (GstMoshiDialog * self, State * state, const gchar * text, gint token,
    GstClockTime pts, GstClockTime duration)
{
  GstStructure *s = gst_structure_new (TEXT_MESSAGE_NAME,
      "text", G_TYPE_STRING, text,
      "token", G_TYPE_INT, token,
      "timestamp", G_TYPE_UINT64, pts,
      "duration", G_TYPE_UINT64, duration,
      "running-time", G_TYPE_UINT64,
      gst_segment_to_running_time (&state->tl.segment, GST_FORMAT_TIME, pts),
      "stream-time", G_TYPE_UINT64,
      gst_segment_to_stream_time (&state->tl.segment, GST_FORMAT_TIME, pts),
      NULL);

  gst_element_post_message (GST_ELEMENT (self),
      gst_message_new_element (GST_OBJECT (self), s));
}

/* The shared scheduler's figures, for any thread (NULL when the conversation runs on its own,
 * or there is none). */
static GstStructure *
scheduler_stats (GstMoshiDialog * self)
{
  GST_OBJECT_LOCK (self);
  MoshiScheduler *scheduler = self->published.scheduler ?
      moshi_scheduler_ref (self->published.scheduler) : NULL;
  GST_OBJECT_UNLOCK (self);
  if (scheduler == NULL)
    return NULL;
  GstStructure *st = gst_moshi_scheduler_stats_new (scheduler, SCHEDULER_MESSAGE_NAME);
  moshi_scheduler_unref (scheduler);
  return st;
}

/* Once a second of output, on a shared scheduler: its figures as an element message. */
static void
post_scheduler_stats (GstMoshiDialog * self, State * state, gsize samples)
{
  state->tl.stats_samples += samples;
  if (state->scheduler == NULL || state->tl.stats_samples < (guint64) state->rate)
    return;
  state->tl.stats_samples = 0;
  GstStructure *st = gst_moshi_scheduler_stats_new (state->scheduler,
      SCHEDULER_MESSAGE_NAME);
  gst_element_post_message (GST_ELEMENT (self),
      gst_message_new_element (GST_OBJECT (self), st));
}

static GstFlowReturn
push_text (GstMoshiDialog * self, State * state, const MoshiDialogFrame * frame,
    GstClockTime pts, GstClockTime duration)
{
  if (frame->text == NULL || frame->text[0] == '\0') {
    /* A sparse stream: tell downstream that no word comes for this time. */
    gst_pad_push_event (self->textpad, gst_event_new_gap (pts, duration));
    return GST_FLOW_OK;
  }

  /* Pieces of a SentencePiece model are UTF-8; make sure of it all the same. */
  gchar *text = g_utf8_make_valid (frame->text, -1);
  GST_LOG_OBJECT (self, "text \"%s\" (token %d) at %" GST_TIME_FORMAT, text,
      frame->text_token, GST_TIME_ARGS (pts));
  post_text_message (self, state, text, frame->text_token, pts, duration);

  GstBuffer *buf = gst_buffer_new_wrapped (text, strlen (text));
  GST_BUFFER_PTS (buf) = pts;
  GST_BUFFER_DURATION (buf) = duration;
  if (state->tl.text_discont) {
    GST_BUFFER_FLAG_SET (buf, GST_BUFFER_FLAG_DISCONT);
    state->tl.text_discont = FALSE;
  }
  return gst_pad_push (self->textpad, buf);
}

/* One model step on a user frame (pcm: frame_size samples, or codes: in_codebooks codes),
 * of which valid samples are real input (fewer only for the last frame before a drain):
 * pushes one frame on src and a word or a gap on text_src. */
static GstFlowReturn
run_step (GstMoshiDialog * self, State * state, const gfloat * pcm, const gint32 * codes,
    gsize valid)
{
  g_autoptr (GError) error = NULL;
  MoshiDialogFrame frame;
  GstFlowReturn ret;
  gboolean ok;

  apply_sampling_changes (self, state);

  gfloat *out_pcm = state->out_kind == OUTPUT_CODES ? NULL : state->out_pcm;
  if (pcm != NULL)
    ok = moshi_dialog_step_pcm (state->dialog, pcm, &frame, out_pcm, &error);
  else
    ok = moshi_dialog_step_codes (state->dialog, codes, state->in_codebooks,
        &frame, out_pcm, &error);
  if (!ok)
    goto step_failed;

  GstClockTime pts = out_time (state, state->tl.samples_out);
  state->tl.samples_out += valid;
  GstClockTime duration = out_time (state, state->tl.samples_out) - pts;
  post_scheduler_stats (self, state, valid);
  GST_LOG_OBJECT (self, "step %" G_GINT64_FORMAT " at %" GST_TIME_FORMAT
      ": returned %d, text token %d", moshi_dialog_steps (state->dialog) - 1,
      GST_TIME_ARGS (pts), frame.returned, frame.text_token);

  ret = push_audio (self, state, &frame, valid, pts, duration);
  ret = gst_flow_combiner_update_pad_flow (state->combiner, self->srcpad, ret);
  if (ret == GST_FLOW_FLUSHING || ret == GST_FLOW_EOS
      || ret <= GST_FLOW_NOT_NEGOTIATED)
    return ret;
  GstFlowReturn text_ret = push_text (self, state, &frame, pts, duration);
  return gst_flow_combiner_update_pad_flow (state->combiner, self->textpad,
      text_ret);

  /* ERRORS */
step_failed:
  {
    if (gst_moshi_handle_device_failure (GST_ELEMENT (self),
            &state->device_failed, "Moshi step", error))
      return GST_FLOW_ERROR;
    GST_ELEMENT_ERROR (self, STREAM, FAILED, (NULL),
        ("Moshi step %" G_GINT64_FORMAT " failed: %s",
            moshi_dialog_steps (state->dialog), error->message));
    return GST_FLOW_ERROR;
  }
}

/* Runs the partial input frame, padded with silence, so that no input is left behind. */
static GstFlowReturn
drain (GstMoshiDialog * self, State * state)
{
  if (state->tl.filled == 0)
    return GST_FLOW_OK;
  gsize valid = state->tl.filled;
  GST_DEBUG_OBJECT (self, "draining a partial frame of %" G_GSIZE_FORMAT
      " samples", valid);
  memset (state->pcm + valid, 0, (state->frame_size - valid) * sizeof (gfloat));
  state->tl.filled = 0;
  return run_step (self, state, state->pcm, NULL, valid);
}

/* Appends n samples of silence to the input, running the frames they complete. */
static GstFlowReturn
feed_silence (GstMoshiDialog * self, State * state, guint64 n)
{
  GstFlowReturn ret = GST_FLOW_OK;

  GST_DEBUG_OBJECT (self, "filling %" G_GUINT64_FORMAT " samples of silence", n);
  while (n > 0 && ret == GST_FLOW_OK) {
    gsize take = MIN (n, (guint64) (state->frame_size - state->tl.filled));
    memset (state->pcm + state->tl.filled, 0, take * sizeof (gfloat));
    state->tl.filled += take;
    n -= take;
    if (state->tl.filled == (gsize) state->frame_size) {
      state->tl.filled = 0;
      ret = run_step (self, state, state->pcm, NULL, state->frame_size);
    }
  }
  return ret;
}

/* eos-tail in whole frames (0 without a model). */
static guint64
tail_frames (guint tail_ms, gint rate, gint frame_size)
{
  if (tail_ms == 0 || rate == 0 || frame_size == 0)
    return 0;
  return gst_util_uint64_scale_ceil (tail_ms, rate, (guint64) 1000 * frame_size);
}

/* How much longer than its input the output runs, for any thread: eos-tail in whole frames
 * of the loaded model. */
static GstClockTime
eos_tail_duration (GstMoshiDialog * self)
{
  GST_OBJECT_LOCK (self);
  guint tail_ms = self->settings.eos_tail_ms;
  gint rate = self->published.models.rate, frame_size = self->published.models.frame_size;
  GST_OBJECT_UNLOCK (self);
  guint64 frames = tail_frames (tail_ms, rate, frame_size);
  if (frames == 0)
    return 0;
  return gst_util_uint64_scale (frames * frame_size, GST_SECOND, rate);
}

/* The tail is output past the input segment's end: a segment that ends there would have the
 * sink (or an RTSP client told the range) drop it. */
static void
extend_stop_for_tail (GstMoshiDialog * self, gdouble rate, gint64 * stop)
{
  GstClockTime tail = eos_tail_duration (self);
  if (tail > 0 && rate > 0 && *stop >= 0)
    *stop += tail;
}

/* After the input's end the model may still be answering: eos-tail lets it go on for that long
 * on silence (whole frames), so that "a recorded question -> the answer" gives the answer. */
static void
speak_after_eos (GstMoshiDialog * self, State * state)
{
  GST_OBJECT_LOCK (self);
  guint tail_ms = self->settings.eos_tail_ms;
  GST_OBJECT_UNLOCK (self);
  guint64 frames = tail_frames (tail_ms, state->rate, state->frame_size);
  if (frames == 0 || state->in_kind == INPUT_NONE || !state->tl.have_base)
    return;
  GST_DEBUG_OBJECT (self, "speaking on for %" G_GUINT64_FORMAT " frames after EOS", frames);
  GstFlowReturn ret = feed_silence (self, state, frames * state->frame_size);
  if (ret != GST_FLOW_OK)
    GST_DEBUG_OBJECT (self, "the tail ended early: %s", gst_flow_get_name (ret));
}

/* Compares an input timestamp with where the stream is. A gap is filled with silence, an
 * overlap sets *skip to the samples to drop, a jump too far to fill restarts the timing
 * at pts (after draining). In token input the stream moves by whole frames. */
static GstFlowReturn
sync_input (GstMoshiDialog * self, State * state, GstClockTime pts, guint64 * skip)
{
  *skip = 0;
  if (!state->tl.have_base) {
    if (!GST_CLOCK_TIME_IS_VALID (pts))
      pts = state->tl.segment.format == GST_FORMAT_TIME
          && GST_CLOCK_TIME_IS_VALID (state->tl.segment.start) ?
          state->tl.segment.start : 0;
    state->tl.have_base = TRUE;
    state->tl.base_ts = pts;
    state->tl.samples_out = 0;
    state->tl.filled = 0;
    GST_DEBUG_OBJECT (self, "stream starts at %" GST_TIME_FORMAT,
        GST_TIME_ARGS (pts));
    return GST_FLOW_OK;
  }
  if (!GST_CLOCK_TIME_IS_VALID (pts))
    return GST_FLOW_OK;

  GstClockTime expected = out_time (state, state->tl.samples_out + state->tl.filled);
  GstClockTimeDiff diff = GST_CLOCK_DIFF (expected, pts);
  if (ABS (diff) <= (GstClockTimeDiff) TOLERANCE)
    return GST_FLOW_OK;

  if (ABS (diff) <= (GstClockTimeDiff) MAX_SILENCE_FILL) {
    guint64 n = gst_util_uint64_scale_round (ABS (diff), state->rate,
        GST_SECOND);
    if (state->in_kind == INPUT_CODES) {
      n = (n + state->frame_size / 2) / state->frame_size * state->frame_size;
      if (n == 0)
        return GST_FLOW_OK;
    }
    if (diff > 0) {
      GST_DEBUG_OBJECT (self, "input jumps %" GST_STIME_FORMAT " ahead: "
          "filling with silence", GST_STIME_ARGS (diff));
      return feed_silence (self, state, n);
    }
    GST_DEBUG_OBJECT (self, "input goes %" GST_STIME_FORMAT " back: dropping "
        "the overlap", GST_STIME_ARGS (-diff));
    *skip = n;
    return GST_FLOW_OK;
  }

  GST_INFO_OBJECT (self, "input jumps from %" GST_TIME_FORMAT " to %"
      GST_TIME_FORMAT ": resynchronising", GST_TIME_ARGS (expected),
      GST_TIME_ARGS (pts));
  GstFlowReturn ret = drain (self, state);
  state->tl.base_ts = pts;
  state->tl.samples_out = 0;
  state->tl.discont = TRUE;
  state->tl.text_discont = TRUE;
  return ret;
}

/* ------------------------------------------------------------------ input */

static GstFlowReturn
handle_pcm (GstMoshiDialog * self, State * state, GstBuffer * buffer)
{
  GstFlowReturn ret;
  GstMapInfo map;
  guint64 skip;
  gsize replaced = 0;

  ret = sync_input (self, state, GST_BUFFER_PTS (buffer), &skip);
  if (ret != GST_FLOW_OK)
    return ret;

  if (!gst_buffer_map (buffer, &map, GST_MAP_READ))
    goto map_failed;
  gsize bpf = state->in_format == GST_AUDIO_FORMAT_S16LE ? 2 : 4;
  gsize n = map.size / bpf;
  gsize offset = MIN (skip, n);

  while (offset < n && ret == GST_FLOW_OK) {
    gsize take = MIN (n - offset, (gsize) state->frame_size - state->tl.filled);
    replaced += gst_moshi_audio_to_float (state->in_format, map.data + offset * bpf,
        take, state->pcm + state->tl.filled);
    state->tl.filled += take;
    offset += take;
    if (state->tl.filled == (gsize) state->frame_size) {
      state->tl.filled = 0;
      ret = run_step (self, state, state->pcm, NULL, state->frame_size);
    }
  }
  gst_buffer_unmap (buffer, &map);

  if (G_UNLIKELY (replaced > 0)) {
    GST_DEBUG_OBJECT (self, "replaced %" G_GSIZE_FORMAT " non-finite samples "
        "by silence", replaced);
    if (!state->warned_non_finite) {
      GST_ELEMENT_WARNING (self, STREAM, FORMAT,
          ("Input audio contains non-finite samples (NaN or infinity)"),
          ("%" G_GSIZE_FORMAT " samples of the buffer at %" GST_TIME_FORMAT
              " replaced by silence; further occurrences are only logged",
              replaced, GST_TIME_ARGS (GST_BUFFER_PTS (buffer))));
      state->warned_non_finite = TRUE;
    }
  }
  return ret;

  /* ERRORS */
map_failed:
  {
    GST_ELEMENT_ERROR (self, RESOURCE, FAILED, (NULL),
        ("Could not map a buffer"));
    return GST_FLOW_ERROR;
  }
}

static GstFlowReturn
handle_codes (GstMoshiDialog * self, State * state, GstBuffer * buffer)
{
  GstFlowReturn ret;
  GstMapInfo map;
  guint64 skip;

  gsize frame_bytes = (gsize) state->in_codebooks * 2;
  gsize size = gst_buffer_get_size (buffer);
  if (size == 0 || size % frame_bytes != 0)
    goto bad_buffer;

  ret = sync_input (self, state, GST_BUFFER_PTS (buffer), &skip);
  if (ret != GST_FLOW_OK)
    return ret;

  gsize frames = size / frame_bytes;
  gsize first = MIN (skip / state->frame_size, frames);
  /* The padded last frame of a stream (mimienc marks it). */
  gsize last_valid = state->frame_size;
  GstAudioClippingMeta *clip = gst_buffer_get_audio_clipping_meta (buffer);
  if (clip != NULL && clip->format == GST_FORMAT_DEFAULT
      && clip->end < (guint64) state->frame_size)
    last_valid = state->frame_size - clip->end;

  if (!gst_buffer_map (buffer, &map, GST_MAP_READ))
    goto map_failed;
  if (gst_moshi_codes_find_invalid (map.data, frames * state->in_codebooks,
          state->codebook_size) >= 0) {
    gst_buffer_unmap (buffer, &map);
    goto bad_buffer;
  }
  ret = GST_FLOW_OK;
  for (gsize f = first; f < frames && ret == GST_FLOW_OK; f++) {
    gst_moshi_codes_unpack (state->codes, 1, map.data + f * frame_bytes,
        state->in_codebooks);
    ret = run_step (self, state, NULL, state->codes,
        f == frames - 1 ? last_valid : (gsize) state->frame_size);
  }
  gst_buffer_unmap (buffer, &map);
  return ret;

  /* ERRORS */
bad_buffer:
  {
    /* Dropped: the next buffer's timestamp makes up for its time with silence. */
    GST_DEBUG_OBJECT (self, "dropping a token buffer of %" G_GSIZE_FORMAT
        " bytes at %" GST_TIME_FORMAT, size,
        GST_TIME_ARGS (GST_BUFFER_PTS (buffer)));
    if (!state->warned_bad_tokens) {
      GST_ELEMENT_WARNING (self, STREAM, DECODE,
          ("Invalid Mimi token buffer dropped"),
          ("%" G_GSIZE_FORMAT " bytes at %" GST_TIME_FORMAT ": not a whole "
              "number of %d-codebook frames, or a code outside [0, %d); "
              "further occurrences are only logged", size,
              GST_TIME_ARGS (GST_BUFFER_PTS (buffer)), state->in_codebooks,
              state->codebook_size));
      state->warned_bad_tokens = TRUE;
    }
    return GST_FLOW_OK;
  }
map_failed:
  {
    GST_ELEMENT_ERROR (self, RESOURCE, FAILED, (NULL),
        ("Could not map a buffer"));
    return GST_FLOW_ERROR;
  }
}

/* ------------------------------------------------------------------ stalls of live input */

/* Tells the stall watcher where the stream is: after input (new_input), after a filled frame,
 * or that nothing is expected any more (expect FALSE). Called with the stream lock. */
static void
publish_position (GstMoshiDialog * self, State * state, gboolean new_input,
    gboolean expect)
{
  GstClockTime rt = GST_CLOCK_TIME_NONE, now = GST_CLOCK_TIME_NONE;
  if (expect && state != NULL && state->tl.have_base && state->in_kind != INPUT_NONE)
    rt = gst_segment_to_running_time (&state->tl.segment, GST_FORMAT_TIME,
        out_time (state, state->tl.samples_out + state->frame_size));
  GstClock *clock = gst_element_get_clock (GST_ELEMENT (self));
  if (clock != NULL) {
    now = gst_clock_get_time (clock);
    gst_object_unref (clock);
  }
  g_mutex_lock (&self->watch.lock);
  if (new_input)
    self->watch.input_serial++;
  self->watch.frame_end_rt = rt;
  self->watch.last_activity = now;
  self->watch.last_was_fill = !new_input;
  g_cond_signal (&self->watch.cond);
  g_mutex_unlock (&self->watch.lock);
}

/* Completes the frame being filled with silence and runs it, if still nothing came. */
static void
fill_stalled_frame (GstMoshiDialog * self, guint64 serial)
{
  /* Not a blocking lock: a state change joins this thread while the streaming thread may hold
   * the stream lock, blocked downstream (a sink prerolling) until that state change is over. */
  while (!GST_PAD_STREAM_TRYLOCK (self->sinkpad)) {
    g_mutex_lock (&self->watch.lock);
    gboolean stop = self->watch.stop || self->watch.input_serial != serial;
    g_mutex_unlock (&self->watch.lock);
    if (stop)
      return;
    g_usleep (1000);
  }
  g_mutex_lock (&self->watch.lock);
  gboolean still = self->watch.input_serial == serial && !self->watch.stop
      && GST_CLOCK_TIME_IS_VALID (self->watch.frame_end_rt);
  g_mutex_unlock (&self->watch.lock);
  State *state = self->state;
  if (still && state != NULL && state->tl.have_base && state->in_kind != INPUT_NONE
      && !GST_PAD_IS_FLUSHING (self->sinkpad)) {
    GST_DEBUG_OBJECT (self, "no input for a frame past its time: going on with silence");
    GstFlowReturn ret = feed_silence (self, state, state->frame_size - state->tl.filled);
    if (ret != GST_FLOW_OK)
      GST_DEBUG_OBJECT (self, "filling a stall: %s", gst_flow_get_name (ret));
    publish_position (self, state, FALSE, ret == GST_FLOW_OK);
  }
  GST_PAD_STREAM_UNLOCK (self->sinkpad);
}

static gpointer
stall_watcher (gpointer data)
{
  GstMoshiDialog *self = data;
  gboolean queried = FALSE, live = FALSE;
  GstClockTime upstream_latency = 0;

  g_mutex_lock (&self->watch.lock);
  while (!self->watch.stop) {
    if (!GST_CLOCK_TIME_IS_VALID (self->watch.frame_end_rt) || (queried && !live)) {
      g_cond_wait (&self->watch.cond, &self->watch.lock);
      continue;
    }
    if (!queried) {
      /* only a live source stalls: a file that is slow to read is not a silent caller */
      g_mutex_unlock (&self->watch.lock);
      GstQuery *query = gst_query_new_latency ();
      queried = gst_pad_peer_query (self->sinkpad, query);
      if (queried)
        gst_query_parse_latency (query, &live, &upstream_latency, NULL);
      gst_query_unref (query);
      g_mutex_lock (&self->watch.lock);
      GST_DEBUG_OBJECT (self, "input is %slive: %s stalls", live ? "" : "not ",
          live ? "filling" : "not filling");
      if (!queried)
        g_cond_wait_until (&self->watch.cond, &self->watch.lock,
            g_get_monotonic_time () + 100 * G_TIME_SPAN_MILLISECOND);
      continue;
    }
    GstClock *clock = gst_element_get_clock (GST_ELEMENT (self));
    if (clock == NULL) {
      g_cond_wait_until (&self->watch.cond, &self->watch.lock,
          g_get_monotonic_time () + 100 * G_TIME_SPAN_MILLISECOND);
      continue;
    }
    guint64 serial = self->watch.input_serial;
    /* A stall is both: the frame is a frame of grace past its due time (its last sample, plus
     * upstream's latency), and nothing has come for that long either. The second keeps a
     * conversation whose steps lag behind the clock (input queued upstream, on time but not
     * taken yet) from being filled over. After a filled frame, the next one a frame later. */
    GstClockTime deadline = gst_element_get_base_time (GST_ELEMENT (self))
        + self->watch.frame_end_rt + upstream_latency + self->watch.frame_duration;
    if (GST_CLOCK_TIME_IS_VALID (self->watch.last_activity))
      deadline = MAX (deadline, self->watch.last_activity
          + (self->watch.last_was_fill ? 1 : 2) * self->watch.frame_duration);
    GST_LOG_OBJECT (self, "waiting on %" GST_PTR_FORMAT " until %" GST_TIME_FORMAT
        " for the frame ending at running time %" GST_TIME_FORMAT, clock,
        GST_TIME_ARGS (deadline), GST_TIME_ARGS (self->watch.frame_end_rt));
    GstClockID id = gst_clock_new_single_shot_id (clock, deadline);
    self->watch.clock_id = id;
    g_mutex_unlock (&self->watch.lock);
    GstClockReturn ret = gst_clock_id_wait (id, NULL);
    GST_LOG_OBJECT (self, "clock wait: %d, at %" GST_TIME_FORMAT, ret,
        GST_TIME_ARGS (gst_clock_get_time (clock)));
    gst_object_unref (clock);
    g_mutex_lock (&self->watch.lock);
    self->watch.clock_id = NULL;
    gst_clock_id_unref (id);
    if (self->watch.stop || ret == GST_CLOCK_UNSCHEDULED || self->watch.input_serial != serial)
      continue;
    g_mutex_unlock (&self->watch.lock);
    fill_stalled_frame (self, serial);
    g_mutex_lock (&self->watch.lock);
  }
  g_mutex_unlock (&self->watch.lock);
  return NULL;
}

/* Tells the watcher to stop, without waiting for it: it may be pushing a frame that a
 * prerolling sink holds until the pads are deactivated (PAUSED to READY). */
static void
request_watcher_stop (GstMoshiDialog * self)
{
  g_mutex_lock (&self->watch.lock);
  self->watch.stop = TRUE;
  if (self->watch.clock_id != NULL)
    gst_clock_id_unschedule (self->watch.clock_id);
  g_cond_signal (&self->watch.cond);
  g_mutex_unlock (&self->watch.lock);
}

static void
stop_watcher (GstMoshiDialog * self)
{
  if (self->watch.thread == NULL)
    return;
  request_watcher_stop (self);
  g_thread_join (self->watch.thread);
  self->watch.thread = NULL;
}

static void
start_watcher (GstMoshiDialog * self)
{
  /* one told to stop at the last PLAYING to PAUSED: the sinks are PLAYING again, so whatever
   * it was pushing has gone through */
  stop_watcher (self);
  GST_OBJECT_LOCK (self);
  gboolean enabled = self->settings.fill_stalls;
  GST_OBJECT_UNLOCK (self);
  if (!enabled)
    return;
  g_mutex_lock (&self->watch.lock);
  self->watch.stop = FALSE;
  self->watch.frame_duration = gst_util_uint64_scale_int (GST_SECOND,
      moshi_dialog_model_frame_size (self->models.model),
      moshi_dialog_model_sample_rate (self->models.model));
  g_mutex_unlock (&self->watch.lock);
  self->watch.thread = g_thread_new ("moshidialog-stalls", stall_watcher, self);
}

/* At the end of a stream (the watcher joined): nothing of its position may reach the next
 * stream's watcher. */
static void
forget_position (GstMoshiDialog * self)
{
  g_mutex_lock (&self->watch.lock);
  self->watch.frame_end_rt = GST_CLOCK_TIME_NONE;
  self->watch.last_activity = GST_CLOCK_TIME_NONE;
  self->watch.last_was_fill = FALSE;
  g_mutex_unlock (&self->watch.lock);
}

static GstFlowReturn
gst_moshi_dialog_chain (GstPad * pad, GstObject * parent, GstBuffer * buffer)
{
  GstMoshiDialog *self = GST_MOSHI_DIALOG (parent);
  State *state = self->state;
  GstFlowReturn ret;

  if (G_UNLIKELY (state == NULL)) {
    gst_buffer_unref (buffer);
    return GST_FLOW_FLUSHING;
  }
  if (G_UNLIKELY (state->in_kind == INPUT_NONE))
    goto not_negotiated;

  GST_LOG_OBJECT (self, "%" GST_PTR_FORMAT, buffer);
  if (state->in_kind == INPUT_PCM)
    ret = handle_pcm (self, state, buffer);
  else
    ret = handle_codes (self, state, buffer);
  gst_buffer_unref (buffer);
  publish_position (self, state, TRUE, ret == GST_FLOW_OK);
  return ret;

  /* ERRORS */
not_negotiated:
  {
    GST_ELEMENT_ERROR (self, CORE, NEGOTIATION, (NULL),
        ("data before caps"));
    gst_buffer_unref (buffer);
    return GST_FLOW_NOT_NEGOTIATED;
  }
}

/* ------------------------------------------------------------------ events */

static void
push_event_both (GstMoshiDialog * self, GstEvent * event)
{
  gst_pad_push_event (self->srcpad, gst_event_ref (event));
  gst_pad_push_event (self->textpad, event);
}

static void
push_stream_start (GstMoshiDialog * self, State * state, GstEvent * upstream)
{
  const gchar *upstream_id = NULL;
  guint group;
  gboolean have_group = FALSE;

  if (upstream != NULL) {
    gst_event_parse_stream_start (upstream, &upstream_id);
    have_group = gst_event_parse_group_id (upstream, &group);
  }

  /* "<upstream id>/audio" and "/text", in one group: ccextractor's scheme. */
  for (gint i = 0; i < 2; i++) {
    GstPad *pad = i == 0 ? self->srcpad : self->textpad;
    const gchar *suffix = i == 0 ? "audio" : "text";
    gchar *id = upstream_id != NULL ? g_strconcat (upstream_id, "/", suffix,
        NULL) : gst_pad_create_stream_id (pad, GST_ELEMENT (self), suffix);
    GstEvent *event = gst_event_new_stream_start (id);
    g_free (id);
    if (have_group)
      gst_event_set_group_id (event, group);
    if (pad == self->textpad)
      gst_event_set_stream_flags (event, GST_STREAM_FLAG_SPARSE);
    if (upstream != NULL)
      gst_event_set_seqnum (event, gst_event_get_seqnum (upstream));
    gst_pad_push_event (pad, event);
  }

  GstCaps *text_caps = gst_caps_from_string (TEXT_CAPS);
  gst_pad_push_event (self->textpad, gst_event_new_caps (text_caps));
  gst_caps_unref (text_caps);
  if (state != NULL)
    state->have_stream_start = TRUE;
}

static gboolean
gst_moshi_dialog_sink_event (GstPad * pad, GstObject * parent,
    GstEvent * event)
{
  GstMoshiDialog *self = GST_MOSHI_DIALOG (parent);
  /* serialized events come with the stream lock, flush-start (which touches no state)
   * without */
  State *state = self->state;
  gboolean res = TRUE;

  GST_DEBUG_OBJECT (self, "%" GST_PTR_FORMAT, event);

  switch (GST_EVENT_TYPE (event)) {
    case GST_EVENT_STREAM_START:
      push_stream_start (self, state, event);
      gst_event_unref (event);
      break;
    case GST_EVENT_CAPS:{
      GstCaps *caps;
      gst_event_parse_caps (event, &caps);
      if (state == NULL) {
        res = FALSE;
      } else {
        InputKind old = state->in_kind;
        GstCaps *current = gst_pad_get_current_caps (pad);
        /* Samples of the old format still waiting belong to the old stream. */
        if (state->tl.filled > 0 && current != NULL
            && !gst_caps_is_equal (current, caps))
          drain (self, state);
        gst_clear_caps (&current);
        res = set_input_caps (self, state, caps);
        if (res && !state->have_stream_start)
          push_stream_start (self, state, NULL);
        if (res && (old == INPUT_NONE
                || !gst_pad_has_current_caps (self->srcpad)))
          res = negotiate_src (self, state);
      }
      gst_event_unref (event);
      break;
    }
    case GST_EVENT_SEGMENT:{
      GstSegment segment;
      gst_event_copy_segment (event, &segment);
      if (segment.format != GST_FORMAT_TIME) {
        GST_INFO_OBJECT (self, "%s segment: timestamps start at 0",
            gst_format_get_name (segment.format));
        gst_segment_init (&segment, GST_FORMAT_TIME);
        guint32 seqnum = gst_event_get_seqnum (event);
        gst_event_unref (event);
        event = gst_event_new_segment (&segment);
        gst_event_set_seqnum (event, seqnum);
      }
      gint64 stop = segment.stop;
      extend_stop_for_tail (self, segment.rate, &stop);
      if ((guint64) stop != segment.stop) {
        segment.stop = stop;
        guint32 seqnum = gst_event_get_seqnum (event);
        gst_event_unref (event);
        event = gst_event_new_segment (&segment);
        gst_event_set_seqnum (event, seqnum);
      }
      if (state != NULL) {
        /* A new timeline: what waits belongs to the old one. */
        if (state->tl.have_base) {
          drain (self, state);
          state->tl.have_base = FALSE;
          state->tl.discont = state->tl.text_discont = TRUE;
        }
        state->tl.segment = segment;
      }
      push_event_both (self, event);
      break;
    }
    case GST_EVENT_GAP:{
      GstClockTime ts, duration;
      gst_event_parse_gap (event, &ts, &duration);
      if (state != NULL && state->in_kind != INPUT_NONE
          && GST_CLOCK_TIME_IS_VALID (ts)
          && GST_CLOCK_TIME_IS_VALID (duration)) {
        /* The conversation goes on through the gap: the user is silent. */
        guint64 skip;
        GstFlowReturn ret = sync_input (self, state, ts, &skip);
        if (ret == GST_FLOW_OK) {
          GstClockTime end = ts + duration;
          GstClockTime now = out_time (state, state->tl.samples_out + state->tl.filled);
          if (end > now) {
            guint64 n = gst_util_uint64_scale_round (end - now, state->rate,
                GST_SECOND);
            if (state->in_kind == INPUT_CODES)
              n = (n + state->frame_size / 2) / state->frame_size *
                  state->frame_size;
            ret = feed_silence (self, state, n);
          }
        }
        publish_position (self, state, TRUE, ret == GST_FLOW_OK);
        res = ret == GST_FLOW_OK;
      } else {
        GST_DEBUG_OBJECT (self, "ignoring a gap without time or before caps");
      }
      gst_event_unref (event);
      break;
    }
    case GST_EVENT_EOS:
      publish_position (self, state, FALSE, FALSE);
      if (state != NULL) {
        drain (self, state);
        speak_after_eos (self, state);
      }
      push_event_both (self, event);
      break;
    case GST_EVENT_FLUSH_START:
      push_event_both (self, event);
      break;
    case GST_EVENT_FLUSH_STOP:
      publish_position (self, state, FALSE, FALSE);
      if (state != NULL)
        state_reset (self, state);
      push_event_both (self, event);
      break;
    case GST_EVENT_TAG:
      /* Tags describe the user's audio, not what comes out. */
      gst_event_unref (event);
      break;
    default:
      res = gst_pad_event_default (pad, parent, event);
      break;
  }
  return res;
}

static gboolean
gst_moshi_dialog_src_event (GstPad * pad, GstObject * parent, GstEvent * event)
{
  GstMoshiDialog *self = GST_MOSHI_DIALOG (parent);

  switch (GST_EVENT_TYPE (event)) {
    case GST_EVENT_SEEK:{
      /* The audio and the text sink both send the application's seek. */
      guint32 seqnum = gst_event_get_seqnum (event);
      GST_OBJECT_LOCK (self);
      gboolean seen = seqnum == self->published.last_seek_seqnum;
      self->published.last_seek_seqnum = seqnum;
      GST_OBJECT_UNLOCK (self);
      if (seen) {
        GST_DEBUG_OBJECT (pad, "seek %u already forwarded", seqnum);
        gst_event_unref (event);
        return TRUE;
      }
      break;
    }
    case GST_EVENT_QOS:
    case GST_EVENT_RECONFIGURE:
      /* The text stream's timing and format are none of upstream's business. */
      if (pad == self->textpad) {
        gst_event_unref (event);
        return TRUE;
      }
      break;
    default:
      break;
  }
  return gst_pad_push_event (self->sinkpad, event);
}

/* ------------------------------------------------------------------ queries */

static gboolean
answer_caps_query (GstMoshiDialog * self, GstPad * pad, GstQuery * query)
{
  GstCaps *filter, *caps = pad_caps (self, pad);

  gst_query_parse_caps (query, &filter);
  if (filter != NULL) {
    GstCaps *tmp = gst_caps_intersect_full (filter, caps,
        GST_CAPS_INTERSECT_FIRST);
    gst_caps_unref (caps);
    caps = tmp;
  }
  gst_query_set_caps_result (query, caps);
  gst_caps_unref (caps);
  return TRUE;
}

static gboolean
gst_moshi_dialog_sink_query (GstPad * pad, GstObject * parent,
    GstQuery * query)
{
  GstMoshiDialog *self = GST_MOSHI_DIALOG (parent);

  switch (GST_QUERY_TYPE (query)) {
    case GST_QUERY_CAPS:
      return answer_caps_query (self, pad, query);
    case GST_QUERY_ACCEPT_CAPS:{
      gboolean res = gst_pad_query_default (pad, parent, query);
      gboolean accepted;
      GstCaps *caps;
      gst_query_parse_accept_caps_result (query, &accepted);
      if (res && !accepted) {
        gst_query_parse_accept_caps (query, &caps);
        gst_moshi_log_refused_caps (GST_ELEMENT (self), GST_CAT_DEFAULT, pad,
            caps, "moshidialog takes 24000 Hz mono F32LE or S16LE audio (put "
            "audioconvert ! audioresample in front of it) or Mimi tokens");
      }
      return res;
    }
    case GST_QUERY_ALLOCATION:
      /* The outputs have other formats than the input: nothing to propose. */
      return FALSE;
    default:
      return gst_pad_query_default (pad, parent, query);
  }
}

static gboolean
gst_moshi_dialog_src_query (GstPad * pad, GstObject * parent, GstQuery * query)
{
  GstMoshiDialog *self = GST_MOSHI_DIALOG (parent);

  switch (GST_QUERY_TYPE (query)) {
    case GST_QUERY_CAPS:
      return answer_caps_query (self, pad, query);
    case GST_QUERY_LATENCY:{
      gboolean live;
      GstClockTime min, max;

      if (!gst_pad_peer_query (self->sinkpad, query))
        return FALSE;
      GST_OBJECT_LOCK (self);
      GstClockTime ours = self->published.models.latency;
      /* a frame may wait that long for the other conversations of its tick */
      if (GST_CLOCK_TIME_IS_VALID (ours))
        ours += self->published.batch_wait;
      GST_OBJECT_UNLOCK (self);
      if (!GST_CLOCK_TIME_IS_VALID (ours))
        return FALSE;
      gst_query_parse_latency (query, &live, &min, &max);
      GST_DEBUG_OBJECT (pad, "upstream latency %" GST_TIME_FORMAT " - %"
          GST_TIME_FORMAT " (live %d), ours %" GST_TIME_FORMAT,
          GST_TIME_ARGS (min), GST_TIME_ARGS (max), live, GST_TIME_ARGS (ours));
      min += ours;
      if (GST_CLOCK_TIME_IS_VALID (max))
        max += ours;
      gst_query_set_latency (query, live, min, max);
      return TRUE;
    }
    case GST_QUERY_SEGMENT:{
      if (!gst_pad_peer_query (self->sinkpad, query))
        return FALSE;
      GstFormat format;
      gdouble rate;
      gint64 start, stop;
      gst_query_parse_segment (query, &rate, &format, &start, &stop);
      if (format == GST_FORMAT_TIME) {
        extend_stop_for_tail (self, rate, &stop);
        gst_query_set_segment (query, rate, format, start, stop);
      }
      return TRUE;
    }
    default:
      return gst_pad_query_default (pad, parent, query);
  }
}

/* ------------------------------------------------------------------ states */

static GstStateChangeReturn
gst_moshi_dialog_change_state (GstElement * element, GstStateChange transition)
{
  GstMoshiDialog *self = GST_MOSHI_DIALOG (element);
  GstStateChangeReturn ret;

  switch (transition) {
    case GST_STATE_CHANGE_NULL_TO_READY:
    case GST_STATE_CHANGE_READY_TO_PAUSED:{
      /* One copy of the settings for the whole transition, so that the conversation starts
       * on the models it names whatever the application sets meanwhile. The model properties
       * may have changed while in READY. The pads are not active yet: no data can arrive
       * before the conversation exists. */
      Settings settings;
      settings_snapshot (self, &settings);
      gboolean ok = ensure_models (self, &settings.models)
          && (transition != GST_STATE_CHANGE_READY_TO_PAUSED
          || start_stream (self, &settings));
      settings_clear (&settings);
      if (!ok)
        return GST_STATE_CHANGE_FAILURE;
      break;
    }
    case GST_STATE_CHANGE_PLAYING_TO_PAUSED:
      /* no filling while paused: the clock stops */
      request_watcher_stop (self);
      break;
    default:
      break;
  }

  ret = GST_ELEMENT_CLASS (parent_class)->change_state (element, transition);
  if (ret == GST_STATE_CHANGE_FAILURE) {
    if (transition == GST_STATE_CHANGE_READY_TO_PAUSED)
      stop_stream (self);
    return ret;
  }

  switch (transition) {
    case GST_STATE_CHANGE_PAUSED_TO_PLAYING:
      start_watcher (self);
      break;
    case GST_STATE_CHANGE_PAUSED_TO_READY:
      /* The pads are inactive: the streaming thread has left the element, and a push of the
       * watcher's has returned. */
      stop_watcher (self);
      forget_position (self);
      stop_stream (self);
      break;
    case GST_STATE_CHANGE_READY_TO_NULL:
      close_models (self);
      break;
    default:
      break;
  }
  return ret;
}

/* ------------------------------------------------------------------ properties */

static void
gst_moshi_dialog_set_property (GObject * object, guint prop_id,
    const GValue * value, GParamSpec * pspec)
{
  GstMoshiDialog *self = GST_MOSHI_DIALOG (object);

  GST_OBJECT_LOCK (self);
  switch (prop_id) {
    case PROP_MODEL:
      gst_moshi_set_optional_string (&self->settings.models.model, value);
      break;
    case PROP_LM_CONFIG:
      gst_moshi_set_optional_string (&self->settings.models.lm_config, value);
      break;
    case PROP_MIMI_MODEL:
      gst_moshi_set_optional_string (&self->settings.models.mimi_model, value);
      break;
    case PROP_MIMI_CONFIG:
      gst_moshi_set_optional_string (&self->settings.models.mimi_config, value);
      break;
    case PROP_TOKENIZER:
      gst_moshi_set_optional_string (&self->settings.models.tokenizer, value);
      break;
    case PROP_DEVICE:
      self->settings.models.device = g_value_get_enum (value);
      break;
    case PROP_KV_CACHE:
      self->settings.models.kv_cache = g_value_get_enum (value);
      break;
    case PROP_WEIGHTS:
      self->settings.models.weights = g_value_get_enum (value);
      break;
    case PROP_THREADS:
      self->settings.threads = g_value_get_int (value);
      break;
    case PROP_TEXT_TEMPERATURE:
      self->settings.sampling.text_temperature = g_value_get_float (value);
      self->settings.sampling_serial++;
      break;
    case PROP_TEXT_TOPK:
      self->settings.sampling.text_topk = g_value_get_int (value);
      self->settings.sampling_serial++;
      break;
    case PROP_AUDIO_TEMPERATURE:
      self->settings.sampling.audio_temperature = g_value_get_float (value);
      self->settings.sampling_serial++;
      break;
    case PROP_AUDIO_TOPK:
      self->settings.sampling.audio_topk = g_value_get_int (value);
      self->settings.sampling_serial++;
      break;
    case PROP_SEED:
      self->settings.sampling.seed = g_value_get_uint64 (value);
      self->settings.sampling_serial++;
      break;
    case PROP_SHARED_SCHEDULER:
      self->settings.shared_scheduler = g_value_get_boolean (value);
      break;
    case PROP_MAX_CONVERSATIONS:
      self->settings.max_conversations = g_value_get_uint (value);
      break;
    case PROP_BATCH_WAIT:
      self->settings.batch_wait_ms = g_value_get_int (value);
      break;
    case PROP_EOS_TAIL:
      self->settings.eos_tail_ms = g_value_get_uint (value);
      break;
    case PROP_FILL_STALLS:
      self->settings.fill_stalls = g_value_get_boolean (value);
      break;
    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
      break;
  }
  GST_OBJECT_UNLOCK (self);
}

static void
gst_moshi_dialog_get_property (GObject * object, guint prop_id, GValue * value,
    GParamSpec * pspec)
{
  GstMoshiDialog *self = GST_MOSHI_DIALOG (object);

  /* The figures of the running conversation's scheduler, read outside the object lock: they
   * take the scheduler's own. */
  if (prop_id == PROP_SCHEDULER_STATS || prop_id == PROP_MAX_OBSERVED_DELAY) {
    GstStructure *st = scheduler_stats (self);
    if (prop_id == PROP_SCHEDULER_STATS) {
      g_value_take_boxed (value, st);
      return;
    }
    gdouble ms = 0;
    if (st != NULL) {
      gst_structure_get_double (st, "max-observed-delay-ms", &ms);
      gst_structure_free (st);
    }
    g_value_set_uint (value, (guint) ceil (ms));
    return;
  }

  GST_OBJECT_LOCK (self);
  switch (prop_id) {
    case PROP_MODEL:
      g_value_set_string (value, self->settings.models.model);
      break;
    case PROP_LM_CONFIG:
      g_value_set_string (value, self->settings.models.lm_config);
      break;
    case PROP_MIMI_MODEL:
      g_value_set_string (value, self->settings.models.mimi_model);
      break;
    case PROP_MIMI_CONFIG:
      g_value_set_string (value, self->settings.models.mimi_config);
      break;
    case PROP_TOKENIZER:
      g_value_set_string (value, self->settings.models.tokenizer);
      break;
    case PROP_DEVICE:
      g_value_set_enum (value, self->settings.models.device);
      break;
    case PROP_KV_CACHE:
      g_value_set_enum (value, self->settings.models.kv_cache);
      break;
    case PROP_WEIGHTS:
      g_value_set_enum (value, self->settings.models.weights);
      break;
    case PROP_THREADS:
      g_value_set_int (value, self->settings.threads);
      break;
    case PROP_TEXT_TEMPERATURE:
      g_value_set_float (value, self->settings.sampling.text_temperature);
      break;
    case PROP_TEXT_TOPK:
      g_value_set_int (value, self->settings.sampling.text_topk);
      break;
    case PROP_AUDIO_TEMPERATURE:
      g_value_set_float (value, self->settings.sampling.audio_temperature);
      break;
    case PROP_AUDIO_TOPK:
      g_value_set_int (value, self->settings.sampling.audio_topk);
      break;
    case PROP_SEED:
      g_value_set_uint64 (value, self->settings.sampling.seed);
      break;
    case PROP_SHARED_SCHEDULER:
      g_value_set_boolean (value, self->settings.shared_scheduler);
      break;
    case PROP_MAX_CONVERSATIONS:
      g_value_set_uint (value, self->settings.max_conversations);
      break;
    case PROP_BATCH_WAIT:
      g_value_set_int (value, self->settings.batch_wait_ms);
      break;
    case PROP_EOS_TAIL:
      g_value_set_uint (value, self->settings.eos_tail_ms);
      break;
    case PROP_FILL_STALLS:
      g_value_set_boolean (value, self->settings.fill_stalls);
      break;
    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
      break;
  }
  GST_OBJECT_UNLOCK (self);
}

static void
gst_moshi_dialog_finalize (GObject * object)
{
  GstMoshiDialog *self = GST_MOSHI_DIALOG (object);

  /* Normally done by the state changes; an element finalized in READY still holds
   * its models. */
  stop_watcher (self);
  stop_stream (self);
  close_models (self);
  settings_clear (&self->settings);
  g_mutex_clear (&self->watch.lock);
  g_cond_clear (&self->watch.cond);
  G_OBJECT_CLASS (parent_class)->finalize (object);
}

static void
gst_moshi_dialog_class_init (GstMoshiDialogClass * klass)
{
  GObjectClass *gobject_class = G_OBJECT_CLASS (klass);
  GstElementClass *element_class = GST_ELEMENT_CLASS (klass);
  const GParamFlags model_flags = G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS |
      GST_PARAM_MUTABLE_READY;
  const GParamFlags live_flags = G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS |
      GST_PARAM_MUTABLE_PLAYING;

  GST_DEBUG_CATEGORY_INIT (gst_moshi_dialog_debug, "moshidialog", 0,
      "Moshi spoken dialogue");

  gobject_class->set_property = gst_moshi_dialog_set_property;
  gobject_class->get_property = gst_moshi_dialog_get_property;
  gobject_class->finalize = gst_moshi_dialog_finalize;

  g_object_class_install_property (gobject_class, PROP_MODEL,
      g_param_spec_string ("model", "Model",
          "Moshi LM weights: a safetensors file, a directory holding "
          LM_HUB_FILENAME ", or a Hugging Face repo id (owner/name[@revision]"
          "[:file], e.g. kyutai/moshiko-pytorch-bf16), from the local hub "
          "cache or downloaded into it (progress messages; HF_HUB_OFFLINE=1: "
          "the cache only)", NULL, model_flags));
  g_object_class_install_property (gobject_class, PROP_LM_CONFIG,
      g_param_spec_string ("lm-config", "LM configuration",
          "LM configuration JSON in the upstream layout, for models other "
          "than the released Moshi 7B (NULL = Moshi 7B)", NULL, model_flags));
  g_object_class_install_property (gobject_class, PROP_MIMI_MODEL,
      g_param_spec_string ("mimi-model", "Mimi model",
          "Mimi weights: a safetensors file, a directory holding "
          MOSHI_HUB_MIMI_FILENAME ", or a Hugging Face repo id (NULL = the "
          "repository or directory \"model\" names)", NULL, model_flags));
  g_object_class_install_property (gobject_class, PROP_MIMI_CONFIG,
      g_param_spec_string ("mimi-config", "Mimi configuration",
          "Mimi configuration JSON in the upstream mimi_config layout, for "
          "models other than the released one (NULL = released Mimi)", NULL,
          model_flags));
  g_object_class_install_property (gobject_class, PROP_TOKENIZER,
      g_param_spec_string ("tokenizer", "Text tokenizer",
          "SentencePiece model of the LM's text tokens: a .model file, a "
          "directory holding " TOKENIZER_HUB_FILENAME ", or a Hugging Face "
          "repo id (NULL = no text output)", NULL, model_flags));
  g_object_class_install_property (gobject_class, PROP_DEVICE,
      g_param_spec_enum ("device", "Device", "Where the networks run",
          GST_TYPE_MOSHI_DEVICE, GST_MOSHI_DEFAULT_DEVICE, model_flags));
  g_object_class_install_property (gobject_class, PROP_THREADS,
      g_param_spec_int ("threads", "Threads",
          "CPU threads used by this element's conversation (0 = automatic; "
          "on the shared scheduler, 1 lets the Mimi frames of many "
          "conversations run in parallel, one per core)",
          0, GST_MOSHI_MAX_THREADS, GST_MOSHI_DEFAULT_THREADS, model_flags));
  g_object_class_install_property (gobject_class, PROP_TEXT_TEMPERATURE,
      g_param_spec_float ("text-temperature", "Text temperature",
          "Sampling temperature of the text tokens (0 = greedy)",
          0.0f, MAX_TEMPERATURE, DEFAULT_TEXT_TEMPERATURE, live_flags));
  g_object_class_install_property (gobject_class, PROP_TEXT_TOPK,
      g_param_spec_int ("text-topk", "Text top-k",
          "Sample text tokens among the k most likely (0 = all)",
          0, G_MAXINT, DEFAULT_TEXT_TOPK, live_flags));
  g_object_class_install_property (gobject_class, PROP_AUDIO_TEMPERATURE,
      g_param_spec_float ("audio-temperature", "Audio temperature",
          "Sampling temperature of the audio tokens (0 = greedy)",
          0.0f, MAX_TEMPERATURE, DEFAULT_AUDIO_TEMPERATURE, live_flags));
  g_object_class_install_property (gobject_class, PROP_AUDIO_TOPK,
      g_param_spec_int ("audio-topk", "Audio top-k",
          "Sample audio tokens among the k most likely (0 = all)",
          0, G_MAXINT, DEFAULT_AUDIO_TOPK, live_flags));
  g_object_class_install_property (gobject_class, PROP_SEED,
      g_param_spec_uint64 ("seed", "Seed",
          "Seed of the sampling random generator; a conversation restarts "
          "from it at every stream start and flush",
          0, G_MAXUINT64, DEFAULT_SEED, live_flags));
  g_object_class_install_property (gobject_class, PROP_KV_CACHE,
      g_param_spec_enum ("kv-cache", "KV cache",
          "Element type of the LM's attention caches, the largest memory of a "
          "conversation (Moshi 7B: 3.15 GB in f32, 1.57 GB in bf16, 0.80 GB "
          "in fp8)",
          GST_TYPE_MOSHI_KV_CACHE, MOSHI_LM_KV_DEFAULT, model_flags));
  g_object_class_install_property (gobject_class, PROP_WEIGHTS,
      g_param_spec_enum ("weights", "Weights",
          "The LM's linear layers as the checkpoint stores them, or quantized "
          "at load to weight-only int8 with a scale per output feature (half "
          "the memory and bytes read per step of BF16: Moshi 7B fits a 16 GB "
          "GPU)", GST_TYPE_MOSHI_WEIGHTS, MOSHI_LM_WEIGHTS_AS_STORED,
          model_flags));
  g_object_class_install_property (gobject_class, PROP_SHARED_SCHEDULER,
      g_param_spec_boolean ("shared-scheduler", "Shared scheduler",
          "Step this conversation together with the other conversations of "
          "the process on the same model: one batched model step per 80 ms "
          "for all of them, the weights read once (FALSE = a conversation of "
          "its own, stepped alone)", DEFAULT_SHARED_SCHEDULER, model_flags));
  g_object_class_install_property (gobject_class, PROP_MAX_CONVERSATIONS,
      g_param_spec_uint ("max-conversations", "Maximum conversations",
          "Conversations the shared scheduler takes at most; set by the "
          "element that starts it (the first of the process on this model). "
          "An element past the limit fails to start with a RESOURCE BUSY "
          "error", 1, MOSHI_SCHEDULER_MAX_CONVERSATIONS,
          DEFAULT_MAX_CONVERSATIONS, model_flags));
  g_object_class_install_property (gobject_class, PROP_BATCH_WAIT,
      g_param_spec_int ("batch-wait", "Batch wait",
          "How long a frame may wait for the other conversations of the "
          "shared scheduler before their step runs without the late ones, in "
          "milliseconds (-1 = one frame, 80 ms). Adds to the latency",
          -1, 10000, DEFAULT_BATCH_WAIT, model_flags));
  g_object_class_install_property (gobject_class, PROP_EOS_TAIL,
      g_param_spec_uint ("eos-tail", "EOS tail",
          "After the end of the input, go on for this long (ms, whole frames) "
          "on silence before ending the stream, so that the model can finish "
          "its answer (0 = end with the input)", 0, 600000, DEFAULT_EOS_TAIL,
          live_flags));
  g_object_class_install_property (gobject_class, PROP_FILL_STALLS,
      g_param_spec_boolean ("fill-stalls", "Fill stalls",
          "With live input: when no input has come for a frame past its time "
          "on the pipeline clock (an RTP gap, silence suppression), go on "
          "with silence, so that the model keeps talking and its output "
          "stays paced; late input is then dropped", DEFAULT_FILL_STALLS,
          model_flags));
  g_object_class_install_property (gobject_class, PROP_SCHEDULER_STATS,
      g_param_spec_boxed ("scheduler-stats", "Scheduler statistics",
          "The shared scheduler's figures: conversations, ticks, tick time "
          "(tick-ms-p50, tick-ms-p99, tick-ms-max), deadline-misses (ticks "
          "longer than a frame), late-frames, max-observed-delay-ms; NULL "
          "without a shared scheduler. Also posted once a second of output "
          "as the element message \"" SCHEDULER_MESSAGE_NAME "\"",
          GST_TYPE_STRUCTURE, G_PARAM_READABLE | G_PARAM_STATIC_STRINGS));
  g_object_class_install_property (gobject_class, PROP_MAX_OBSERVED_DELAY,
      g_param_spec_uint ("max-observed-delay", "Maximum observed delay",
          "The longest a frame of the shared scheduler has taken from its "
          "arrival to its result, in milliseconds", 0, G_MAXUINT, 0,
          G_PARAM_READABLE | G_PARAM_STATIC_STRINGS));

  gst_element_class_add_static_pad_template (element_class, &sink_template);
  gst_element_class_add_static_pad_template (element_class, &src_template);
  gst_element_class_add_static_pad_template (element_class,
      &text_src_template);
  gst_element_class_set_static_metadata (element_class,
      "Moshi spoken dialogue", "Converter/Audio/Text",
      "Talks with the user: Kyutai's Moshi speech-to-speech model, the user's "
      "voice in, the model's voice and words out", "gst-moshi developers");
  gst_element_class_add_static_metadata (element_class, GST_ELEMENT_METADATA_DOC_URI,
      GST_MOSHI_DOC_URI ("moshidialog"));

  element_class->change_state =
      GST_DEBUG_FUNCPTR (gst_moshi_dialog_change_state);
  gst_type_mark_as_plugin_api (GST_TYPE_MOSHI_KV_CACHE, 0);
  gst_type_mark_as_plugin_api (GST_TYPE_MOSHI_WEIGHTS, 0);
}

static void
gst_moshi_dialog_init (GstMoshiDialog * self)
{
  self->sinkpad = gst_pad_new_from_static_template (&sink_template, "sink");
  gst_pad_set_chain_function (self->sinkpad,
      GST_DEBUG_FUNCPTR (gst_moshi_dialog_chain));
  gst_pad_set_event_function (self->sinkpad,
      GST_DEBUG_FUNCPTR (gst_moshi_dialog_sink_event));
  gst_pad_set_query_function (self->sinkpad,
      GST_DEBUG_FUNCPTR (gst_moshi_dialog_sink_query));
  GST_PAD_SET_ACCEPT_TEMPLATE (self->sinkpad);
  gst_element_add_pad (GST_ELEMENT (self), self->sinkpad);

  self->srcpad = gst_pad_new_from_static_template (&src_template, "src");
  gst_pad_set_event_function (self->srcpad,
      GST_DEBUG_FUNCPTR (gst_moshi_dialog_src_event));
  gst_pad_set_query_function (self->srcpad,
      GST_DEBUG_FUNCPTR (gst_moshi_dialog_src_query));
  gst_element_add_pad (GST_ELEMENT (self), self->srcpad);

  self->textpad = gst_pad_new_from_static_template (&text_src_template,
      "text_src");
  gst_pad_set_event_function (self->textpad,
      GST_DEBUG_FUNCPTR (gst_moshi_dialog_src_event));
  gst_pad_set_query_function (self->textpad,
      GST_DEBUG_FUNCPTR (gst_moshi_dialog_src_query));
  gst_pad_use_fixed_caps (self->textpad);
  gst_element_add_pad (GST_ELEMENT (self), self->textpad);

  settings_init (&self->settings);
  self->published.models.latency = GST_CLOCK_TIME_NONE;
  self->published.last_seek_seqnum = GST_SEQNUM_INVALID;
  self->models.mimi.device = GST_MOSHI_DEFAULT_DEVICE;
  g_mutex_init (&self->watch.lock);
  g_cond_init (&self->watch.cond);
  self->watch.frame_end_rt = GST_CLOCK_TIME_NONE;
  self->watch.last_activity = GST_CLOCK_TIME_NONE;
}
