/* gst-moshi: declarations shared by the elements of the "moshi" plugin. */
#pragma once

#include <gst/gst.h>
#include <gst/audio/audio.h>

#include <moshi/moshi-mimi.h>
#include <moshi/moshi-scheduler.h>

#include "mimi-token-codes.h"

G_BEGIN_DECLS

GST_ELEMENT_REGISTER_DECLARE (mimienc);
GST_ELEMENT_REGISTER_DECLARE (mimidec);
GST_ELEMENT_REGISTER_DECLARE (moshidialog);
GST_ELEMENT_REGISTER_DECLARE (rtpmimipay);
GST_ELEMENT_REGISTER_DECLARE (rtpmimidepay);

/* One-time setup shared by every element of the plugin (debug categories, enum types). */
G_GNUC_INTERNAL void moshi_element_init (GstPlugin * plugin);

/* Messages about the inference library (model loading, backend choice) go to the "moshi"
 * debug category; each element also has its own. */
GST_DEBUG_CATEGORY_EXTERN (gst_moshi_debug);

/**
 * GstMoshiDevice:
 * @GST_MOSHI_DEVICE_AUTO: CUDA when a usable GPU and a CUDA build are present, else the CPU
 * @GST_MOSHI_DEVICE_CPU: the CPU backend (always available)
 * @GST_MOSHI_DEVICE_CUDA: an NVIDIA GPU; fails when this build or machine has none
 *
 * Where the neural network runs. Same values as the library's #MoshiDevice.
 */
typedef enum
{
  GST_MOSHI_DEVICE_AUTO = MOSHI_DEVICE_AUTO,
  GST_MOSHI_DEVICE_CPU = MOSHI_DEVICE_CPU,
  GST_MOSHI_DEVICE_CUDA = MOSHI_DEVICE_CUDA,
} GstMoshiDevice;

/* An element's page in the installed documentation (docs/elements/NAME.md), for its doc-uri. */
#define GST_MOSHI_DOC_URI(name) GST_MOSHI_DOC_BASE "/elements/" name ".md"

#define GST_TYPE_MOSHI_DEVICE (gst_moshi_device_get_type ())
G_GNUC_INTERNAL GType gst_moshi_device_get_type (void);

typedef struct _GstMoshiMimiCoder GstMoshiMimiCoder;

/* The properties both Mimi elements share. Installed with consecutive ids starting at the
 * element's first property id, in this order. Protected by the element's object lock. */
typedef enum
{
  GST_MOSHI_PROP_MODEL,
  GST_MOSHI_PROP_CONFIG,
  GST_MOSHI_PROP_DEVICE,
  GST_MOSHI_PROP_THREADS,
  GST_MOSHI_PROP_SHARED_SCHEDULER,
  GST_MOSHI_PROP_MAX_STREAMS,
  GST_MOSHI_PROP_SCHEDULER_STATS,
  GST_MOSHI_N_PROPS
} GstMoshiPropOffset;

#define GST_MOSHI_DEFAULT_DEVICE GST_MOSHI_DEVICE_AUTO
#define GST_MOSHI_DEFAULT_THREADS 0
#define GST_MOSHI_MAX_THREADS 256
#define GST_MOSHI_DEFAULT_SHARED_SCHEDULER TRUE
#define GST_MOSHI_DEFAULT_MAX_STREAMS MOSHI_SCHEDULER_DEFAULT_MAX_CONVERSATIONS
/* The element message (and the structure of scheduler-stats) of mimienc and mimidec. */
#define GST_MOSHI_MIMI_SCHEDULER_MESSAGE "mimi-scheduler"

typedef struct
{
  gchar *model;                 /* path or hub repo id, as the user wrote it */
  gchar *config;                /* NULL: the released Mimi architecture */
  GstMoshiDevice device;
  gint threads;                 /* 0: automatic */
  gboolean shared_scheduler;
  guint max_streams;            /* of the shared scheduler, when this element creates it */
} GstMoshiSettings;

G_GNUC_INTERNAL void gst_moshi_settings_init (GstMoshiSettings * settings);
G_GNUC_INTERNAL void gst_moshi_settings_clear (GstMoshiSettings * settings);
G_GNUC_INTERNAL void gst_moshi_settings_copy (GstMoshiSettings * dest,
    const GstMoshiSettings * src);
