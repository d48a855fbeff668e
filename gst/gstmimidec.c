/* gst-moshi: mimidec, Mimi tokens to raw audio. */

/**
 * SECTION:element-mimidec
 * @title: mimidec
 * @see_also: mimienc, gdpdepay
 *
 * Decodes the tokens of Kyutai's Mimi neural speech codec (`audio/x-mimi`, as
 * made by mimienc) into 24 kHz mono audio, 1920 samples (80 ms) per token
 * frame. The number of codebooks is read from the caps; the model must be the
 * one the tokens were made with.
 *
 * Decoding is streaming and adds no latency. Buffers may hold one or several
 * frames. A #GstAudioClippingMeta on a buffer (mimienc puts one on the padded
 * last frame of a stream) is applied: the padding is cut from the output.
 * Where the meta got lost (gdppay does not store metas), a buffer duration
 * shorter than its frames is honoured the same way.
 *
 * With the inherited #GstAudioDecoder:plc property set, lost frames are
 * concealed: a GAP event, or a timestamp jump in the input, is filled with
 * audio of the same duration, made by decoding the last good frame once more
 * faded out to silence over one frame, then silence. Whatever the setting,
 * the first frame after a gap fades in over 10 ms so that resuming never
 * clicks. A buffer that is not a whole number of frames or holds a code
 * outside the codebooks is a decode error counted against
 * #GstAudioDecoder:max-errors and is treated as a lost frame.
 *
 * ## Example pipelines
 * |[
 * gst-launch-1.0 filesrc location=speech.mimi.gdp ! gdpdepay ! \
 *     mimidec model=mimi.safetensors ! audioconvert ! wavenc ! \
 *     filesink location=decoded.wav
 * ]| Decodes tokens stored by `mimienc ! gdppay ! filesink`.
 * |[
 * gst-launch-1.0 udpsrc port=5000 caps=application/x-rtp,media=application,clock-rate=90000,encoding-name=X-GST ! \
 *     rtpjitterbuffer do-lost=true ! rtpgstdepay ! \
 *     mimidec model=kyutai/moshiko-pytorch-bf16 plc=true ! audioconvert ! autoaudiosink
 * ]| Receives tokens sent with `mimienc ! rtpgstpay ! udpsink` and conceals
 * lost packets.
 */

#include "gstmimidec.h"

#include <math.h>
#include <string.h>

#include "gstmoshielements.h"

GST_DEBUG_CATEGORY_STATIC (gst_mimi_dec_debug);
#define GST_CAT_DEFAULT gst_mimi_dec_debug

/* Frames decoded and pushed at a time when a buffer holds many: bounds the memory a large
 * buffer can make us allocate (2 s of audio). */
#define FRAMES_PER_CHUNK 25
/* Longer gaps are left as gaps (the output timestamps jump) instead of being filled. */
#define MAX_CONCEALED_GAP (10 * GST_SECOND)
/* Fade-in after a gap: 10 ms. */
#define FADE_IN_PER_SECOND 100

enum
{
  PROP_0,
  PROP_FIRST_SHARED,
  /* model, config, device, threads */
};

struct _GstMimiDec
{
  GstAudioDecoder parent;

  /* Properties, under the object lock. */
  GstMoshiSettings settings;

  /* From open() to close(). start() replaces it when the model settings changed in
   * READY (no data flows then: the base class starts before activating its pads). */
  GstMoshiLoadedModel loaded;

  /* From start() to stop(), used by the streaming thread. */
  GstMoshiMimiCoder coder;
  gint rate;
  gint frame_size;
  gint codebook_size;
  GstClockTime frame_duration;
  gfloat *pcm;                  /* output being built */
  gsize pcm_len;
  gint32 *codes;                /* one chunk, [codebook][frame] */

  /* From set_format(). */
  gint codebooks;

  /* Concealment, see the SECTION comment. */
  gint32 *last_codes;           /* last frame decoded from real tokens, [codebook] */
  gboolean have_last_codes;
  gboolean concealing;          /* the last output was concealment */
  gboolean fade_in;             /* fade in the next decoded frame */
  GstClockTime next_pts;        /* where the next input should start */
  GstClockTime lost_until;      /* end of the bad buffers since the last good one */
};

#define gst_mimi_dec_parent_class parent_class
G_DEFINE_TYPE (GstMimiDec, gst_mimi_dec, GST_TYPE_AUDIO_DECODER);
GST_ELEMENT_REGISTER_DEFINE_WITH_CODE (mimidec, "mimidec", GST_RANK_SECONDARY,
    GST_TYPE_MIMI_DEC, moshi_element_init (plugin));

static GstStaticPadTemplate sink_template = GST_STATIC_PAD_TEMPLATE ("sink",
    GST_PAD_SINK,
    GST_PAD_ALWAYS,
    GST_STATIC_CAPS (GST_MOSHI_TOKEN_CAPS));

