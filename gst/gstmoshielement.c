/* gst-moshi: one-time plugin setup and the code the elements share. */
#include "gstmoshielements.h"

#include <math.h>
#include <string.h>

#include <moshi/moshi-error.h>
#include <moshi/moshi-hub.h>

#include "gstmoshihub.h"

GST_DEBUG_CATEGORY (gst_moshi_debug);
#define GST_CAT_DEFAULT gst_moshi_debug

/* The rate and layout the raw-audio pad templates advertise; models for anything else
 * cannot be used by these elements. */
#define MIMI_TEMPLATE_RATE 24000

static GstDebugLevel
debug_level_from_log_level (GLogLevelFlags level)
{
  if (level & (G_LOG_LEVEL_ERROR | G_LOG_LEVEL_CRITICAL))
    return GST_LEVEL_ERROR;
  if (level & G_LOG_LEVEL_WARNING)
    return GST_LEVEL_WARNING;
  if (level & (G_LOG_LEVEL_MESSAGE | G_LOG_LEVEL_INFO))
    return GST_LEVEL_INFO;
  return GST_LEVEL_DEBUG;
}

/* Routes g_log() calls of the library's domain into the "moshi" category, so that
 * GST_DEBUG=moshi:5 shows them next to the elements' messages. Only the classic g_log() path
 * goes through handlers: calls made through the structured logging API (the library is
 * built with G_LOG_USE_STRUCTURED) go straight to GLib's writer, which a plugin must not
 * replace because an application may only set it once. */
static void
forward_library_log (const gchar * domain, GLogLevelFlags level,
    const gchar * message, gpointer user_data)
{
  GST_CAT_LEVEL_LOG (gst_moshi_debug, debug_level_from_log_level (level), NULL,
      "%s", message);
}

void
moshi_element_init (GstPlugin * plugin)
{
  static gsize done = 0;

  if (g_once_init_enter (&done)) {
    GST_DEBUG_CATEGORY_INIT (gst_moshi_debug, "moshi", 0,
        "Moshi/Mimi inference library");
    g_log_set_handler ("moshi",
        G_LOG_LEVEL_MASK & ~(G_LOG_LEVEL_ERROR | G_LOG_LEVEL_CRITICAL),
        forward_library_log, NULL);
    gst_type_mark_as_plugin_api (GST_TYPE_MOSHI_DEVICE, 0);
    g_once_init_leave (&done, 1);
  }
}

/* ---- the device enum ---- */

GType
gst_moshi_device_get_type (void)
{
  static gsize type = 0;
  static const GEnumValue values[] = {
    {GST_MOSHI_DEVICE_AUTO, "CUDA if available, else the CPU", "auto"},
    {GST_MOSHI_DEVICE_CPU, "CPU", "cpu"},
    {GST_MOSHI_DEVICE_CUDA, "NVIDIA GPU (CUDA)", "cuda"},
    {0, NULL, NULL},
  };

  if (g_once_init_enter (&type)) {
    GType t = g_enum_register_static ("GstMoshiDevice", values);
    g_once_init_leave (&type, t);
  }
  return (GType) type;
}

/* ---- shared properties ---- */

void
gst_moshi_settings_init (GstMoshiSettings * settings)
{
  settings->model = NULL;
  settings->config = NULL;
  settings->device = GST_MOSHI_DEFAULT_DEVICE;
  settings->threads = GST_MOSHI_DEFAULT_THREADS;
  settings->shared_scheduler = GST_MOSHI_DEFAULT_SHARED_SCHEDULER;
  settings->max_streams = GST_MOSHI_DEFAULT_MAX_STREAMS;
}

void
gst_moshi_settings_clear (GstMoshiSettings * settings)
{
  g_clear_pointer (&settings->model, g_free);
  g_clear_pointer (&settings->config, g_free);
}

void
gst_moshi_settings_copy (GstMoshiSettings * dest, const GstMoshiSettings * src)
{
  dest->model = g_strdup (src->model);
  dest->config = g_strdup (src->config);
  dest->device = src->device;
  dest->threads = src->threads;
  dest->shared_scheduler = src->shared_scheduler;
  dest->max_streams = src->max_streams;
}

