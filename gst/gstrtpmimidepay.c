/* gst-moshi: rtpmimidepay, Mimi tokens out of RTP packets. */

/**
 * SECTION:element-rtpmimidepay
 * @title: rtpmimidepay
 * @see_also: rtpmimipay, mimidec, rtpjitterbuffer
 *
 * Takes Mimi codec tokens out of RTP packets of the payload format `MIMI`
 * (docs/rtp-mimi.md) and outputs them as `audio/x-mimi` for mimidec or
 * moshidialog: one buffer per packet, timestamped from the packet, lasting
 * 80 ms per frame.
 *
 * The layout comes from the caps (the SDP's fmtp): `codebooks`,
 * `codebook-size` and `code-bits` (default: ceil(log2(codebook-size))); a
 * missing `codebooks` or `codebook-size` means the released Mimi, 8 codebooks
 * of 2048 entries. When #GstRtpMimiDepay:model-id is set, caps naming another
 * model are refused.
 *
 * Packets that are not a whole number of frames, carry no frame, or hold a
 * code outside the codebooks are dropped with a warning (one bus message per
 * run of bad packets) and counted in #GstRtpMimiDepay:malformed-packets; the
 * next good packet is marked DISCONT, so that the decoder conceals the time
 * they covered. Lost packets (a GstRTPPacketLost event from rtpjitterbuffer
 * with do-lost=true) become GAP events, and a sequence gap marks the next
 * buffer DISCONT: with `plc=true` mimidec fills either with concealment.
 *
 * ## Example pipeline
 * |[
 * gst-launch-1.0 udpsrc port=5000 \
 *     caps='application/x-rtp,media=audio,clock-rate=24000,encoding-name=MIMI,payload=96,codebooks=(string)8,codebook-size=(string)2048' ! \
 *     rtpjitterbuffer do-lost=true ! rtpmimidepay ! \
 *     mimidec model=kyutai/moshiko-pytorch-bf16 plc=true ! audioconvert ! autoaudiosink
 * ]| Receives what `rtpmimipay` sends and conceals lost packets.
 */

#include "gstrtpmimidepay.h"

#include <stdlib.h>
#include <string.h>

#include "gstmoshielements.h"
#include "gstrtpmimipay.h"
#include "rtp-mimi-format.h"

GST_DEBUG_CATEGORY_STATIC (gst_rtp_mimi_depay_debug);
#define GST_CAT_DEFAULT gst_rtp_mimi_depay_debug

#define FRAME_DURATION (GST_SECOND * GST_RTP_MIMI_FRAME_SAMPLES / GST_RTP_MIMI_CLOCK_RATE)
/* The released Mimi, for an SDP with only "a=rtpmap:96 MIMI/24000". */
#define DEFAULT_CODEBOOKS 8
#define DEFAULT_CODEBOOK_SIZE 2048

enum
{
  PROP_0,
  PROP_MODEL_ID,
  PROP_MALFORMED_PACKETS,
};

struct _GstRtpMimiDepay
{
  GstRTPBaseDepayload parent;

  gchar *model_id;              /* expected model identity; NULL: any (object lock) */
  guint64 malformed;            /* packets dropped as malformed (object lock) */

  /* From the caps (streaming thread). */
  RtpMimiLayout layout;         /* codebooks 0 until caps */
  gboolean warned;              /* a warning went out for the current run of bad packets */
  gboolean discont;             /* mark the next buffer DISCONT */
};

#define gst_rtp_mimi_depay_parent_class parent_class
G_DEFINE_TYPE (GstRtpMimiDepay, gst_rtp_mimi_depay, GST_TYPE_RTP_BASE_DEPAYLOAD);
GST_ELEMENT_REGISTER_DEFINE_WITH_CODE (rtpmimidepay, "rtpmimidepay", GST_RANK_SECONDARY,
    GST_TYPE_RTP_MIMI_DEPAY, moshi_element_init (plugin));