static GstStaticPadTemplate src_template = GST_STATIC_PAD_TEMPLATE ("src",
    GST_PAD_SRC,
    GST_PAD_ALWAYS,
    GST_STATIC_CAPS ("audio/x-raw, format = (string) { F32LE, S16LE }, "
        "layout = (string) interleaved, rate = (int) 24000, channels = (int) 1"));

static void
reset_concealment (GstMimiDec * self)
{
  self->have_last_codes = FALSE;
  self->concealing = FALSE;
  self->fade_in = FALSE;
  self->next_pts = GST_CLOCK_TIME_NONE;
  self->lost_until = GST_CLOCK_TIME_NONE;
}

static gboolean
gst_mimi_dec_open (GstAudioDecoder * decoder)
{
  GstMimiDec *self = GST_MIMI_DEC (decoder);

  return gst_moshi_loaded_model_ensure (&self->loaded, GST_ELEMENT (self),
      &self->settings);
}

static gboolean start_session (GstMimiDec * self);
static gboolean gst_mimi_dec_stop (GstAudioDecoder * decoder);

/* The model is loaded, and the session started, here rather than in the base class's open and
 * start: when those fail, the base class posts a generic "Failed to open codec" or "Failed to
 * start codec" after the element's own error, and a failed load or start (a session that does
 * not fit in device memory) must post exactly one error, the one that says why. */
static GstStateChangeReturn
gst_mimi_dec_change_state (GstElement * element, GstStateChange transition)
{
  GstMimiDec *self = GST_MIMI_DEC (element);
  if (transition == GST_STATE_CHANGE_NULL_TO_READY
      && !gst_mimi_dec_open (GST_AUDIO_DECODER (element)))
    return GST_STATE_CHANGE_FAILURE;
  if (transition == GST_STATE_CHANGE_READY_TO_PAUSED && !start_session (self))
    return GST_STATE_CHANGE_FAILURE;
  GstStateChangeReturn ret =
      GST_ELEMENT_CLASS (parent_class)->change_state (element, transition);
  if (ret == GST_STATE_CHANGE_FAILURE
      && transition == GST_STATE_CHANGE_READY_TO_PAUSED)
    gst_mimi_dec_stop (GST_AUDIO_DECODER (element));
  return ret;
}

static gboolean
gst_mimi_dec_close (GstAudioDecoder * decoder)
{
  GstMimiDec *self = GST_MIMI_DEC (decoder);

  gst_moshi_loaded_model_clear (&self->loaded, GST_ELEMENT (self));
  return TRUE;
}

static gboolean
start_session (GstMimiDec * self)
{
  g_autoptr (GError) error = NULL;

  /* The model settings may have changed while in READY. */
  if (!gst_moshi_loaded_model_ensure (&self->loaded, GST_ELEMENT (self),
          &self->settings))
    return FALSE;

  GST_OBJECT_LOCK (self);
  gint threads = self->settings.threads;
  gboolean shared = self->settings.shared_scheduler;
  guint max_streams = self->settings.max_streams;
  GST_OBJECT_UNLOCK (self);

  MoshiMimi *mimi = self->loaded.mimi;
  /* One frame per call, as the encoder does: the configuration whose output is the
   * documented streaming reference, whatever the buffer sizes. */
  MoshiMimiSessionOptions options = {
    .n_threads = threads,
    .max_frames_per_call = 1,
  };
  if (!gst_moshi_mimi_coder_start (&self->coder, GST_ELEMENT (self), mimi, &options, shared,
          max_streams, &error))
    goto session_failed;
  return TRUE;

  /* ERRORS */
session_failed:
  {
    if (gst_moshi_post_no_memory (GST_ELEMENT (self),
            "Could not start a Mimi decoder stream", error))
      return FALSE;
    GST_ELEMENT_ERROR (self, LIBRARY, INIT,
        ("Could not start a Mimi decoder stream: %s", error->message),
        ("model %s, threads=%d, shared-scheduler=%d", moshi_mimi_get_path (mimi),
            threads, shared));
    return FALSE;
  }
}

static gboolean
gst_mimi_dec_start (GstAudioDecoder * decoder)
{
  GstMimiDec *self = GST_MIMI_DEC (decoder);

  /* started by change_state, unless the base class was driven some other way */
  if (self->coder.element == NULL && !start_session (self))
    return FALSE;
  MoshiMimi *mimi = self->loaded.mimi;
  self->rate = moshi_mimi_sample_rate (mimi);
  self->frame_size = moshi_mimi_frame_size (mimi);
  self->codebook_size = moshi_mimi_codebook_size (mimi);
  self->frame_duration =
      gst_util_uint64_scale_int (GST_SECOND, self->frame_size, self->rate);
  self->codebooks = 0;
  reset_concealment (self);

  /* Both are reset with the rest of the base class context at every start. */
  gst_audio_decoder_set_plc_aware (decoder, TRUE);
  /* Every frame has the same size, so a byte position is a time: this lets a raw token
   * file (filesrc, BYTES segment) play, seek and report its duration. */
  gst_audio_decoder_set_estimate_rate (decoder, TRUE);
  return TRUE;
}

