/* gst-moshi: mimienc, raw audio to Mimi tokens. */

/**
 * SECTION:element-mimienc
 * @title: mimienc
 * @see_also: mimidec, gdppay
 *
 * Encodes 24 kHz mono audio into the discrete tokens of Kyutai's Mimi neural
 * speech codec: one `audio/x-mimi` buffer per 80 ms frame, holding one
 * little-endian 16-bit code per codebook (#GstMimiEnc:num-codebooks of them,
 * 8 by default: 1.1 kbit/s).
 *
 * The encoder is causal and streaming: each frame of 1920 samples is encoded
 * as soon as it is complete, so the element adds exactly one frame (80 ms) of
 * latency. Input may come in buffers of any size. At the end of the stream a
 * partial last frame is padded with silence, encoded, and marked with a
 * #GstAudioClippingMeta telling the decoder how many samples to drop.
 *
 * The weights are loaded when the element goes to READY; elements naming the
 * same model (and config and device) in one process share one copy.
 *
 * ## Example pipelines
 * |[
 * gst-launch-1.0 -e autoaudiosrc ! audioconvert ! audioresample ! \
 *     mimienc model=kyutai/moshiko-pytorch-bf16 ! mimidec model=kyutai/moshiko-pytorch-bf16 ! \
 *     audioconvert ! autoaudiosink
 * ]| Microphone to speaker through the codec (the model taken from the local
 * Hugging Face cache).
 * |[
 * gst-launch-1.0 filesrc location=speech.wav ! wavparse ! audioconvert ! \
 *     audioresample ! mimienc model=mimi.safetensors ! gdppay ! \
 *     filesink location=speech.mimi.gdp
 * ]| Stores the tokens of a WAV file; decode them later with
 * `filesrc location=speech.mimi.gdp ! gdpdepay ! mimidec model=mimi.safetensors ! ...`.
 */

#include "gstmimienc.h"

#include <math.h>
#include <string.h>

#include "gstmoshielements.h"

GST_DEBUG_CATEGORY_STATIC (gst_mimi_enc_debug);
#define GST_CAT_DEFAULT gst_mimi_enc_debug

#define DEFAULT_NUM_CODEBOOKS 8
#define MAX_NUM_CODEBOOKS 32

enum
{
  PROP_0,
  PROP_FIRST_SHARED,
  /* model, config, device, threads */
  PROP_NUM_CODEBOOKS = PROP_FIRST_SHARED + GST_MOSHI_N_PROPS,
};

struct _GstMimiEnc
{
  GstAudioEncoder parent;

  /* Properties, under the object lock. */
  GstMoshiSettings settings;
  gint num_codebooks;

  /* From open() to close(). start() replaces it, under the stream lock, when the model
   * settings changed in READY. */
  GstMoshiLoadedModel loaded;

  /* From start() to stop(), under the stream lock. The base class starts the stream when
   * it activates its sink pad, which already lets buffers in: handle_frame() can run
   * before start() has finished, and then finds no session. */
  GstMoshiMimiCoder coder;
  gint codebooks;               /* in the output stream */
  gint frame_size;              /* samples per frame */
  gfloat *pcm;                  /* one frame */
  gint32 *codes;                /* one frame, [codebook] */
  gboolean warned_non_finite;
};

#define gst_mimi_enc_parent_class parent_class
G_DEFINE_TYPE (GstMimiEnc, gst_mimi_enc, GST_TYPE_AUDIO_ENCODER);
GST_ELEMENT_REGISTER_DEFINE_WITH_CODE (mimienc, "mimienc", GST_RANK_SECONDARY,
    GST_TYPE_MIMI_ENC, moshi_element_init (plugin));

static GstStaticPadTemplate sink_template = GST_STATIC_PAD_TEMPLATE ("sink",
    GST_PAD_SINK,
    GST_PAD_ALWAYS,
    GST_STATIC_CAPS ("audio/x-raw, format = (string) { F32LE, S16LE }, "
        "layout = (string) interleaved, rate = (int) 24000, channels = (int) 1"));

static GstStaticPadTemplate src_template = GST_STATIC_PAD_TEMPLATE ("src",
    GST_PAD_SRC,
    GST_PAD_ALWAYS,
    GST_STATIC_CAPS (GST_MOSHI_TOKEN_CAPS));