void
gst_moshi_settings_install_properties (GObjectClass * klass,
    guint first_prop_id)
{
  const GParamFlags flags = G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS |
      GST_PARAM_MUTABLE_READY;

  g_object_class_install_property (klass, first_prop_id + GST_MOSHI_PROP_MODEL,
      g_param_spec_string ("model", "Model",
          "Mimi weights: a safetensors file, a directory holding "
          MOSHI_HUB_MIMI_FILENAME ", or a Hugging Face repo id "
          "(owner/name[@revision][:file], e.g. kyutai/moshiko-pytorch-bf16) "
          "from the local hub cache ($HF_HUB_CACHE, $HF_HOME/hub or "
          "~/.cache/huggingface/hub) or downloaded into it (progress messages; "
          "HF_HUB_OFFLINE=1: the cache only)",
          NULL, flags));
  g_object_class_install_property (klass, first_prop_id + GST_MOSHI_PROP_CONFIG,
      g_param_spec_string ("config", "Model configuration",
          "Mimi configuration JSON in the upstream mimi_config layout, for "
          "models other than the released one (NULL = released Mimi)",
          NULL, flags));
  g_object_class_install_property (klass, first_prop_id + GST_MOSHI_PROP_DEVICE,
      g_param_spec_enum ("device", "Device",
          "Where the network runs", GST_TYPE_MOSHI_DEVICE,
          GST_MOSHI_DEFAULT_DEVICE, flags));
  g_object_class_install_property (klass,
      first_prop_id + GST_MOSHI_PROP_THREADS,
      g_param_spec_int ("threads", "Threads",
          "CPU threads used by this element's stream (0 = automatic)",
          0, GST_MOSHI_MAX_THREADS, GST_MOSHI_DEFAULT_THREADS, flags));
  g_object_class_install_property (klass,
      first_prop_id + GST_MOSHI_PROP_SHARED_SCHEDULER,
      g_param_spec_boolean ("shared-scheduler", "Shared scheduler",
          "Step this stream with those of every mimienc and mimidec of the process on the "
          "same model: one batched Mimi call for the frames that are there, the transformer "
          "weights read once (FALSE: a session of its own)",
          GST_MOSHI_DEFAULT_SHARED_SCHEDULER, flags));
  g_object_class_install_property (klass,
      first_prop_id + GST_MOSHI_PROP_MAX_STREAMS,
      g_param_spec_uint ("max-streams", "Maximum streams",
          "Streams the shared scheduler takes, when this element is the first of the "
          "process on its model (it creates the scheduler); past it a stream runs a "
          "session of its own", 1, MOSHI_SCHEDULER_MAX_CONVERSATIONS,
          GST_MOSHI_DEFAULT_MAX_STREAMS, flags));
  g_object_class_install_property (klass,
      first_prop_id + GST_MOSHI_PROP_SCHEDULER_STATS,
      g_param_spec_boxed ("scheduler-stats", "Scheduler statistics",
          "The shared scheduler's figures: conversations (streams), ticks, steps, "
          "tick time (tick-ms-p50, tick-ms-p99, tick-ms-max), deadline-misses (ticks "
          "longer than a frame), max-observed-delay-ms; NULL without a shared "
          "scheduler. Also posted once a second of audio as the element message \""
          GST_MOSHI_MIMI_SCHEDULER_MESSAGE "\"", GST_TYPE_STRUCTURE,
          G_PARAM_READABLE | G_PARAM_STATIC_STRINGS));
}

void
gst_moshi_set_optional_string (gchar ** field, const GValue * value)
{
  g_free (*field);
  *field = g_value_dup_string (value);
  /* An empty string from gst-launch means "none". */
  if (*field != NULL && (*field)[0] == '\0')
    g_clear_pointer (field, g_free);
}

gboolean
gst_moshi_settings_set_property (GstMoshiSettings * settings, GObject * object,
    guint prop_id, guint first_prop_id, const GValue * value)
{
  if (prop_id < first_prop_id || prop_id >= first_prop_id + GST_MOSHI_N_PROPS)
    return FALSE;

  GST_OBJECT_LOCK (object);
  switch ((GstMoshiPropOffset) (prop_id - first_prop_id)) {
    case GST_MOSHI_PROP_MODEL:
      g_free (settings->model);
      settings->model = g_value_dup_string (value);
      break;
    case GST_MOSHI_PROP_CONFIG:
      gst_moshi_set_optional_string (&settings->config, value);
      break;
    case GST_MOSHI_PROP_DEVICE:
      settings->device = g_value_get_enum (value);
      break;
    case GST_MOSHI_PROP_THREADS:
      settings->threads = g_value_get_int (value);
      break;
    case GST_MOSHI_PROP_SHARED_SCHEDULER:
      settings->shared_scheduler = g_value_get_boolean (value);
      break;
    case GST_MOSHI_PROP_MAX_STREAMS:
      settings->max_streams = g_value_get_uint (value);
      break;
    case GST_MOSHI_PROP_SCHEDULER_STATS:
    case GST_MOSHI_N_PROPS:
      g_assert_not_reached ();
  }
  GST_OBJECT_UNLOCK (object);
  return TRUE;
}