static gboolean
gst_mimi_dec_stop (GstAudioDecoder * decoder)
{
  GstMimiDec *self = GST_MIMI_DEC (decoder);

  gst_moshi_mimi_coder_stop (&self->coder);
  g_clear_pointer (&self->pcm, g_free);
  self->pcm_len = 0;
  g_clear_pointer (&self->codes, g_free);
  g_clear_pointer (&self->last_codes, g_free);
  self->codebooks = 0;
  reset_concealment (self);
  return TRUE;
}

/* F32LE unless downstream cannot take it. */
static GstAudioFormat
choose_output_format (GstMimiDec * self)
{
  GstAudioFormat format = GST_AUDIO_FORMAT_F32LE;
  g_autoptr (GstCaps) allowed =
      gst_pad_get_allowed_caps (GST_AUDIO_DECODER_SRC_PAD (self));

  if (allowed != NULL) {
    g_autoptr (GstCaps) f32 = gst_caps_new_simple ("audio/x-raw",
        "format", G_TYPE_STRING, "F32LE", NULL);
    g_autoptr (GstCaps) s16 = gst_caps_new_simple ("audio/x-raw",
        "format", G_TYPE_STRING, "S16LE", NULL);
    if (!gst_caps_can_intersect (allowed, f32)
        && gst_caps_can_intersect (allowed, s16))
      format = GST_AUDIO_FORMAT_S16LE;
  }
  return format;
}

static gboolean
gst_mimi_dec_set_format (GstAudioDecoder * decoder, GstCaps * caps)
{
  GstMimiDec *self = GST_MIMI_DEC (decoder);
  MoshiMimi *mimi = self->loaded.mimi;
  GstStructure *s = gst_caps_get_structure (caps, 0);
  gint codebooks, value, num, den;

  GST_DEBUG_OBJECT (self, "input caps %" GST_PTR_FORMAT, caps);

  if (!gst_structure_get_int (s, "codebooks", &codebooks))
    goto no_codebooks;
  if (codebooks < 1 || codebooks > moshi_mimi_max_codebooks (mimi))
    goto too_many_codebooks;
  if (gst_structure_get_int (s, "codebook-size", &value)
      && value != self->codebook_size)
    goto other_model;
  if (gst_structure_get_int (s, "rate", &value) && value != self->rate)
    goto other_model;
  if (gst_structure_get_fraction (s, "framerate", &num, &den)
      && (gint64) num * self->frame_size != (gint64) den * self->rate)
    goto other_model;

  if (codebooks != self->codebooks) {
    /* Last codes of another width cannot be replayed. */
    self->codebooks = codebooks;
    g_free (self->codes);
    self->codes = g_new0 (gint32, (gsize) codebooks * FRAMES_PER_CHUNK);
    g_free (self->last_codes);
    self->last_codes = g_new0 (gint32, codebooks);
    self->have_last_codes = FALSE;
  }

  GstAudioInfo info;
  gst_audio_info_set_format (&info, choose_output_format (self), self->rate, 1,
      NULL);
  GST_DEBUG_OBJECT (self, "%d codebooks, output %s", codebooks,
      GST_AUDIO_INFO_NAME (&info));
  return gst_audio_decoder_set_output_format (decoder, &info);

  /* ERRORS */
no_codebooks:
  {
    GST_ELEMENT_ERROR (self, CORE, NEGOTIATION, (NULL),
        ("caps without a codebooks field: %" GST_PTR_FORMAT, caps));
    return FALSE;
  }
too_many_codebooks:
  {
    GST_ELEMENT_ERROR (self, CORE, NEGOTIATION,
        ("The tokens have %d codebooks, but Mimi model \"%s\" has %d",
            codebooks, self->loaded.model, moshi_mimi_max_codebooks (mimi)),
        ("caps %" GST_PTR_FORMAT ", file %s", caps,
            moshi_mimi_get_path (mimi)));
    return FALSE;
  }
other_model:
  {
    g_autoptr (GstCaps) expected = gst_moshi_token_caps_new (mimi, codebooks);
    GST_ELEMENT_ERROR (self, CORE, NEGOTIATION,
        ("The tokens were made by another Mimi model than \"%s\"",
            self->loaded.model),
        ("caps %" GST_PTR_FORMAT ", the model makes %" GST_PTR_FORMAT
            " (file %s)", caps, expected, moshi_mimi_get_path (mimi)));
    return FALSE;
  }
}

/* The base class would set the caps of the current format again: a RECONFIGURE from
 * downstream (a capsfilter that now wants S16LE, say) chooses the format anew first. */