static gboolean
check_num_codebooks (GstMimiEnc * self, gint num_codebooks)
{
  MoshiMimi *mimi = self->loaded.mimi;
  gint available = moshi_mimi_max_codebooks (mimi);

  if (num_codebooks > available) {
    GST_ELEMENT_ERROR (self, RESOURCE, SETTINGS,
        ("num-codebooks=%d, but Mimi model \"%s\" has only %d codebooks",
            num_codebooks, self->loaded.model, available),
        ("file %s", moshi_mimi_get_path (mimi)));
    return FALSE;
  }
  return TRUE;
}

static gboolean
gst_mimi_enc_open (GstAudioEncoder * encoder)
{
  GstMimiEnc *self = GST_MIMI_ENC (encoder);

  if (!gst_moshi_loaded_model_ensure (&self->loaded, GST_ELEMENT (self),
          &self->settings))
    return FALSE;

  GST_OBJECT_LOCK (self);
  gint num_codebooks = self->num_codebooks;
  GST_OBJECT_UNLOCK (self);
  if (!check_num_codebooks (self, num_codebooks)) {
    gst_moshi_loaded_model_clear (&self->loaded, GST_ELEMENT (self));
    return FALSE;
  }
  return TRUE;
}

/* The model is loaded here rather than in the base class's open: when open fails, the base
 * class posts a generic "Failed to open codec" after the element's own error, and a failed load
 * must post exactly one error, the one that names the model. */
static GstStateChangeReturn
gst_mimi_enc_change_state (GstElement * element, GstStateChange transition)
{
  if (transition == GST_STATE_CHANGE_NULL_TO_READY
      && !gst_mimi_enc_open (GST_AUDIO_ENCODER (element)))
    return GST_STATE_CHANGE_FAILURE;
  return GST_ELEMENT_CLASS (parent_class)->change_state (element, transition);
}

static gboolean
gst_mimi_enc_close (GstAudioEncoder * encoder)
{
  GstMimiEnc *self = GST_MIMI_ENC (encoder);

  gst_moshi_loaded_model_clear (&self->loaded, GST_ELEMENT (self));
  return TRUE;
}

static gboolean
gst_mimi_enc_start (GstAudioEncoder * encoder)
{
  GstMimiEnc *self = GST_MIMI_ENC (encoder);
  g_autoptr (GError) error = NULL;
  MoshiMimi *mimi = NULL;
  gint threads = 0;
  gboolean shared;

  /* Under the stream lock: caps or data may already be arriving (see the struct), and the
   * model may be replaced below. */
  GST_AUDIO_ENCODER_STREAM_LOCK (self);

  /* The model settings may have changed while in READY. */
  if (!gst_moshi_loaded_model_ensure (&self->loaded, GST_ELEMENT (self),
          &self->settings))
    goto failed;

  GST_OBJECT_LOCK (self);
  gint num_codebooks = self->num_codebooks;
  threads = self->settings.threads;
  shared = self->settings.shared_scheduler;
  guint max_streams = self->settings.max_streams;
  GST_OBJECT_UNLOCK (self);
  if (!check_num_codebooks (self, num_codebooks))
    goto failed;

  mimi = self->loaded.mimi;
  /* One frame per call: the base class hands frames one at a time, and this is the
   * configuration whose output the library documents as the streaming reference. */
  MoshiMimiSessionOptions options = {
    .n_threads = threads,
    .num_codebooks = num_codebooks,
    .max_frames_per_call = 1,
  };
  if (!gst_moshi_mimi_coder_start (&self->coder, GST_ELEMENT (self), mimi, &options, shared,
          max_streams, &error))
    goto session_failed;

  self->codebooks = num_codebooks;
  self->frame_size = moshi_mimi_frame_size (mimi);
  self->pcm = g_new0 (gfloat, self->frame_size);
  self->codes = g_new0 (gint32, self->codebooks);
  self->warned_non_finite = FALSE;
  GST_AUDIO_ENCODER_STREAM_UNLOCK (self);
  return TRUE;

  /* ERRORS */
session_failed:
  {
    if (gst_moshi_post_no_memory (GST_ELEMENT (self),
            "Could not start a Mimi encoder stream", error))
      goto failed;
    GST_ELEMENT_ERROR (self, LIBRARY, INIT,
        ("Could not start a Mimi encoder stream: %s", error->message),
        ("model %s, threads=%d, shared-scheduler=%d", moshi_mimi_get_path (mimi),
            threads, shared));
    goto failed;
  }
failed:
  {
    GST_AUDIO_ENCODER_STREAM_UNLOCK (self);
    return FALSE;
  }
}