gboolean
gst_moshi_settings_get_property (GstMoshiSettings * settings,
    GstMoshiMimiCoder * coder, GObject * object, guint prop_id, guint first_prop_id,
    GValue * value)
{
  if (prop_id < first_prop_id || prop_id >= first_prop_id + GST_MOSHI_N_PROPS)
    return FALSE;
  /* takes the object lock itself */
  if (prop_id == first_prop_id + GST_MOSHI_PROP_SCHEDULER_STATS) {
    g_value_take_boxed (value, gst_moshi_mimi_coder_get_stats (coder));
    return TRUE;
  }

  GST_OBJECT_LOCK (object);
  switch ((GstMoshiPropOffset) (prop_id - first_prop_id)) {
    case GST_MOSHI_PROP_MODEL:
      g_value_set_string (value, settings->model);
      break;
    case GST_MOSHI_PROP_CONFIG:
      g_value_set_string (value, settings->config);
      break;
    case GST_MOSHI_PROP_DEVICE:
      g_value_set_enum (value, settings->device);
      break;
    case GST_MOSHI_PROP_THREADS:
      g_value_set_int (value, settings->threads);
      break;
    case GST_MOSHI_PROP_SHARED_SCHEDULER:
      g_value_set_boolean (value, settings->shared_scheduler);
      break;
    case GST_MOSHI_PROP_MAX_STREAMS:
      g_value_set_uint (value, settings->max_streams);
      break;
    case GST_MOSHI_PROP_SCHEDULER_STATS:
    case GST_MOSHI_N_PROPS:
      g_assert_not_reached ();
  }
  GST_OBJECT_UNLOCK (object);
  return TRUE;
}

/* ---- Mimi sessions, shared or not ---- */

gboolean
gst_moshi_mimi_coder_start (GstMoshiMimiCoder * coder, GstElement * element,
    MoshiMimi * mimi, const MoshiMimiSessionOptions * options, gboolean shared,
    guint max_streams, GError ** error)
{
  GstMoshiMimiCoder started = { .element = element };
  if (shared) {
    MoshiSchedulerOptions sched_opts = { .max_conversations = (int) max_streams };
    started.scheduler = moshi_scheduler_get_shared_mimi (mimi, &sched_opts, error);
    if (started.scheduler == NULL)
      return FALSE;
    /* Never waits for the other streams: a codec may run faster than real time (a file),
     * and frames that come while a batch runs go together in the next one anyway. */
    g_autoptr (GError) busy = NULL;
    started.stream = moshi_mimi_stream_new (started.scheduler, options, 0, &busy);
    if (started.stream == NULL) {
      g_clear_pointer (&started.scheduler, moshi_scheduler_unref);
      if (!g_error_matches (busy, MOSHI_ERROR, MOSHI_ERROR_BUSY)) {
        g_propagate_error (error, g_steal_pointer (&busy));
        return FALSE;
      }
      /* a full scheduler: this stream runs on its own rather than not at all */
      GST_INFO_OBJECT (element, "%s; this stream runs a session of its own", busy->message);
    } else {
      started.session = moshi_mimi_stream_get_session (started.stream);
    }
  }
  if (started.session == NULL) {
    started.session = moshi_mimi_session_new (mimi, options, error);
    if (started.session == NULL)
      return FALSE;
  }
  GST_OBJECT_LOCK (element);
  *coder = started;
  GST_OBJECT_UNLOCK (element);
  return TRUE;
}

void
gst_moshi_mimi_coder_stop (GstMoshiMimiCoder * coder)
{
  if (coder->element == NULL)
    return;
  GST_OBJECT_LOCK (coder->element);
  GstMoshiMimiCoder stopped = *coder;
  memset (coder, 0, sizeof (*coder));
  GST_OBJECT_UNLOCK (stopped.element);
  if (stopped.stream != NULL)
    moshi_mimi_stream_free (stopped.stream);
  else if (stopped.session != NULL)
    moshi_mimi_session_free (stopped.session);
  if (stopped.scheduler != NULL)
    moshi_scheduler_unref (stopped.scheduler);
}