static gboolean
gst_mimi_dec_negotiate (GstAudioDecoder * decoder)
{
  GstMimiDec *self = GST_MIMI_DEC (decoder);
  const GstAudioInfo *current = gst_audio_decoder_get_audio_info (decoder);
  GstAudioFormat format = choose_output_format (self);

  if (GST_AUDIO_INFO_IS_VALID (current)
      && format != GST_AUDIO_INFO_FORMAT (current)) {
    GstAudioInfo info;
    gst_audio_info_set_format (&info, format, self->rate, 1, NULL);
    GST_DEBUG_OBJECT (self, "downstream asks for %s output",
        GST_AUDIO_INFO_NAME (&info));
    if (!gst_audio_decoder_set_output_format (decoder, &info))
      return FALSE;
  }
  return GST_AUDIO_DECODER_CLASS (parent_class)->negotiate (decoder);
}

static gfloat *
ensure_pcm (GstMimiDec * self, gsize n)
{
  if (n > self->pcm_len) {
    self->pcm = g_renew (gfloat, self->pcm, n);
    self->pcm_len = n;
  }
  return self->pcm;
}

/* Fills out[0..n) with concealment, see the SECTION comment. */
static void
conceal (GstMimiDec * self, gfloat * out, gsize n)
{
  memset (out, 0, n * sizeof (gfloat));
  if (n == 0)
    return;

  if (self->have_last_codes && !self->concealing) {
    /* Let the decoder carry on from the last good tokens for one frame and fade that to
     * silence, so that the sound dies away instead of stopping mid-waveform. Running the
     * decoder also keeps its state moving with time. */
    g_autofree gfloat *frame = g_new (gfloat, self->frame_size);
    if (gst_moshi_mimi_coder_decode (&self->coder, self->last_codes,
            self->codebooks, 1, frame, NULL)) {
      gsize fade = MIN (n, (gsize) self->frame_size);
      for (gsize i = 0; i < fade; i++)
        out[i] = frame[i] * 0.5f * (1.0f + cosf ((gfloat) G_PI * i / fade));
    }
  }
  GST_DEBUG_OBJECT (self, "concealed %" G_GSIZE_FORMAT " samples", n);
  self->concealing = TRUE;
  self->fade_in = TRUE;
}

static void
apply_fade_in (GstMimiDec * self, gfloat * pcm, gsize n)
{
  gsize fade = MIN (n, (gsize) (self->rate / FADE_IN_PER_SECOND));

  for (gsize i = 0; i < fade; i++)
    pcm[i] *= 0.5f * (1.0f - cosf ((gfloat) G_PI * i / fade));
  self->fade_in = FALSE;
}

/* Writes n samples in the negotiated format. */
static void
write_samples (const GstAudioInfo * info, guint8 * dest, const gfloat * pcm,
    gsize n)
{
  if (GST_AUDIO_INFO_FORMAT (info) == GST_AUDIO_FORMAT_S16LE) {
    for (gsize i = 0; i < n; i++) {
      gfloat v = roundf (pcm[i] * 32768.0f);
      GST_WRITE_UINT16_LE (dest + 2 * i,
          (guint16) (gint16) CLAMP (v, -32768.0f, 32767.0f));
    }
  } else {
    memcpy (dest, pcm, n * sizeof (gfloat));
  }
}

/* A buffer of n samples in the negotiated format. */
static GstFlowReturn
make_output_buffer (GstMimiDec * self, const gfloat * pcm, gsize n,
    GstBuffer ** out)
{
  GstAudioDecoder *decoder = GST_AUDIO_DECODER (self);
  GstPad *srcpad = GST_AUDIO_DECODER_SRC_PAD (self);
  GstMapInfo map;

  /* Downstream asked for another format (RECONFIGURE): the base class would renegotiate
   * only as the buffer goes out, after the samples were written in the old format. */
  if (gst_pad_needs_reconfigure (srcpad) && !gst_audio_decoder_negotiate (decoder))
    return GST_PAD_IS_FLUSHING (srcpad) ? GST_FLOW_FLUSHING :
        GST_FLOW_NOT_NEGOTIATED;

  const GstAudioInfo *info = gst_audio_decoder_get_audio_info (decoder);
  GstBuffer *buffer = gst_audio_decoder_allocate_output_buffer (decoder,
      n * GST_AUDIO_INFO_BPF (info));
  if (!gst_buffer_map (buffer, &map, GST_MAP_WRITE)) {
    gst_buffer_unref (buffer);
    GST_ELEMENT_ERROR (self, RESOURCE, FAILED, (NULL),
        ("Could not map a buffer"));
    return GST_FLOW_ERROR;
  }
  write_samples (info, map.data, pcm, n);
  gst_buffer_unmap (buffer, &map);
  *out = buffer;
  return GST_FLOW_OK;
}

/* Pushes n samples as a subframe of the current input frame. */
static GstFlowReturn
push_samples (GstMimiDec * self, const gfloat * pcm, gsize n)
{
  GstBuffer *out;

  if (n == 0)
    return GST_FLOW_OK;
  GstFlowReturn ret = make_output_buffer (self, pcm, n, &out);
  if (ret != GST_FLOW_OK)
    return ret;
  return gst_audio_decoder_finish_subframe (GST_AUDIO_DECODER (self), out);
}