static gboolean
gst_mimi_enc_stop (GstAudioEncoder * encoder)
{
  GstMimiEnc *self = GST_MIMI_ENC (encoder);

  GST_AUDIO_ENCODER_STREAM_LOCK (self);
  gst_moshi_mimi_coder_stop (&self->coder);
  g_clear_pointer (&self->pcm, g_free);
  g_clear_pointer (&self->codes, g_free);
  self->codebooks = 0;
  GST_AUDIO_ENCODER_STREAM_UNLOCK (self);
  return TRUE;
}

static gboolean
gst_mimi_enc_set_format (GstAudioEncoder * encoder, GstAudioInfo * info)
{
  GstMimiEnc *self = GST_MIMI_ENC (encoder);
  MoshiMimi *mimi = self->loaded.mimi;
  gint rate = moshi_mimi_sample_rate (mimi);
  g_autoptr (GstCaps) caps = NULL;

  if (GST_AUDIO_INFO_RATE (info) != rate || GST_AUDIO_INFO_CHANNELS (info) != 1)
    goto wrong_format;

  /* Caps may come before start() (see the struct). */
  if (self->codebooks == 0) {
    GST_OBJECT_LOCK (self);
    self->codebooks = self->num_codebooks;
    GST_OBJECT_UNLOCK (self);
  }
  caps = gst_moshi_token_caps_new (mimi, self->codebooks);
  GST_DEBUG_OBJECT (self, "output caps %" GST_PTR_FORMAT, caps);
  if (!gst_audio_encoder_set_output_format (encoder, caps))
    return FALSE;

  /* Exactly one whole frame per handle_frame (a shorter one only when draining). These
   * knobs are reset before every set_format. */
  gst_audio_encoder_set_frame_samples_min (encoder, self->frame_size);
  gst_audio_encoder_set_frame_samples_max (encoder, self->frame_size);
  gst_audio_encoder_set_frame_max (encoder, 1);
  /* Causal codec: a sample is encoded once its frame is complete, no look-ahead. */
  gst_audio_encoder_set_lookahead (encoder, 0);
  GstClockTime frame_duration =
      gst_util_uint64_scale_int (GST_SECOND, self->frame_size, rate);
  gst_audio_encoder_set_latency (encoder, frame_duration, frame_duration);
  return TRUE;

  /* ERRORS */
wrong_format:
  {
    GST_ELEMENT_ERROR (self, CORE, NEGOTIATION,
        ("mimienc takes %d Hz mono audio, got %d Hz with %d channel(s)", rate,
            GST_AUDIO_INFO_RATE (info), GST_AUDIO_INFO_CHANNELS (info)),
        ("put audioconvert ! audioresample in front of mimienc; model %s",
            moshi_mimi_get_path (mimi)));
    return FALSE;
  }
}

/* Converts n input samples into self->pcm and pads the rest of the frame with silence.
 * Non-finite samples become silence (see gst_moshi_audio_to_float). Returns how many were
 * replaced. */
static gsize
fill_frame (GstMimiEnc * self, GstAudioFormat format, const guint8 * data,
    gsize n)
{
  gsize replaced = gst_moshi_audio_to_float (format, data, n, self->pcm);
  memset (self->pcm + n, 0, (self->frame_size - n) * sizeof (gfloat));
  return replaced;
}