GstStructure *
gst_moshi_mimi_coder_get_stats (GstMoshiMimiCoder * coder)
{
  if (coder->element == NULL)
    return NULL;
  GST_OBJECT_LOCK (coder->element);
  MoshiScheduler *scheduler = coder->scheduler ? moshi_scheduler_ref (coder->scheduler) : NULL;
  GST_OBJECT_UNLOCK (coder->element);
  if (scheduler == NULL)
    return NULL;
  GstStructure *st = gst_moshi_scheduler_stats_new (scheduler, GST_MOSHI_MIMI_SCHEDULER_MESSAGE);
  moshi_scheduler_unref (scheduler);
  return st;
}

/* After n_frames frames of this stream: the scheduler's figures once a second of audio. */
static void
coder_count (GstMoshiMimiCoder * coder, gint n_frames)
{
  if (coder->stream == NULL)
    return;
  MoshiMimi *mimi = moshi_mimi_session_get_model (coder->session);
  coder->stats_samples += (guint64) n_frames * moshi_mimi_frame_size (mimi);
  if (coder->stats_samples < (guint64) moshi_mimi_sample_rate (mimi))
    return;
  coder->stats_samples = 0;
  GstStructure *st = gst_moshi_mimi_coder_get_stats (coder);
  if (st != NULL)
    gst_element_post_message (coder->element,
        gst_message_new_element (GST_OBJECT (coder->element), st));
}

GstStructure *
gst_moshi_scheduler_stats_new (MoshiScheduler * scheduler, const gchar * name)
{
  MoshiSchedulerStats st;
  moshi_scheduler_get_stats (scheduler, &st);
  return gst_structure_new (name,
      "conversations", G_TYPE_INT, st.conversations,
      "max-conversations", G_TYPE_INT, moshi_scheduler_max_conversations (scheduler),
      "ticks", G_TYPE_UINT64, st.ticks,
      "steps", G_TYPE_UINT64, st.steps,
      "tick-ms-last", G_TYPE_DOUBLE, st.tick_ms_last,
      "tick-ms-p50", G_TYPE_DOUBLE, st.tick_ms_p50,
      "tick-ms-p99", G_TYPE_DOUBLE, st.tick_ms_p99,
      "tick-ms-max", G_TYPE_DOUBLE, st.tick_ms_max,
      "deadline-misses", G_TYPE_UINT64, st.deadline_misses,
      "late-frames", G_TYPE_UINT64, st.late_frames,
      "max-observed-delay-ms", G_TYPE_DOUBLE, st.max_delay_ms, NULL);
}

gboolean
gst_moshi_mimi_coder_encode (GstMoshiMimiCoder * coder, const gfloat * pcm,
    gint32 * codes, GError ** error)
{
  if (coder->stream == NULL)
    return moshi_mimi_session_encode (coder->session, pcm, 1, codes, error);
  if (!moshi_mimi_stream_encode (coder->stream, pcm, codes, error))
    return FALSE;
  coder_count (coder, 1);
  return TRUE;
}

gboolean
gst_moshi_mimi_coder_decode (GstMoshiMimiCoder * coder, const gint32 * codes,
    gint num_codebooks, gint n_frames, gfloat * pcm, GError ** error)
{
  if (coder->stream == NULL)
    return moshi_mimi_session_decode (coder->session, codes, num_codebooks,
        n_frames, pcm, error);
  gint frame_size =
      moshi_mimi_frame_size (moshi_mimi_session_get_model (coder->session));
  g_autofree gint32 *one = g_new (gint32, MAX (num_codebooks, 1));
  /* a scheduler tick takes one frame of each stream: [k][frame] -> a frame's list */
  for (gint f = 0; f < n_frames; f++) {
    for (gint k = 0; k < num_codebooks; k++)
      one[k] = codes[(gsize) k * n_frames + f];
    if (!moshi_mimi_stream_decode (coder->stream, one, num_codebooks,
            pcm + (gsize) f * frame_size, error))
      return FALSE;
  }
  coder_count (coder, n_frames);
  return TRUE;
}

/* ---- loading models ---- */