/* Ends the input frame whose audio went out as subframes, whatever became of the pushes;
 * returns the first failure. GstAudioDecoder counts the samples pushed for the current input
 * frame, and only while that count is zero does it send its pending events (the SEGMENT of a
 * flush, the caps) ahead of output and resync the output timestamps. Only a finished frame
 * clears the count: a flush or a stop does not (GStreamer 1.22 to 1.29 at least). A frame
 * left unfinished when a push returned FLUSHING (a seek or a state change racing the
 * streaming thread) would send the first audio after the flush ahead of its SEGMENT, and the
 * next flush would drop that SEGMENT unsent. */
static GstFlowReturn
finish_input_frame (GstMimiDec * self, GstFlowReturn push_ret)
{
  GstFlowReturn ret =
      gst_audio_decoder_finish_subframe (GST_AUDIO_DECODER (self), NULL);

  return push_ret != GST_FLOW_OK ? push_ret : ret;
}

/* At a drain (EOS, DISCONT), conceals bad buffers that no good buffer has followed: their
 * time would otherwise only be filled in front of the next good one. */
static GstFlowReturn
drain (GstMimiDec * self)
{
  GstAudioDecoder *decoder = GST_AUDIO_DECODER (self);
  GstClockTime from = self->next_pts, to = self->lost_until;

  self->lost_until = GST_CLOCK_TIME_NONE;
  if (!gst_audio_decoder_get_plc (decoder) || !GST_CLOCK_TIME_IS_VALID (from)
      || !GST_CLOCK_TIME_IS_VALID (to) || to <= from || to - from > MAX_CONCEALED_GAP)
    return GST_FLOW_OK;

  gsize n = gst_util_uint64_scale_round (to - from, self->rate, GST_SECOND);
  gfloat *pcm = ensure_pcm (self, MAX (n, 1));
  conceal (self, pcm, n);
  self->next_pts = to;
  if (n == 0)
    return GST_FLOW_OK;

  GstBuffer *out;
  GstFlowReturn ret = make_output_buffer (self, pcm, n, &out);
  if (ret != GST_FLOW_OK)
    return ret;
  /* No input frame is left to finish: the base class times this output right after the
   * last one, which is where the lost time starts. */
  return gst_audio_decoder_finish_frame (decoder, out, 1);
}

/* An empty buffer: the base class's way of asking for concealment of a GAP event when
 * the plc property is set. */
static GstFlowReturn
handle_gap (GstMimiDec * self, GstBuffer * buffer)
{
  GstAudioDecoder *decoder = GST_AUDIO_DECODER (self);
  GstClockTime duration = GST_BUFFER_DURATION (buffer);

  if (!GST_CLOCK_TIME_IS_VALID (duration) || duration > MAX_CONCEALED_GAP) {
    GST_DEBUG_OBJECT (self, "not concealing a gap of %" GST_TIME_FORMAT,
        GST_TIME_ARGS (duration));
    self->fade_in = TRUE;
    return gst_audio_decoder_finish_frame (decoder, NULL, 1);
  }

  gsize n = gst_util_uint64_scale_round (duration, self->rate, GST_SECOND);
  gfloat *pcm = ensure_pcm (self, MAX (n, 1));
  conceal (self, pcm, n);
  if (GST_BUFFER_PTS_IS_VALID (buffer))
    self->next_pts = GST_BUFFER_PTS (buffer) + duration;

  return finish_input_frame (self, push_samples (self, pcm, n));
}