static GstFlowReturn
gst_mimi_enc_handle_frame (GstAudioEncoder * encoder, GstBuffer * buffer)
{
  GstMimiEnc *self = GST_MIMI_ENC (encoder);
  g_autoptr (GError) error = NULL;
  GstMapInfo map;

  /* Drain: every sample handed to us has already been encoded. */
  if (buffer == NULL)
    return GST_FLOW_OK;
  if (G_UNLIKELY (self->coder.session == NULL))
    goto not_started;
  if (G_UNLIKELY (moshi_mimi_session_num_codebooks (self->coder.session) !=
          self->codebooks))
    goto codebooks_changed;

  const GstAudioInfo *info = gst_audio_encoder_get_audio_info (encoder);
  if (!gst_buffer_map (buffer, &map, GST_MAP_READ))
    goto map_failed;
  gsize n_samples = MIN (map.size / GST_AUDIO_INFO_BPF (info),
      (gsize) self->frame_size);
  gsize replaced = fill_frame (self, GST_AUDIO_INFO_FORMAT (info), map.data,
      n_samples);
  gst_buffer_unmap (buffer, &map);

  if (G_UNLIKELY (replaced > 0)) {
    GST_DEBUG_OBJECT (self, "replaced %" G_GSIZE_FORMAT " non-finite samples "
        "by silence", replaced);
    if (!self->warned_non_finite) {
      GST_ELEMENT_WARNING (self, STREAM, ENCODE,
          ("Input audio contains non-finite samples (NaN or infinity)"),
          ("%" G_GSIZE_FORMAT " of the frame at %" GST_TIME_FORMAT " replaced "
              "by silence; further occurrences are only logged", replaced,
              GST_TIME_ARGS (GST_BUFFER_PTS (buffer))));
      self->warned_non_finite = TRUE;
    }
  }

  if (!gst_moshi_mimi_coder_encode (&self->coder, self->pcm, self->codes,
          &error))
    goto encode_failed;

  gsize out_size = (gsize) self->codebooks * 2;
  GstBuffer *out = gst_audio_encoder_allocate_output_buffer (encoder, out_size);
  if (!gst_buffer_map (out, &map, GST_MAP_WRITE)) {
    gst_buffer_unref (out);
    goto map_failed;
  }
  /* Codes are in [0, codebook size), which fits 16 bits (checked at load time). */
  gst_moshi_codes_pack (map.data, self->codes, self->codebooks);
  gst_buffer_unmap (out, &map);

  if (n_samples < (gsize) self->frame_size) {
    /* The last frame of a stream (or before a discontinuity): tell the decoder how much
     * of the decoded frame is padding. */
    GST_DEBUG_OBJECT (self, "short frame of %" G_GSIZE_FORMAT " samples, "
        "padded with %" G_GSIZE_FORMAT " zeros", n_samples,
        self->frame_size - n_samples);
    gst_buffer_add_audio_clipping_meta (out, GST_FORMAT_DEFAULT, 0,
        self->frame_size - n_samples);
  }

  return gst_audio_encoder_finish_frame (encoder, out, (gint) n_samples);

  /* ERRORS */
not_started:
  {
    GST_DEBUG_OBJECT (self, "data before the stream started");
    return GST_FLOW_FLUSHING;
  }
codebooks_changed:
  {
    GST_ELEMENT_ERROR (self, CORE, NEGOTIATION, (NULL),
        ("num-codebooks changed from %d to %d while streaming; it can only "
            "change in the NULL or READY state", self->codebooks,
            moshi_mimi_session_num_codebooks (self->coder.session)));
    return GST_FLOW_NOT_NEGOTIATED;
  }
map_failed:
  {
    GST_ELEMENT_ERROR (self, RESOURCE, FAILED, (NULL),
        ("Could not map a buffer"));
    return GST_FLOW_ERROR;
  }
encode_failed:
  {
    if (gst_moshi_handle_device_failure (GST_ELEMENT (self),
            &self->coder.device_failed, "Mimi encoding", error))
      return GST_FLOW_ERROR;
    GST_ELEMENT_ERROR (self, STREAM, ENCODE, (NULL),
        ("Mimi encoding failed: %s", error->message));
    return GST_FLOW_ERROR;
  }
}

static void
gst_mimi_enc_flush (GstAudioEncoder * encoder)
{
  GstMimiEnc *self = GST_MIMI_ENC (encoder);

  /* A flush starts a new stream: the convolution history and attention caches of the
   * old one must not colour the first frames after a seek. */
  GST_DEBUG_OBJECT (self, "flush: resetting the encoder state");
  if (self->coder.session != NULL)
    moshi_mimi_session_reset_encoder (self->coder.session);
}

static gboolean
gst_mimi_enc_sink_query (GstAudioEncoder * encoder, GstQuery * query)
{
  gboolean ret = GST_AUDIO_ENCODER_CLASS (parent_class)->sink_query (encoder,
      query);

  if (ret && GST_QUERY_TYPE (query) == GST_QUERY_ACCEPT_CAPS) {
    gboolean accepted;
    GstCaps *caps;

    gst_query_parse_accept_caps_result (query, &accepted);
    if (!accepted) {
      gst_query_parse_accept_caps (query, &caps);
      gst_moshi_log_refused_caps (GST_ELEMENT (encoder), GST_CAT_DEFAULT,
          GST_AUDIO_ENCODER_SINK_PAD (encoder), caps,
          "mimienc takes 24000 Hz mono F32LE or S16LE audio: put "
          "audioconvert ! audioresample in front of it");
    }
  }
  return ret;
}