void
gst_moshi_post_load_error (GstElement * element, const gchar * what,
    const gchar * model, const gchar * path, const gchar * config,
    const GError * error, const gchar * details)
{
  GQuark domain = GST_LIBRARY_ERROR;
  gint code = GST_LIBRARY_ERROR_INIT;

  if (error->domain == MOSHI_ERROR) {
    switch ((MoshiErrorCode) error->code) {
      case MOSHI_ERROR_IO:
        domain = GST_RESOURCE_ERROR;
        if (!g_file_test (path, G_FILE_TEST_EXISTS) || (config != NULL
                && !g_file_test (config, G_FILE_TEST_EXISTS)))
          code = GST_RESOURCE_ERROR_NOT_FOUND;
        else
          code = GST_RESOURCE_ERROR_OPEN_READ;
        break;
      case MOSHI_ERROR_FORMAT:
      case MOSHI_ERROR_MISSING_TENSOR:
      case MOSHI_ERROR_SHAPE:
      case MOSHI_ERROR_DTYPE:
      case MOSHI_ERROR_CONFIG:
        domain = GST_RESOURCE_ERROR;
        code = GST_RESOURCE_ERROR_OPEN_READ;
        break;
      case MOSHI_ERROR_INVALID_ARGUMENT:
        domain = GST_RESOURCE_ERROR;
        code = GST_RESOURCE_ERROR_SETTINGS;
        break;
      case MOSHI_ERROR_NO_MEMORY:
        /* the weights do not fit beside what else runs on the device */
        domain = GST_RESOURCE_ERROR;
        code = GST_RESOURCE_ERROR_NO_SPACE_LEFT;
        break;
      case MOSHI_ERROR_UNSUPPORTED:
      case MOSHI_ERROR_DEVICE:
      default:
        break;
    }
  }

  /* GST_ELEMENT_ERROR wants literal domain names; this is what it expands to. */
  gst_element_message_full (element, GST_MESSAGE_ERROR, domain, code,
      g_strdup_printf ("Could not load %s \"%s\": %s", what, model,
          error->message), g_strdup (details), __FILE__, GST_FUNCTION,
      __LINE__);
}

gboolean
gst_moshi_handle_device_failure (GstElement * element, gboolean * posted,
    const gchar * what, const GError * error)
{
  if (error == NULL || error->domain != MOSHI_ERROR
      || error->code != MOSHI_ERROR_DEVICE)
    return FALSE;
  if (*posted) {
    GST_DEBUG_OBJECT (element, "%s failed again: %s", what, error->message);
    return TRUE;
  }
  *posted = TRUE;
  /* RESOURCE, not STREAM: the data is not at fault, and no later buffer will do better */
  GST_ELEMENT_ERROR (element, RESOURCE, FAILED,
      ("%s failed: the compute device failed", what),
      ("%s", error->message));
  return TRUE;
}

gboolean
gst_moshi_post_no_memory (GstElement * element, const gchar * what,
    const GError * error)
{
  if (!g_error_matches (error, MOSHI_ERROR, MOSHI_ERROR_NO_MEMORY))
    return FALSE;
  GST_ELEMENT_ERROR (element, RESOURCE, NO_SPACE_LEFT,
      ("%s: out of memory", what), ("%s", error->message));
  return TRUE;
}

gchar *
gst_moshi_resolve_model (GstElement * element, const gchar * what,
    const gchar * spec, const gchar * default_filename)
{
  g_autoptr (GError) error = NULL;
  MoshiHubOptions hub = gst_moshi_hub_options (element);
  gchar *path = moshi_hub_resolve_full (spec, default_filename, &hub, &error);

  if (path == NULL) {
    GST_ELEMENT_ERROR (element, RESOURCE, NOT_FOUND,
        ("Could not find %s \"%s\": %s", what, spec, error->message),
        ("model=%s", spec));
    return NULL;
  }
  if (g_strcmp0 (path, spec) != 0)
    GST_CAT_INFO_OBJECT (gst_moshi_debug, element, "%s %s is %s", what, spec,
        path);
  return path;
}

/* Posts the element error for a failed Mimi load: the user-facing message names the model
 * and carries the library's message (which names the file, tensor or key at fault). */