G_GNUC_INTERNAL void gst_moshi_settings_install_properties (GObjectClass * klass,
    guint first_prop_id);
/* Replaces *field with the string in value; NULL and "" (what gst-launch passes for "none")
 * both leave it NULL. The caller holds the object lock. */
G_GNUC_INTERNAL void gst_moshi_set_optional_string (gchar ** field, const GValue * value);
/* Return FALSE when prop_id is not one of the shared properties. Take the object lock. */
G_GNUC_INTERNAL gboolean gst_moshi_settings_set_property (GstMoshiSettings * settings,
    GObject * object, guint prop_id, guint first_prop_id, const GValue * value);
G_GNUC_INTERNAL gboolean gst_moshi_settings_get_property (GstMoshiSettings * settings,
    GstMoshiMimiCoder * coder,
    GObject * object, guint prop_id, guint first_prop_id, GValue * value);

/* A model loaded for an element, with the settings it was loaded from so that a change of
 * settings while in READY is picked up at the next start. */
typedef struct
{
  MoshiMimi *mimi;
  gchar *model;
  gchar *config;
  GstMoshiDevice device;
} GstMoshiLoadedModel;

/* Turns a model specification (a path, a directory holding default_filename, or a Hugging
 * Face repo id: from the local cache, or downloaded into it with progress messages posted,
 * see gstmoshihub.h) into a file path. On failure posts a RESOURCE/NOT_FOUND
 * element error naming what ("Mimi model", "Moshi LM", ...) and the specification, and
 * returns NULL. */
G_GNUC_INTERNAL gchar *gst_moshi_resolve_model (GstElement * element,
    const gchar * what, const gchar * spec, const gchar * default_filename);

/* Posts the element error for a model that could not be loaded from path: "Could not load
 * <what> "<model>": <library message>", with the GStreamer error domain and code chosen
 * from the library's error code (a missing file or config is RESOURCE/NOT_FOUND, a broken
 * one RESOURCE/OPEN_READ, an unusable device LIBRARY/INIT). details is the debug string. */
G_GNUC_INTERNAL void gst_moshi_post_load_error (GstElement * element,
    const gchar * what, const gchar * model, const gchar * path,
    const gchar * config, const GError * error, const gchar * details);

/* For a streaming call of element that failed (what names it: "Mimi encoding"): when the
 * device failed (MOSHI_ERROR_DEVICE: a GPU fault, after which every call on that device fails
 * until the process ends), posts RESOURCE/FAILED unless *posted says it already did (one error
 * per element, whatever the buffers that keep coming), with the library's message (naming the
 * device and what failed) as the debug string, and returns TRUE: the caller returns
 * GST_FLOW_ERROR. FALSE for any other failure, which is the caller's to report. */
G_GNUC_INTERNAL gboolean gst_moshi_handle_device_failure (GstElement * element,
    gboolean * posted, const gchar * what, const GError * error);

/* When error is MOSHI_ERROR_NO_MEMORY (the session of a new stream did not fit in memory),
 * posts RESOURCE/NO_SPACE_LEFT "<what>: out of memory" with the library's message (the sizes
 * and the fix) as the debug string, and returns TRUE. Not a device failure: the other streams
 * on the device carry on. FALSE for any other error, which is the caller's to report. */
G_GNUC_INTERNAL gboolean gst_moshi_post_no_memory (GstElement * element,
    const gchar * what, const GError * error);

/* FALSE, after posting a RESOURCE/SETTINGS element error, when the elements cannot use
 * mimi (a rate other than their 24 kHz, several channels, codebooks past 16 bits). */
G_GNUC_INTERNAL gboolean gst_moshi_check_mimi (GstElement * element,
    MoshiMimi * mimi, const gchar * model, const gchar * path,
    const gchar * config);

/* Makes sure loaded holds the model the element's current settings name, loading it (through
 * the process-wide shared registry) when needed. On failure posts an element error naming
 * the file and returns FALSE. */
G_GNUC_INTERNAL gboolean gst_moshi_loaded_model_ensure (GstMoshiLoadedModel * loaded,
    GstElement * element, GstMoshiSettings * settings);
G_GNUC_INTERNAL void gst_moshi_loaded_model_clear (GstMoshiLoadedModel * loaded,
    GstElement * element);