static GstFlowReturn
gst_mimi_dec_handle_frame (GstAudioDecoder * decoder, GstBuffer * buffer)
{
  GstMimiDec *self = GST_MIMI_DEC (decoder);
  GstFlowReturn ret = GST_FLOW_OK;
  GstMapInfo map;
  g_autoptr (GError) error = NULL;

  /* Drain: no tokens are held back, only the time of trailing bad buffers. */
  if (buffer == NULL)
    return drain (self);

  gsize size = gst_buffer_get_size (buffer);
  if (size == 0)
    return handle_gap (self, buffer);
  /* The base class refuses data before caps; stay safe should that change. */
  if (G_UNLIKELY (self->codebooks == 0 || self->coder.session == NULL))
    goto not_negotiated;

  GstClockTime pts = GST_BUFFER_PTS (buffer);
  GstClockTime in_duration = GST_BUFFER_DURATION (buffer);
  gsize frame_bytes = (gsize) self->codebooks * 2;
  if (size % frame_bytes != 0)
    goto wrong_size;
  gsize n_frames = size / frame_bytes;

  if (!gst_buffer_map (buffer, &map, GST_MAP_READ))
    goto map_failed;
  /* Check every code before decoding any, so that a bad buffer leaves the decoder state
   * as it was. */
  if (gst_moshi_codes_find_invalid (map.data, n_frames * self->codebooks,
          (guint) self->codebook_size) >= 0) {
    gst_buffer_unmap (buffer, &map);
    goto bad_code;
  }

  /* Frames lost before this buffer: its timestamp is later than where the last one ended. */
  gsize n_concealed = 0;
  if (GST_CLOCK_TIME_IS_VALID (pts) && GST_CLOCK_TIME_IS_VALID (self->next_pts)
      && pts > self->next_pts && pts - self->next_pts >= self->frame_duration / 2) {
    GstClockTime gap = pts - self->next_pts;
    GST_DEBUG_OBJECT (self, "%" GST_TIME_FORMAT " missing before %"
        GST_TIME_FORMAT, GST_TIME_ARGS (gap), GST_TIME_ARGS (pts));
    self->fade_in = TRUE;
    /* The concealment goes out in front of this buffer's audio, so the output must start
     * where the lost frames started: the base class timestamps output from the input
     * frame, which it made writable and hands to us to finish. */
    if (gst_audio_decoder_get_plc (decoder) && gap <= MAX_CONCEALED_GAP
        && gst_buffer_is_writable (buffer)) {
      n_concealed = gst_util_uint64_scale_round (gap, self->rate, GST_SECOND);
      GST_BUFFER_PTS (buffer) = self->next_pts;
    }
  }

  /* Padding to drop, from the encoder of the last frame of a stream. */
  gsize total = n_frames * self->frame_size;
  gsize clip_start = 0, clip_end = 0;
  GstAudioClippingMeta *clip = gst_buffer_get_audio_clipping_meta (buffer);
  if (clip != NULL) {
    if (clip->format == GST_FORMAT_DEFAULT) {
      clip_start = MIN (clip->start, total);
      clip_end = MIN (clip->end, total - clip_start);
    } else if (clip->format == GST_FORMAT_TIME) {
      clip_start = MIN (gst_util_uint64_scale_round (clip->start, self->rate,
              GST_SECOND), total);
      clip_end = MIN (gst_util_uint64_scale_round (clip->end, self->rate,
              GST_SECOND), total - clip_start);
    }
    GST_LOG_OBJECT (self, "clipping %" G_GSIZE_FORMAT " + %" G_GSIZE_FORMAT
        " samples", clip_start, clip_end);
  } else if (GST_CLOCK_TIME_IS_VALID (in_duration) && in_duration > 0) {
    /* Without the meta (gdppay, for one, does not carry metas) a duration shorter than
     * the frames tells how much of them is real: mimienc gives a padded last frame the
     * duration of its real samples. Less than 1 ms short is rounding, not padding. */
    gsize real = gst_util_uint64_scale_round (in_duration, self->rate,
        GST_SECOND);
    if (real + self->rate / 1000 < total) {
      clip_end = total - real;
      GST_LOG_OBJECT (self, "duration %" GST_TIME_FORMAT ": dropping the last %"
          G_GSIZE_FORMAT " samples", GST_TIME_ARGS (in_duration), clip_end);
    }
  }

  /* Decode in chunks; the first chunk is preceded by the concealment. Each chunk becomes
   * one output buffer with the samples that survive clipping. */
  gsize decoded = 0;
  for (gsize f = 0; f < n_frames && ret == GST_FLOW_OK; f += FRAMES_PER_CHUNK) {
    gsize chunk = MIN ((gsize) FRAMES_PER_CHUNK, n_frames - f);
    gsize chunk_samples = chunk * self->frame_size;
    gsize prefix = f == 0 ? n_concealed : 0;
    gfloat *pcm = ensure_pcm (self, prefix + chunk_samples);

    if (prefix > 0)
      conceal (self, pcm, prefix);
    for (gsize j = 0; j < chunk; j++)
      gst_moshi_codes_unpack (self->codes + j, chunk,
          map.data + 2 * (f + j) * self->codebooks, self->codebooks);
    if (!gst_moshi_mimi_coder_decode (&self->coder, self->codes,
            self->codebooks, (gint) chunk, pcm + prefix, &error)) {
      gst_buffer_unmap (buffer, &map);
      goto decode_failed;
    }
    if (self->fade_in)
      apply_fade_in (self, pcm + prefix, chunk_samples);
    self->concealing = FALSE;

    /* Keep the decoded samples in [clip_start, total - clip_end). */
    gsize lo = MAX (decoded, clip_start);
    gsize hi = MIN (decoded + chunk_samples, total - clip_end);
    gsize keep_from = MIN (lo - decoded, chunk_samples);
    gsize keep_to = hi > lo ? hi - decoded : keep_from;
    if (prefix > 0 && keep_from > 0)
      memmove (pcm + prefix, pcm + prefix + keep_from,
          (keep_to - keep_from) * sizeof (gfloat));
    ret = push_samples (self, prefix > 0 ? pcm : pcm + keep_from,
        prefix + keep_to - keep_from);
    decoded += chunk_samples;
  }
  /* The codes of the last frame, for concealment. */
  gst_moshi_codes_unpack (self->last_codes, 1,
      map.data + 2 * (n_frames - 1) * self->codebooks, self->codebooks);
  self->have_last_codes = TRUE;
  self->lost_until = GST_CLOCK_TIME_NONE;
  gst_buffer_unmap (buffer, &map);

  if (GST_CLOCK_TIME_IS_VALID (pts)) {
    self->next_pts = pts + (GST_CLOCK_TIME_IS_VALID (in_duration) ? in_duration
        : gst_util_uint64_scale_int (GST_SECOND, (gint) (total - clip_start -
                clip_end), self->rate));
  }
  /* Also when clipping left nothing to push. */
  return finish_input_frame (self, ret);

  /* ERRORS */
not_negotiated:
  {
    GST_ELEMENT_ERROR (self, CORE, NEGOTIATION, (NULL),
        ("token buffer before the stream format"));
    return GST_FLOW_NOT_NEGOTIATED;
  }
wrong_size:
  {
    GST_AUDIO_DECODER_ERROR (self, 1, STREAM, DECODE, (NULL),
        ("token buffer of %" G_GSIZE_FORMAT " bytes is not a whole number of "
            "%d-codebook frames (%" G_GSIZE_FORMAT " bytes each)", size,
            self->codebooks, frame_bytes), ret);
    goto lost;
  }
bad_code:
  {
    GST_AUDIO_DECODER_ERROR (self, 1, STREAM, DECODE, (NULL),
        ("token buffer at %" GST_TIME_FORMAT " holds a code outside the "
            "model's %d-entry codebooks", GST_TIME_ARGS (pts),
            self->codebook_size), ret);
    goto lost;
  }
decode_failed:
  {
    /* not a lost buffer to conceal: every later one would fail the same way */
    if (gst_moshi_handle_device_failure (GST_ELEMENT (self),
            &self->coder.device_failed, "Mimi decoding", error))
      return finish_input_frame (self, GST_FLOW_ERROR);
    GST_AUDIO_DECODER_ERROR (self, 1, STREAM, DECODE, (NULL),
        ("Mimi decoding failed: %s", error->message), ret);
    goto lost;
  }
lost:
  {
    /* Handled as a lost buffer. No output now: output would count as a good frame for
     * max-errors, which limits consecutive errors. With plc the time it covered is filled
     * in front of the next good buffer (or at the next drain); in any case the next good
     * frame fades in. */
    self->fade_in = TRUE;
    if (GST_CLOCK_TIME_IS_VALID (pts)) {
      gsize frames = MAX (size / MAX (frame_bytes, 1), 1);
      self->lost_until = pts + (GST_CLOCK_TIME_IS_VALID (in_duration) ?
          in_duration : frames * self->frame_duration);
    }
    /* Chunks decoded before a failure have gone out as subframes. */
    return finish_input_frame (self, ret);
  }
map_failed:
  {
    GST_ELEMENT_ERROR (self, RESOURCE, FAILED, (NULL),
        ("Could not map a buffer"));
    return GST_FLOW_ERROR;
  }
}