static void
post_load_error (GstElement * element, const gchar * model, const gchar * path,
    const gchar * config, GstMoshiDevice device, const GError * error)
{
  g_autofree gchar *details = g_strdup_printf ("model=%s (file %s), config=%s, "
      "device=%s: %s", model, path, config ? config : "(released Mimi)",
      moshi_device_name ((MoshiDevice) device), error->message);

  gst_moshi_post_load_error (element, "Mimi model", model, path, config, error,
      details);
}

static MoshiMimi *
load_model (GstElement * element, const gchar * model, const gchar * config,
    GstMoshiDevice device)
{
  g_autoptr (GError) error = NULL;

  if (model == NULL || model[0] == '\0') {
    GST_ELEMENT_ERROR (element, RESOURCE, NOT_FOUND,
        ("No Mimi model given"),
        ("set the \"model\" property to a Mimi safetensors file or to a "
            "Hugging Face repo id such as kyutai/moshiko-pytorch-bf16"));
    return NULL;
  }

  g_autofree gchar *path = gst_moshi_resolve_model (element, "Mimi model",
      model, MOSHI_HUB_MIMI_FILENAME);
  if (path == NULL)
    return NULL;

  MoshiMimiLoadOptions options = {.device = (MoshiDevice) device };
  MoshiMimi *mimi = moshi_mimi_load_shared (path, config, &options, &error);
  if (mimi == NULL) {
    post_load_error (element, model, path, config, device, error);
    return NULL;
  }

  g_autofree char *device_description =
      moshi_mimi_describe_device (mimi);
  GST_CAT_INFO_OBJECT (gst_moshi_debug, element,
      "Mimi %s: %d Hz, %d samples per frame, %d codebooks of %d entries, "
      "backend %s", path, moshi_mimi_sample_rate (mimi),
      moshi_mimi_frame_size (mimi), moshi_mimi_max_codebooks (mimi),
      moshi_mimi_codebook_size (mimi), device_description);

  if (!gst_moshi_check_mimi (element, mimi, model, path, config)) {
    moshi_mimi_unref (mimi);
    return NULL;
  }
  return mimi;
}

gboolean
gst_moshi_check_mimi (GstElement * element, MoshiMimi * mimi,
    const gchar * model, const gchar * path, const gchar * config)
{
  const MoshiMimiConfig *cfg = moshi_mimi_get_config (mimi);
  if (moshi_mimi_sample_rate (mimi) != MIMI_TEMPLATE_RATE || cfg->channels != 1
      || moshi_mimi_codebook_size (mimi) > 65536) {
    GST_ELEMENT_ERROR (element, RESOURCE, SETTINGS,
        ("Mimi model \"%s\" cannot be used by this element: it works on %d Hz "
            "audio with %d channel(s) and %d-entry codebooks; the element "
            "handles %d Hz mono with codebooks of at most 65536 entries",
            model, moshi_mimi_sample_rate (mimi), cfg->channels,
            moshi_mimi_codebook_size (mimi), MIMI_TEMPLATE_RATE),
        ("file %s, config %s", path, config ? config : "(released Mimi)"));
    return FALSE;
  }
  return TRUE;
}

gboolean
gst_moshi_loaded_model_ensure (GstMoshiLoadedModel * loaded,
    GstElement * element, GstMoshiSettings * settings)
{
  GstMoshiSettings wanted;

  GST_OBJECT_LOCK (element);
  gst_moshi_settings_copy (&wanted, settings);
  GST_OBJECT_UNLOCK (element);

  if (loaded->mimi != NULL && g_strcmp0 (loaded->model, wanted.model) == 0
      && g_strcmp0 (loaded->config, wanted.config) == 0
      && loaded->device == wanted.device) {
    gst_moshi_settings_clear (&wanted);
    return TRUE;
  }

  gst_moshi_loaded_model_clear (loaded, element);
  MoshiMimi *mimi = load_model (element, wanted.model, wanted.config,
      wanted.device);
  if (mimi != NULL) {
    loaded->mimi = mimi;
    loaded->model = g_steal_pointer (&wanted.model);
    loaded->config = g_steal_pointer (&wanted.config);
    loaded->device = wanted.device;
    g_object_set_data (G_OBJECT (element), GST_MOSHI_MODEL_DATA_KEY, mimi);
  }
  gst_moshi_settings_clear (&wanted);
  return mimi != NULL;
}