static void
gst_mimi_enc_set_property (GObject * object, guint prop_id,
    const GValue * value, GParamSpec * pspec)
{
  GstMimiEnc *self = GST_MIMI_ENC (object);

  if (gst_moshi_settings_set_property (&self->settings, object, prop_id,
          PROP_FIRST_SHARED, value))
    return;

  switch (prop_id) {
    case PROP_NUM_CODEBOOKS:
      GST_OBJECT_LOCK (self);
      self->num_codebooks = g_value_get_int (value);
      GST_OBJECT_UNLOCK (self);
      break;
    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
      break;
  }
}

static void
gst_mimi_enc_get_property (GObject * object, guint prop_id, GValue * value,
    GParamSpec * pspec)
{
  GstMimiEnc *self = GST_MIMI_ENC (object);

  if (gst_moshi_settings_get_property (&self->settings, &self->coder, object, prop_id,
          PROP_FIRST_SHARED, value))
    return;

  switch (prop_id) {
    case PROP_NUM_CODEBOOKS:
      GST_OBJECT_LOCK (self);
      g_value_set_int (value, self->num_codebooks);
      GST_OBJECT_UNLOCK (self);
      break;
    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
      break;
  }
}

static void
gst_mimi_enc_finalize (GObject * object)
{
  GstMimiEnc *self = GST_MIMI_ENC (object);

  gst_moshi_settings_clear (&self->settings);
  G_OBJECT_CLASS (parent_class)->finalize (object);
}

static void
gst_mimi_enc_class_init (GstMimiEncClass * klass)
{
  GObjectClass *gobject_class = G_OBJECT_CLASS (klass);
  GstElementClass *element_class = GST_ELEMENT_CLASS (klass);
  GstAudioEncoderClass *encoder_class = GST_AUDIO_ENCODER_CLASS (klass);

  GST_DEBUG_CATEGORY_INIT (gst_mimi_enc_debug, "mimienc", 0,
      "Mimi speech encoder");

  gobject_class->set_property = gst_mimi_enc_set_property;
  gobject_class->get_property = gst_mimi_enc_get_property;
  gobject_class->finalize = gst_mimi_enc_finalize;

  gst_moshi_settings_install_properties (gobject_class, PROP_FIRST_SHARED);
  /**
   * GstMimiEnc:num-codebooks:
   *
   * Codebooks (residual quantiser levels) written per frame: more codebooks,
   * better quality, higher bit rate (each costs 16 bits per 80 ms frame in
   * the u16le stream format). Moshi uses 8. Must not exceed the model's
   * codebook count (32 for the released Mimi).
   */
  g_object_class_install_property (gobject_class, PROP_NUM_CODEBOOKS,
      g_param_spec_int ("num-codebooks", "Codebooks",
          "Codebooks written per frame (at most the model's)",
          1, MAX_NUM_CODEBOOKS, DEFAULT_NUM_CODEBOOKS,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS |
          GST_PARAM_MUTABLE_READY));

  gst_element_class_add_static_pad_template (element_class, &sink_template);
  gst_element_class_add_static_pad_template (element_class, &src_template);
  gst_element_class_set_static_metadata (element_class,
      "Mimi speech encoder", "Codec/Encoder/Audio",
      "Encodes 24 kHz mono audio into Kyutai Mimi codec tokens "
      "(12.5 frames per second)", "gst-moshi developers");
  gst_element_class_add_static_metadata (element_class, GST_ELEMENT_METADATA_DOC_URI,
      GST_MOSHI_DOC_URI ("mimienc"));

  element_class->change_state = GST_DEBUG_FUNCPTR (gst_mimi_enc_change_state);
  encoder_class->close = GST_DEBUG_FUNCPTR (gst_mimi_enc_close);
  encoder_class->start = GST_DEBUG_FUNCPTR (gst_mimi_enc_start);
  encoder_class->stop = GST_DEBUG_FUNCPTR (gst_mimi_enc_stop);
  encoder_class->set_format = GST_DEBUG_FUNCPTR (gst_mimi_enc_set_format);
  encoder_class->handle_frame = GST_DEBUG_FUNCPTR (gst_mimi_enc_handle_frame);
  encoder_class->flush = GST_DEBUG_FUNCPTR (gst_mimi_enc_flush);
  encoder_class->sink_query = GST_DEBUG_FUNCPTR (gst_mimi_enc_sink_query);
}

static void
gst_mimi_enc_init (GstMimiEnc * self)
{
  gst_moshi_settings_init (&self->settings);
  self->num_codebooks = DEFAULT_NUM_CODEBOOKS;
  GST_PAD_SET_ACCEPT_TEMPLATE (GST_AUDIO_ENCODER_SINK_PAD (self));
}