static void
gst_mimi_dec_flush (GstAudioDecoder * decoder, gboolean hard)
{
  GstMimiDec *self = GST_MIMI_DEC (decoder);

  /* A soft flush is the base class draining at a DISCONT: the stream goes on, and gap
   * detection needs to know where it was. A hard flush (seek) starts a new stream. */
  if (!hard)
    return;
  GST_DEBUG_OBJECT (self, "flush: resetting the decoder state");
  if (self->coder.session != NULL)
    moshi_mimi_session_reset_decoder (self->coder.session);
  reset_concealment (self);
}

static gboolean
gst_mimi_dec_sink_event (GstAudioDecoder * decoder, GstEvent * event)
{
  GstMimiDec *self = GST_MIMI_DEC (decoder);

  /* A new segment is a new timeline: a jump to it is not a loss. */
  if (GST_EVENT_TYPE (event) == GST_EVENT_SEGMENT) {
    self->next_pts = GST_CLOCK_TIME_NONE;
    self->lost_until = GST_CLOCK_TIME_NONE;
  }

  return GST_AUDIO_DECODER_CLASS (parent_class)->sink_event (decoder, event);
}

static gboolean
gst_mimi_dec_sink_query (GstAudioDecoder * decoder, GstQuery * query)
{
  gboolean ret = GST_AUDIO_DECODER_CLASS (parent_class)->sink_query (decoder,
      query);

  if (ret && GST_QUERY_TYPE (query) == GST_QUERY_ACCEPT_CAPS) {
    gboolean accepted;
    GstCaps *caps;

    gst_query_parse_accept_caps_result (query, &accepted);
    if (!accepted) {
      gst_query_parse_accept_caps (query, &caps);
      gst_moshi_log_refused_caps (GST_ELEMENT (decoder), GST_CAT_DEFAULT,
          GST_AUDIO_DECODER_SINK_PAD (decoder), caps,
          "mimidec takes the audio/x-mimi tokens mimienc makes");
    }
  }
  return ret;
}