/* The token stream (docs/token-format.md): per frame, `codebooks` codes of 16 bits, little
 * endian. The pad template caps, with the frame rates an element takes: */
#define GST_MOSHI_TOKEN_CAPS_WITH_FRAMERATE(framerate) \
    "audio/x-mimi, rate = (int) 24000, channels = (int) 1, " \
    "framerate = (fraction) " framerate ", codebooks = (int) [ 1, 32 ], " \
    "codebook-size = (int) [ 2, 65536 ], stream-format = (string) u16le"
#define GST_MOSHI_TOKEN_CAPS GST_MOSHI_TOKEN_CAPS_WITH_FRAMERATE ("[ 0/1, MAX ]")

/* The Mimi session of a mimienc or mimidec: a stream on the process's shared Mimi scheduler
 * (shared-scheduler), which batches the frames of every element on the same model, or a
 * session of its own. scheduler is set and cleared under the element's object lock, so that
 * scheduler-stats can read it from any thread. */
struct _GstMoshiMimiCoder
{
  GstElement *element;
  MoshiScheduler *scheduler;
  MoshiMimiStream *stream;
  MoshiMimiSession *session;    /* its own, or the stream's */
  guint64 stats_samples;        /* of audio since the last scheduler message */
  gboolean device_failed;       /* the device failure is posted */
};

/* max_streams bounds the shared scheduler when this call creates it; past its bound the
 * stream runs a session of its own. */
G_GNUC_INTERNAL gboolean gst_moshi_mimi_coder_start (GstMoshiMimiCoder * coder,
    GstElement * element, MoshiMimi * mimi, const MoshiMimiSessionOptions * options,
    gboolean shared, guint max_streams, GError ** error);
G_GNUC_INTERNAL void gst_moshi_mimi_coder_stop (GstMoshiMimiCoder * coder);
/* The shared scheduler's figures, for scheduler-stats (NULL without one). Takes the
 * element's object lock. */
G_GNUC_INTERNAL GstStructure *gst_moshi_mimi_coder_get_stats (GstMoshiMimiCoder * coder);
/* One frame, as moshi_mimi_session_encode. Encode and decode post the scheduler's figures as
 * an element message once a second of audio. */
G_GNUC_INTERNAL gboolean gst_moshi_mimi_coder_encode (GstMoshiMimiCoder * coder,
    const gfloat * pcm, gint32 * codes, GError ** error);
/* n_frames frames of codes in the [k][frame] layout, as moshi_mimi_session_decode. */
G_GNUC_INTERNAL gboolean gst_moshi_mimi_coder_decode (GstMoshiMimiCoder * coder,
    const gint32 * codes, gint num_codebooks, gint n_frames, gfloat * pcm,
    GError ** error);

/* A scheduler's figures as a structure named name (the element messages and the
 * scheduler-stats properties of moshidialog, mimienc and mimidec). */
G_GNUC_INTERNAL GstStructure *gst_moshi_scheduler_stats_new (MoshiScheduler * scheduler,
    const gchar * name);

/* Caps of the token stream a model produces with the given number of codebooks. */
G_GNUC_INTERNAL GstCaps *gst_moshi_token_caps_new (MoshiMimi * mimi, gint codebooks);
/* The same from the stream's parameters (frames of frame_samples samples at rate). */
G_GNUC_INTERNAL GstCaps *gst_moshi_token_caps_new_full (gint rate, gint frame_samples,
    gint codebooks, gint codebook_size);

/* Explains in the debug log (WARNING level of the element's category) why caps were refused
 * on pad: each field that does not fit the pad template, then hint. */
G_GNUC_INTERNAL void gst_moshi_log_refused_caps (GstElement * element,
    GstDebugCategory * category, GstPad * pad, GstCaps * caps,
    const gchar * hint);

/* Converts n S16LE or F32LE samples from src into floats in dest. Non-finite samples (which
 * the models reject) become silence, so that one bad sample from a broken filter does not
 * end the stream. Returns how many were replaced. */
G_GNUC_INTERNAL gsize gst_moshi_audio_to_float (GstAudioFormat format, const guint8 * src,
    gsize n, gfloat * dest);

/* Key of the object data that points at the element's MoshiMimi while it is open; lets tests
 * check that two elements share one model. Not an API. */
#define GST_MOSHI_MODEL_DATA_KEY "gst-moshi-mimi-model"

G_END_DECLS