static GstStaticPadTemplate sink_template = GST_STATIC_PAD_TEMPLATE ("sink",
    GST_PAD_SINK,
    GST_PAD_ALWAYS,
    GST_STATIC_CAPS ("application/x-rtp, media = (string) audio, "
        "payload = (int) " GST_RTP_PAYLOAD_DYNAMIC_STRING ", "
        "clock-rate = (int) 24000, encoding-name = (string) MIMI"));

static GstStaticPadTemplate src_template = GST_STATIC_PAD_TEMPLATE ("src",
    GST_PAD_SRC,
    GST_PAD_ALWAYS,
    GST_STATIC_CAPS (GST_MOSHI_TOKEN_CAPS_WITH_FRAMERATE ("25/2")));

/* An fmtp parameter: a string from an SDP, or an int from hand-written caps. FALSE when
 * absent; *ok FALSE when present but not a number in [min, max]. */
static gboolean
get_uint_param (const GstStructure * s, const gchar * name, guint min, guint max,
    guint * value, gboolean * ok)
{
  const GValue *v = gst_structure_get_value (s, name);
  if (v == NULL)
    return FALSE;

  gint64 n = -1;
  if (G_VALUE_HOLDS_INT (v)) {
    n = g_value_get_int (v);
  } else if (G_VALUE_HOLDS_STRING (v) && g_value_get_string (v) != NULL) {
    const gchar *str = g_value_get_string (v);
    gchar *end = NULL;
    n = g_ascii_strtoll (str, &end, 10);
    if (end == str || *end != '\0')
      n = -1;
  }
  if (n < (gint64) min || n > (gint64) max) {
    *ok = FALSE;
    return TRUE;
  }
  *value = (guint) n;
  return TRUE;
}

static gboolean
gst_rtp_mimi_depay_set_caps (GstRTPBaseDepayload * depayload, GstCaps * caps)
{
  GstRtpMimiDepay *self = GST_RTP_MIMI_DEPAY (depayload);
  GstStructure *s = gst_caps_get_structure (caps, 0);
  guint codebooks = DEFAULT_CODEBOOKS, codebook_size = DEFAULT_CODEBOOK_SIZE, bits = 0;
  gboolean ok = TRUE;

  get_uint_param (s, "codebooks", 1, RTP_MIMI_MAX_CODEBOOKS, &codebooks, &ok);
  get_uint_param (s, "codebook-size", 2, RTP_MIMI_MAX_CODEBOOK_SIZE, &codebook_size, &ok);
  if (!get_uint_param (s, "code-bits", 1, 16, &bits, &ok))
    bits = rtp_mimi_min_code_bits (codebook_size);
  RtpMimiLayout layout = { codebooks, codebook_size, bits };
  if (!ok || !rtp_mimi_layout_is_valid (&layout)) {
    GST_ELEMENT_ERROR (self, CORE, NEGOTIATION, (NULL),
        ("invalid codebooks, codebook-size or code-bits in %" GST_PTR_FORMAT, caps));
    return FALSE;
  }

  const gchar *their_id = gst_structure_get_string (s, "model-id");
  GST_OBJECT_LOCK (self);
  gboolean id_ok = self->model_id == NULL || g_strcmp0 (self->model_id, their_id) == 0;
  g_autofree gchar *our_id = g_strdup (self->model_id);
  GST_OBJECT_UNLOCK (self);
  if (!id_ok) {
    GST_ELEMENT_ERROR (self, CORE, NEGOTIATION,
        ("The tokens were made by model \"%s\", not \"%s\"",
            their_id ? their_id : "(unnamed)", our_id), ("caps %" GST_PTR_FORMAT, caps));
    return FALSE;
  }

  self->layout = layout;
  depayload->clock_rate = GST_RTP_MIMI_CLOCK_RATE;
  GST_INFO_OBJECT (self, "%u codebooks of %u entries, %u bits a code, %" G_GSIZE_FORMAT
      " bytes a frame", codebooks, codebook_size, bits, rtp_mimi_packed_frame_bytes (&layout));

  GstCaps *out = gst_moshi_token_caps_new_full (GST_RTP_MIMI_CLOCK_RATE,
      GST_RTP_MIMI_FRAME_SAMPLES, (gint) codebooks, (gint) codebook_size);
  gboolean res = gst_pad_set_caps (GST_RTP_BASE_DEPAYLOAD_SRCPAD (depayload), out);
  gst_caps_unref (out);
  return res;
}