static gboolean
gst_mimi_dec_transform_meta (GstAudioDecoder * decoder, GstBuffer * outbuf,
    GstMeta * meta, GstBuffer * inbuf)
{
  /* The clipping has been applied to the decoded audio; passed on, it would make a
   * downstream element cut the audio a second time. */
  if (meta->info->api == GST_AUDIO_CLIPPING_META_API_TYPE)
    return FALSE;
  return GST_AUDIO_DECODER_CLASS (parent_class)->transform_meta (decoder,
      outbuf, meta, inbuf);
}

static void
gst_mimi_dec_set_property (GObject * object, guint prop_id,
    const GValue * value, GParamSpec * pspec)
{
  GstMimiDec *self = GST_MIMI_DEC (object);

  if (!gst_moshi_settings_set_property (&self->settings, object, prop_id,
          PROP_FIRST_SHARED, value))
    G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
}

static void
gst_mimi_dec_get_property (GObject * object, guint prop_id, GValue * value,
    GParamSpec * pspec)
{
  GstMimiDec *self = GST_MIMI_DEC (object);

  if (!gst_moshi_settings_get_property (&self->settings, &self->coder, object, prop_id,
          PROP_FIRST_SHARED, value))
    G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
}

static void
gst_mimi_dec_finalize (GObject * object)
{
  GstMimiDec *self = GST_MIMI_DEC (object);

  gst_moshi_settings_clear (&self->settings);
  G_OBJECT_CLASS (parent_class)->finalize (object);
}

static void
gst_mimi_dec_class_init (GstMimiDecClass * klass)
{
  GObjectClass *gobject_class = G_OBJECT_CLASS (klass);
  GstElementClass *element_class = GST_ELEMENT_CLASS (klass);
  GstAudioDecoderClass *decoder_class = GST_AUDIO_DECODER_CLASS (klass);

  GST_DEBUG_CATEGORY_INIT (gst_mimi_dec_debug, "mimidec", 0,
      "Mimi speech decoder");

  gobject_class->set_property = gst_mimi_dec_set_property;
  gobject_class->get_property = gst_mimi_dec_get_property;
  gobject_class->finalize = gst_mimi_dec_finalize;

  gst_moshi_settings_install_properties (gobject_class, PROP_FIRST_SHARED);

  gst_element_class_add_static_pad_template (element_class, &sink_template);
  gst_element_class_add_static_pad_template (element_class, &src_template);
  gst_element_class_set_static_metadata (element_class,
      "Mimi speech decoder", "Codec/Decoder/Audio",
      "Decodes Kyutai Mimi codec tokens into 24 kHz mono audio",
      "gst-moshi developers");
  gst_element_class_add_static_metadata (element_class, GST_ELEMENT_METADATA_DOC_URI,
      GST_MOSHI_DOC_URI ("mimidec"));

  element_class->change_state = GST_DEBUG_FUNCPTR (gst_mimi_dec_change_state);
  decoder_class->close = GST_DEBUG_FUNCPTR (gst_mimi_dec_close);
  decoder_class->start = GST_DEBUG_FUNCPTR (gst_mimi_dec_start);
  decoder_class->stop = GST_DEBUG_FUNCPTR (gst_mimi_dec_stop);
  decoder_class->set_format = GST_DEBUG_FUNCPTR (gst_mimi_dec_set_format);
  decoder_class->negotiate = GST_DEBUG_FUNCPTR (gst_mimi_dec_negotiate);
  decoder_class->handle_frame = GST_DEBUG_FUNCPTR (gst_mimi_dec_handle_frame);
  decoder_class->flush = GST_DEBUG_FUNCPTR (gst_mimi_dec_flush);
  decoder_class->sink_event = GST_DEBUG_FUNCPTR (gst_mimi_dec_sink_event);
  decoder_class->sink_query = GST_DEBUG_FUNCPTR (gst_mimi_dec_sink_query);
  decoder_class->transform_meta =
      GST_DEBUG_FUNCPTR (gst_mimi_dec_transform_meta);
}

static void
gst_mimi_dec_init (GstMimiDec * self)
{
  GstAudioDecoder *decoder = GST_AUDIO_DECODER (self);

  gst_moshi_settings_init (&self->settings);
  gst_audio_decoder_set_needs_format (decoder, TRUE);
  gst_audio_decoder_set_use_default_pad_acceptcaps (decoder, TRUE);
  GST_PAD_SET_ACCEPT_TEMPLATE (GST_AUDIO_DECODER_SINK_PAD (self));
  self->next_pts = GST_CLOCK_TIME_NONE;
}