void
gst_moshi_loaded_model_clear (GstMoshiLoadedModel * loaded,
    GstElement * element)
{
  if (loaded->mimi != NULL)
    g_object_set_data (G_OBJECT (element), GST_MOSHI_MODEL_DATA_KEY, NULL);
  g_clear_pointer (&loaded->mimi, moshi_mimi_unref);
  g_clear_pointer (&loaded->model, g_free);
  g_clear_pointer (&loaded->config, g_free);
  loaded->device = GST_MOSHI_DEFAULT_DEVICE;
}

/* ---- caps ---- */

GstCaps *
gst_moshi_token_caps_new_full (gint rate, gint frame_samples, gint codebooks,
    gint codebook_size)
{
  /* Frames per second as an exact fraction (25/2 for the released Mimi): the frame rate
   * the model reports is a double, while rate / frame size is what timestamps follow. */
  gint gcd = gst_util_greatest_common_divisor (rate, frame_samples);

  return gst_caps_new_simple ("audio/x-mimi",
      "rate", G_TYPE_INT, rate,
      "channels", G_TYPE_INT, 1,
      "framerate", GST_TYPE_FRACTION, rate / gcd, frame_samples / gcd,
      "codebooks", G_TYPE_INT, codebooks,
      "codebook-size", G_TYPE_INT, codebook_size,
      "stream-format", G_TYPE_STRING, "u16le", NULL);
}

GstCaps *
gst_moshi_token_caps_new (MoshiMimi * mimi, gint codebooks)
{
  return gst_moshi_token_caps_new_full (moshi_mimi_sample_rate (mimi),
      moshi_mimi_frame_size (mimi), codebooks, moshi_mimi_codebook_size (mimi));
}

void
gst_moshi_log_refused_caps (GstElement * element, GstDebugCategory * category,
    GstPad * pad, GstCaps * caps, const gchar * hint)
{
  g_autoptr (GstCaps) templ = gst_pad_get_pad_template_caps (pad);
  g_autoptr (GString) why = g_string_new (NULL);

  if (gst_caps_is_empty (caps) || gst_caps_is_any (caps)) {
    g_string_append (why, "no usable caps");
  } else {
    const GstStructure *offered = gst_caps_get_structure (caps, 0);
    const GstStructure *wanted = NULL;

    for (guint i = 0; i < gst_caps_get_size (templ) && wanted == NULL; i++) {
      if (gst_structure_has_name (gst_caps_get_structure (templ, i),
              gst_structure_get_name (offered)))
        wanted = gst_caps_get_structure (templ, i);
    }
    if (wanted == NULL) {
      g_string_append_printf (why, "media type %s, this pad takes %s",
          gst_structure_get_name (offered),
          gst_structure_get_name (gst_caps_get_structure (templ, 0)));
    } else {
      for (gint i = 0; i < gst_structure_n_fields (wanted); i++) {
        const gchar *field = gst_structure_nth_field_name (wanted, i);
        const GValue *want = gst_structure_get_value (wanted, field);
        const GValue *have = gst_structure_get_value (offered, field);
        /* gst_value_can_intersect() only compares types; intersect for real. */
        if (have != NULL && gst_value_intersect (NULL, have, want))
          continue;
        g_autofree gchar *want_str = gst_value_serialize (want);
        g_autofree gchar *have_str = have ? gst_value_serialize (have) : NULL;
        g_string_append_printf (why, "%s%s is %s, this pad takes %s",
            why->len ? "; " : "", field, have_str ? have_str : "missing",
            want_str);
      }
      if (why->len == 0)
        g_string_append (why, "not a subset of the pad template");
    }
  }
  GST_CAT_WARNING_OBJECT (category, element, "cannot accept %" GST_PTR_FORMAT
      " on %s:%s: %s%s%s", caps, GST_DEBUG_PAD_NAME (pad), why->str,
      hint ? "; " : "", hint ? hint : "");
}

gsize
gst_moshi_audio_to_float (GstAudioFormat format, const guint8 * src, gsize n,
    gfloat * dest)
{
  gsize replaced = 0;

  if (format == GST_AUDIO_FORMAT_S16LE) {
    for (gsize i = 0; i < n; i++)
      dest[i] = (gint16) GST_READ_UINT16_LE (src + 2 * i) / 32768.0f;
  } else {
    memcpy (dest, src, n * sizeof (gfloat));
    for (gsize i = 0; i < n; i++) {
      if (G_UNLIKELY (!isfinite (dest[i]))) {
        dest[i] = 0.0f;
        replaced++;
      }
    }
  }
  return replaced;
}