/* Drops a bad packet: a bus warning for the first of a run, the count, and a DISCONT on the
 * next buffer so that the decoder treats its time as lost. */
static GstBuffer *
malformed (GstRtpMimiDepay * self, const gchar * why, guint len)
{
  GST_OBJECT_LOCK (self);
  self->malformed++;
  GST_OBJECT_UNLOCK (self);
  self->discont = TRUE;
  if (!self->warned) {
    GST_ELEMENT_WARNING (self, STREAM, DECODE, (NULL),
        ("dropping a malformed packet of %u payload bytes: %s", len, why));
    self->warned = TRUE;
  } else {
    GST_DEBUG_OBJECT (self, "dropping a malformed packet of %u payload bytes: %s", len, why);
  }
  return NULL;
}

static GstBuffer *
gst_rtp_mimi_depay_process (GstRTPBaseDepayload * depayload, GstRTPBuffer * rtp)
{
  GstRtpMimiDepay *self = GST_RTP_MIMI_DEPAY (depayload);
  guint len = gst_rtp_buffer_get_payload_len (rtp);
  const guint8 *in = gst_rtp_buffer_get_payload (rtp);

  if (G_UNLIKELY (self->layout.codebooks == 0))
    return NULL;                /* the base class refuses packets before caps */
  const gchar *why = NULL;
  gsize n_frames = rtp_mimi_payload_frames (&self->layout, len, &why);
  if (n_frames == 0)
    return malformed (self, why, len);

  GstBuffer *out = gst_buffer_new_allocate (NULL, n_frames * self->layout.codebooks * 2, NULL);
  GstMapInfo map;
  if (!gst_buffer_map (out, &map, GST_MAP_WRITE)) {
    gst_buffer_unref (out);
    return NULL;
  }
  if (!rtp_mimi_unpack (&self->layout, in, n_frames, map.data, &why)) {
    gst_buffer_unmap (out, &map);
    gst_buffer_unref (out);
    return malformed (self, why, len);
  }
  gst_buffer_unmap (out, &map);

  /* The base class copies the PTS of the packet (from the jitterbuffer) onto the buffer. */
  GST_BUFFER_DURATION (out) = n_frames * FRAME_DURATION;
  if (self->discont) {
    GST_BUFFER_FLAG_SET (out, GST_BUFFER_FLAG_DISCONT);
    self->discont = FALSE;
  }
  /* The marker starts a talkspurt: a timestamp jump before it is silence suppression, not
   * loss; mimidec conceals it the same way (fading to silence), so nothing more is done. */
  if (gst_rtp_buffer_get_marker (rtp))
    GST_BUFFER_FLAG_SET (out, GST_BUFFER_FLAG_RESYNC);
  self->warned = FALSE;
  GST_LOG_OBJECT (self, "%" G_GSIZE_FORMAT " frames, seq %u", n_frames,
      gst_rtp_buffer_get_seq (rtp));
  return out;
}

static GstStateChangeReturn
gst_rtp_mimi_depay_change_state (GstElement * element, GstStateChange transition)
{
  GstRtpMimiDepay *self = GST_RTP_MIMI_DEPAY (element);

  if (transition == GST_STATE_CHANGE_READY_TO_PAUSED) {
    self->warned = FALSE;
    self->discont = FALSE;
  }
  GstStateChangeReturn ret = GST_ELEMENT_CLASS (parent_class)->change_state (element,
      transition);
  if (transition == GST_STATE_CHANGE_PAUSED_TO_READY)
    self->layout.codebooks = 0;
  return ret;
}

static void
gst_rtp_mimi_depay_set_property (GObject * object, guint prop_id, const GValue * value,
    GParamSpec * pspec)
{
  GstRtpMimiDepay *self = GST_RTP_MIMI_DEPAY (object);

  GST_OBJECT_LOCK (self);
  switch (prop_id) {
    case PROP_MODEL_ID:
      gst_moshi_set_optional_string (&self->model_id, value);
      break;
    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
      break;
  }
  GST_OBJECT_UNLOCK (self);
}

static void
gst_rtp_mimi_depay_get_property (GObject * object, guint prop_id, GValue * value,
    GParamSpec * pspec)
{
  GstRtpMimiDepay *self = GST_RTP_MIMI_DEPAY (object);

  GST_OBJECT_LOCK (self);
  switch (prop_id) {
    case PROP_MODEL_ID:
      g_value_set_string (value, self->model_id);
      break;
    case PROP_MALFORMED_PACKETS:
      g_value_set_uint64 (value, self->malformed);
      break;
    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
      break;
  }
  GST_OBJECT_UNLOCK (self);
}

static void
gst_rtp_mimi_depay_finalize (GObject * object)
{
  g_free (GST_RTP_MIMI_DEPAY (object)->model_id);
  G_OBJECT_CLASS (parent_class)->finalize (object);
}

static void
gst_rtp_mimi_depay_init (GstRtpMimiDepay * self)
{
  (void) self;
}

static void
gst_rtp_mimi_depay_class_init (GstRtpMimiDepayClass * klass)
{
  GObjectClass *gobject_class = G_OBJECT_CLASS (klass);
  GstElementClass *element_class = GST_ELEMENT_CLASS (klass);
  GstRTPBaseDepayloadClass *depayload_class = GST_RTP_BASE_DEPAYLOAD_CLASS (klass);

  GST_DEBUG_CATEGORY_INIT (gst_rtp_mimi_depay_debug, "rtpmimidepay", 0,
      "Mimi token RTP depayloader");

  gobject_class->set_property = gst_rtp_mimi_depay_set_property;
  gobject_class->get_property = gst_rtp_mimi_depay_get_property;
  gobject_class->finalize = gst_rtp_mimi_depay_finalize;

  g_object_class_install_property (gobject_class, PROP_MODEL_ID,
      g_param_spec_string ("model-id", "Model identity",
          "Model the tokens must come from: caps whose fmtp model-id differs (or is "
          "missing) are refused. NULL: any", NULL,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS | GST_PARAM_MUTABLE_READY));
  g_object_class_install_property (gobject_class, PROP_MALFORMED_PACKETS,
      g_param_spec_uint64 ("malformed-packets", "Malformed packets",
          "Packets dropped because their payload was not whole valid frames", 0,
          G_MAXUINT64, 0, G_PARAM_READABLE | G_PARAM_STATIC_STRINGS));

  gst_element_class_add_static_pad_template (element_class, &sink_template);
  gst_element_class_add_static_pad_template (element_class, &src_template);
  gst_element_class_set_static_metadata (element_class,
      "RTP Mimi token depayloader", "Codec/Depayloader/Network/RTP",
      "Takes Kyutai Mimi codec tokens out of RTP packets (payload format MIMI)",
      "gst-moshi developers");
  gst_element_class_add_static_metadata (element_class, GST_ELEMENT_METADATA_DOC_URI,
      GST_MOSHI_DOC_URI ("rtpmimidepay"));

  element_class->change_state = gst_rtp_mimi_depay_change_state;
  depayload_class->set_caps = gst_rtp_mimi_depay_set_caps;
  depayload_class->process_rtp_packet = gst_rtp_mimi_depay_process;
}
