/* gst-moshi: rtpmimipay, Mimi tokens into RTP packets. */

/**
 * SECTION:element-rtpmimipay
 * @title: rtpmimipay
 * @see_also: rtpmimidepay, mimienc
 *
 * Puts Mimi codec tokens (`audio/x-mimi`, as made by mimienc) into RTP
 * packets with the payload format of docs/rtp-mimi.md: encoding name `MIMI`,
 * a dynamic payload type, a 24000 Hz clock (1920 ticks per 80 ms frame), one
 * or more frames per packet, each frame's codes bit-packed MSB first with
 * ceil(log2(codebook-size)) bits per code (11 for the released Mimi, 8 for
 * 256-entry codebooks) unless #GstRtpMimiPay:code-bits asks for more. The
 * codebook count, codebook size, code width and an optional model identity
 * go into the caps, and so into the SDP fmtp line.
 *
 * A packet holds up to #GstRtpMimiPay:frames-per-packet frames (fewer when
 * #GstRTPBasePayload:max-ptime is lower) that follow each other without a
 * gap; a discontinuity, a GAP event or EOS sends what is pending. The marker
 * bit is set on the first packet of the stream and after each discontinuity,
 * as for a talkspurt in RFC 3551.
 *
 * ## Example pipeline
 * |[
 * gst-launch-1.0 autoaudiosrc ! audioconvert ! audioresample ! \
 *     mimienc model=kyutai/moshiko-pytorch-bf16 ! \
 *     rtpmimipay frames-per-packet=2 model-id=moshiko ! udpsink host=127.0.0.1 port=5000
 * ]| Sends tokens of the released Mimi: 8 codebooks, 11 bytes per frame.
 */

#include "gstrtpmimipay.h"
#include "rtp-mimi-format.h"

#include <string.h>

#include "gstmoshielements.h"

GST_DEBUG_CATEGORY_STATIC (gst_rtp_mimi_pay_debug);
#define GST_CAT_DEFAULT gst_rtp_mimi_pay_debug

#define FRAME_DURATION (GST_SECOND * GST_RTP_MIMI_FRAME_SAMPLES / GST_RTP_MIMI_CLOCK_RATE)
#define DEFAULT_FRAMES_PER_PACKET 1
/* 50 frames are 4 s: far beyond any sensible ptime, and with 32 codebooks of 16 bits still
 * only 3200 bytes, below a usual MTU's worry for a property limit. */
#define MAX_FRAMES_PER_PACKET 50
#define DEFAULT_CODE_BITS 0

enum
{
  PROP_0,
  PROP_FRAMES_PER_PACKET,
  PROP_CODE_BITS,
  PROP_MODEL_ID,
};

struct _GstRtpMimiPay
{
  GstRTPBasePayload parent;

  /* Properties, under the object lock. */
  guint frames_per_packet;
  guint code_bits_prop;         /* 0: the fewest bits that hold every code */
  gchar *model_id;

  /* From the sink caps (streaming thread). */
  guint codebooks;
  guint codebook_size;
  guint code_bits;
  gsize packed_frame_bytes;

  /* Frames waiting for a packet: their codes, the PTS of the first, and how many. */
  GArray *pending;              /* guint16 */
  guint n_pending;
  GstClockTime pending_pts;
  gboolean marker;              /* the next packet starts a talkspurt */
  GstClockTime next_pts;        /* where the last frame taken ended */
};

#define gst_rtp_mimi_pay_parent_class parent_class
G_DEFINE_TYPE (GstRtpMimiPay, gst_rtp_mimi_pay, GST_TYPE_RTP_BASE_PAYLOAD);
GST_ELEMENT_REGISTER_DEFINE_WITH_CODE (rtpmimipay, "rtpmimipay", GST_RANK_SECONDARY,
    GST_TYPE_RTP_MIMI_PAY, moshi_element_init (plugin));

/* The payload format fixes the frame length (1920 samples at 24 kHz): framerate and rate are
 * not negotiable here. */
static GstStaticPadTemplate sink_template = GST_STATIC_PAD_TEMPLATE ("sink",
    GST_PAD_SINK,
    GST_PAD_ALWAYS,
    GST_STATIC_CAPS (GST_MOSHI_TOKEN_CAPS_WITH_FRAMERATE ("25/2")));

static GstStaticPadTemplate src_template = GST_STATIC_PAD_TEMPLATE ("src",
    GST_PAD_SRC,
    GST_PAD_ALWAYS,
    GST_STATIC_CAPS ("application/x-rtp, media = (string) audio, "
        "payload = (int) " GST_RTP_PAYLOAD_DYNAMIC_STRING ", "
        "clock-rate = (int) 24000, encoding-name = (string) MIMI"));

static void
clear_pending (GstRtpMimiPay * self)
{
  g_array_set_size (self->pending, 0);
  self->n_pending = 0;
  self->pending_pts = GST_CLOCK_TIME_NONE;
}

/* Writes n frames of codes (codebooks each) into dest, bits MSB first, each frame padded with
 * zero bits to a whole byte: see docs/rtp-mimi.md. */
static void
pack_frames (const guint16 * codes, guint n, guint codebooks, guint bits, guint8 * dest,
    gsize frame_bytes)
{
  memset (dest, 0, n * frame_bytes);
  for (guint f = 0; f < n; f++) {
    guint8 *out = dest + f * frame_bytes;
    gsize bitpos = 0;
    for (guint k = 0; k < codebooks; k++) {
      guint code = codes[f * codebooks + k];
      for (gint b = (gint) bits - 1; b >= 0; b--, bitpos++)
        if (code & (1u << b))
          out[bitpos / 8] |= (guint8) (0x80u >> (bitpos % 8));
    }
  }
}

/* Sends the pending frames as one packet. */
static GstFlowReturn
flush_pending (GstRtpMimiPay * self)
{
  GstRTPBasePayload *payload = GST_RTP_BASE_PAYLOAD (self);
  GstRTPBuffer rtp = GST_RTP_BUFFER_INIT;

  if (self->n_pending == 0)
    return GST_FLOW_OK;

  guint n = self->n_pending;
  gsize len = n * self->packed_frame_bytes;
  GstBuffer *out = gst_rtp_base_payload_allocate_output_buffer (payload, (guint) len, 0, 0);
  if (!gst_rtp_buffer_map (out, GST_MAP_WRITE, &rtp)) {
    gst_buffer_unref (out);
    clear_pending (self);
    GST_ELEMENT_ERROR (self, RESOURCE, WRITE, (NULL), ("could not map an RTP buffer"));
    return GST_FLOW_ERROR;
  }
  pack_frames ((const guint16 *) self->pending->data, n, self->codebooks, self->code_bits,
      gst_rtp_buffer_get_payload (&rtp), self->packed_frame_bytes);
  gst_rtp_buffer_set_marker (&rtp, self->marker);
  gst_rtp_buffer_unmap (&rtp);

  GST_BUFFER_PTS (out) = self->pending_pts;
  GST_BUFFER_DURATION (out) = n * FRAME_DURATION;
  /* The base class would derive the RTP timestamp from an offset (perfect-rtptime) in the
   * units of whatever upstream put there; the PTS is exact (80 ms = 1920 ticks). */
  GST_BUFFER_OFFSET (out) = GST_BUFFER_OFFSET_NONE;
  if (self->marker)
    GST_BUFFER_FLAG_SET (out, GST_BUFFER_FLAG_MARKER);

  GST_LOG_OBJECT (self, "packet of %u frames at %" GST_TIME_FORMAT "%s", n,
      GST_TIME_ARGS (self->pending_pts), self->marker ? " (marker)" : "");
  self->marker = FALSE;
  clear_pending (self);
  return gst_rtp_base_payload_push (payload, out);
}

static guint
frames_per_packet (GstRtpMimiPay * self)
{
  GstRTPBasePayload *payload = GST_RTP_BASE_PAYLOAD (self);
  GST_OBJECT_LOCK (self);
  guint n = self->frames_per_packet;
  /* max-ptime (ns, -1 unset) of the base class caps the packet length, e.g. from the SDP's
   * a=maxptime; it never makes a packet empty. */
  if (payload->max_ptime > 0) {
    guint max = (guint) MAX (payload->max_ptime / (gint64) FRAME_DURATION, 1);
    n = MIN (n, max);
  }
  GST_OBJECT_UNLOCK (self);
  return n;
}

static gboolean
gst_rtp_mimi_pay_set_caps (GstRTPBasePayload * payload, GstCaps * caps)
{
  GstRtpMimiPay *self = GST_RTP_MIMI_PAY (payload);
  GstStructure *s = gst_caps_get_structure (caps, 0);
  gint codebooks, codebook_size;

  if (!gst_structure_get_int (s, "codebooks", &codebooks)
      || !gst_structure_get_int (s, "codebook-size", &codebook_size)) {
    GST_WARNING_OBJECT (self, "caps without codebooks or codebook-size: %" GST_PTR_FORMAT,
        caps);
    return FALSE;
  }

  guint min_bits = rtp_mimi_min_code_bits ((guint) codebook_size);
  GST_OBJECT_LOCK (self);
  guint bits = self->code_bits_prop;
  g_autofree gchar *model_id = g_strdup (self->model_id);
  GST_OBJECT_UNLOCK (self);
  if (bits == 0) {
    bits = min_bits;
  } else if (bits < min_bits) {
    GST_ELEMENT_ERROR (self, CORE, NEGOTIATION, (NULL),
        ("code-bits=%u cannot hold codes of a %d-entry codebook (%u bits needed)",
            bits, codebook_size, min_bits));
    return FALSE;
  }

  /* A new layout: what is pending was made for the old one. */
  if (self->n_pending > 0 && ((guint) codebooks != self->codebooks
          || (guint) codebook_size != self->codebook_size || bits != self->code_bits)) {
    GstFlowReturn ret = flush_pending (self);
    if (ret != GST_FLOW_OK)
      GST_DEBUG_OBJECT (self, "flushing at a caps change: %s", gst_flow_get_name (ret));
  }
  self->codebooks = (guint) codebooks;
  self->codebook_size = (guint) codebook_size;
  self->code_bits = bits;
  self->packed_frame_bytes = ((gsize) codebooks * bits + 7) / 8;

  gst_rtp_base_payload_set_options (payload, "audio", TRUE, "MIMI",
      GST_RTP_MIMI_CLOCK_RATE);

  /* fmtp parameters are strings, as they come back from an SDP. */
  GstStructure *fields = gst_structure_new_empty ("unused");
  g_autofree gchar *s_codebooks = g_strdup_printf ("%d", codebooks);
  g_autofree gchar *s_size = g_strdup_printf ("%d", codebook_size);
  g_autofree gchar *s_bits = g_strdup_printf ("%u", bits);
  gst_structure_set (fields, "codebooks", G_TYPE_STRING, s_codebooks,
      "codebook-size", G_TYPE_STRING, s_size, "code-bits", G_TYPE_STRING, s_bits, NULL);
  if (model_id != NULL)
    gst_structure_set (fields, "model-id", G_TYPE_STRING, model_id, NULL);
  GST_INFO_OBJECT (self, "%d codebooks of %d entries, %u bits a code, %" G_GSIZE_FORMAT
      " bytes a frame", codebooks, codebook_size, bits, self->packed_frame_bytes);
  gboolean ok = gst_rtp_base_payload_set_outcaps_structure (payload, fields);
  gst_structure_free (fields);
  return ok;
}

static GstFlowReturn
gst_rtp_mimi_pay_handle_buffer (GstRTPBasePayload * payload, GstBuffer * buffer)
{
  GstRtpMimiPay *self = GST_RTP_MIMI_PAY (payload);
  GstFlowReturn ret = GST_FLOW_OK;
  GstMapInfo map;

  if (G_UNLIKELY (self->codebooks == 0)) {
    gst_buffer_unref (buffer);
    return GST_FLOW_NOT_NEGOTIATED;
  }

  gsize size = gst_buffer_get_size (buffer);
  gsize in_frame_bytes = (gsize) self->codebooks * 2;
  if (size == 0) {
    /* Nothing to send; the time it covers is a gap like any other. */
    gst_buffer_unref (buffer);
    return GST_FLOW_OK;
  }
  if (size % in_frame_bytes != 0) {
    GST_ELEMENT_WARNING (self, STREAM, FORMAT, (NULL),
        ("dropping a token buffer of %" G_GSIZE_FORMAT " bytes: not a whole number of "
            "%u-codebook frames", size, self->codebooks));
    gst_buffer_unref (buffer);
    return GST_FLOW_OK;
  }
  if (!gst_buffer_map (buffer, &map, GST_MAP_READ)) {
    gst_buffer_unref (buffer);
    GST_ELEMENT_ERROR (self, RESOURCE, READ, (NULL), ("could not map a buffer"));
    return GST_FLOW_ERROR;
  }
  guint n_frames = (guint) (size / in_frame_bytes);
  gssize bad = gst_moshi_codes_find_invalid (map.data,
      (gsize) n_frames * self->codebooks, self->codebook_size);
  if (G_UNLIKELY (bad >= 0)) {
    guint code = GST_READ_UINT16_LE (map.data + 2 * bad);
    gst_buffer_unmap (buffer, &map);
    gst_buffer_unref (buffer);
    /* A packed code could not hold it: the buffer cannot be sent as it is. */
    GST_ELEMENT_WARNING (self, STREAM, FORMAT, (NULL),
        ("dropping a token buffer with code %u, outside the %u-entry codebooks", code,
            self->codebook_size));
    return GST_FLOW_OK;
  }

  GstClockTime pts = GST_BUFFER_PTS (buffer);
  /* A discontinuity ends the packet and starts a talkspurt: frames in a packet follow each
   * other, since the receiver times them from the packet's one RTP timestamp. */
  gboolean jump = GST_CLOCK_TIME_IS_VALID (pts) && GST_CLOCK_TIME_IS_VALID (self->next_pts)
      && (pts > self->next_pts + FRAME_DURATION / 2
      || pts + FRAME_DURATION / 2 < self->next_pts);
  if (GST_BUFFER_FLAG_IS_SET (buffer, GST_BUFFER_FLAG_DISCONT) || jump) {
    ret = flush_pending (self);
    self->marker = TRUE;
  }
  if (!GST_CLOCK_TIME_IS_VALID (pts) && GST_CLOCK_TIME_IS_VALID (self->next_pts))
    pts = self->next_pts;

  guint max = frames_per_packet (self);
  for (guint f = 0; f < n_frames && ret == GST_FLOW_OK; f++) {
    if (self->n_pending == 0)
      self->pending_pts = GST_CLOCK_TIME_IS_VALID (pts) ? pts + f * FRAME_DURATION : pts;
    for (guint k = 0; k < self->codebooks; k++) {
      guint16 code = GST_READ_UINT16_LE (map.data + 2 * ((gsize) f * self->codebooks + k));
      g_array_append_val (self->pending, code);
    }
    self->n_pending++;
    if (self->n_pending >= max)
      ret = flush_pending (self);
  }
  gst_buffer_unmap (buffer, &map);
  self->next_pts = GST_CLOCK_TIME_IS_VALID (pts) ? pts + n_frames * FRAME_DURATION
      : GST_CLOCK_TIME_NONE;
  gst_buffer_unref (buffer);
  return ret;
}

static gboolean
gst_rtp_mimi_pay_sink_event (GstRTPBasePayload * payload, GstEvent * event)
{
  GstRtpMimiPay *self = GST_RTP_MIMI_PAY (payload);

  switch (GST_EVENT_TYPE (event)) {
    case GST_EVENT_EOS:
    case GST_EVENT_GAP:
      /* Send what is pending before the event overtakes it; after a gap the next packet
       * starts a talkspurt. */
      flush_pending (self);
      self->marker = TRUE;
      break;
    case GST_EVENT_FLUSH_STOP:
      clear_pending (self);
      self->marker = TRUE;
      self->next_pts = GST_CLOCK_TIME_NONE;
      break;
    default:
      break;
  }
  return GST_RTP_BASE_PAYLOAD_CLASS (parent_class)->sink_event (payload, event);
}

static GstStateChangeReturn
gst_rtp_mimi_pay_change_state (GstElement * element, GstStateChange transition)
{
  GstRtpMimiPay *self = GST_RTP_MIMI_PAY (element);

  if (transition == GST_STATE_CHANGE_READY_TO_PAUSED) {
    clear_pending (self);
    self->marker = TRUE;
    self->next_pts = GST_CLOCK_TIME_NONE;
  }
  GstStateChangeReturn ret = GST_ELEMENT_CLASS (parent_class)->change_state (element,
      transition);
  if (transition == GST_STATE_CHANGE_PAUSED_TO_READY) {
    clear_pending (self);
    self->codebooks = 0;
  }
  return ret;
}

static void
gst_rtp_mimi_pay_set_property (GObject * object, guint prop_id, const GValue * value,
    GParamSpec * pspec)
{
  GstRtpMimiPay *self = GST_RTP_MIMI_PAY (object);

  GST_OBJECT_LOCK (self);
  switch (prop_id) {
    case PROP_FRAMES_PER_PACKET:
      self->frames_per_packet = g_value_get_uint (value);
      break;
    case PROP_CODE_BITS:
      self->code_bits_prop = g_value_get_uint (value);
      break;
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
gst_rtp_mimi_pay_get_property (GObject * object, guint prop_id, GValue * value,
    GParamSpec * pspec)
{
  GstRtpMimiPay *self = GST_RTP_MIMI_PAY (object);

  GST_OBJECT_LOCK (self);
  switch (prop_id) {
    case PROP_FRAMES_PER_PACKET:
      g_value_set_uint (value, self->frames_per_packet);
      break;
    case PROP_CODE_BITS:
      g_value_set_uint (value, self->code_bits_prop);
      break;
    case PROP_MODEL_ID:
      g_value_set_string (value, self->model_id);
      break;
    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
      break;
  }
  GST_OBJECT_UNLOCK (self);
}

static void
gst_rtp_mimi_pay_finalize (GObject * object)
{
  GstRtpMimiPay *self = GST_RTP_MIMI_PAY (object);

  g_array_unref (self->pending);
  g_free (self->model_id);
  G_OBJECT_CLASS (parent_class)->finalize (object);
}

static void
gst_rtp_mimi_pay_init (GstRtpMimiPay * self)
{
  self->frames_per_packet = DEFAULT_FRAMES_PER_PACKET;
  self->code_bits_prop = DEFAULT_CODE_BITS;
  self->pending = g_array_new (FALSE, FALSE, sizeof (guint16));
  self->pending_pts = GST_CLOCK_TIME_NONE;
  self->next_pts = GST_CLOCK_TIME_NONE;
  self->marker = TRUE;
}

static void
gst_rtp_mimi_pay_class_init (GstRtpMimiPayClass * klass)
{
  GObjectClass *gobject_class = G_OBJECT_CLASS (klass);
  GstElementClass *element_class = GST_ELEMENT_CLASS (klass);
  GstRTPBasePayloadClass *payload_class = GST_RTP_BASE_PAYLOAD_CLASS (klass);

  GST_DEBUG_CATEGORY_INIT (gst_rtp_mimi_pay_debug, "rtpmimipay", 0,
      "Mimi token RTP payloader");

  gobject_class->set_property = gst_rtp_mimi_pay_set_property;
  gobject_class->get_property = gst_rtp_mimi_pay_get_property;
  gobject_class->finalize = gst_rtp_mimi_pay_finalize;

  g_object_class_install_property (gobject_class, PROP_FRAMES_PER_PACKET,
      g_param_spec_uint ("frames-per-packet", "Frames per packet",
          "Most Mimi frames (80 ms each) in one RTP packet; fewer when max-ptime is lower",
          1, MAX_FRAMES_PER_PACKET, DEFAULT_FRAMES_PER_PACKET,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_CODE_BITS,
      g_param_spec_uint ("code-bits", "Code bits",
          "Bits per packed code: 0 = ceil(log2(codebook-size)) (11 for 2048 entries), "
          "or a larger width up to 16 (16 = byte-aligned codes)", 0, 16, DEFAULT_CODE_BITS,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS | GST_PARAM_MUTABLE_READY));
  g_object_class_install_property (gobject_class, PROP_MODEL_ID,
      g_param_spec_string ("model-id", "Model identity",
          "Short name or hash of the Mimi model the tokens need, sent as the fmtp "
          "parameter model-id (NULL: not sent)", NULL,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS | GST_PARAM_MUTABLE_READY));

  gst_element_class_add_static_pad_template (element_class, &sink_template);
  gst_element_class_add_static_pad_template (element_class, &src_template);
  gst_element_class_set_static_metadata (element_class,
      "RTP Mimi token payloader", "Codec/Payloader/Network/RTP",
      "Puts Kyutai Mimi codec tokens into RTP packets (payload format MIMI)",
      "gst-moshi developers");
  gst_element_class_add_static_metadata (element_class, GST_ELEMENT_METADATA_DOC_URI,
      GST_MOSHI_DOC_URI ("rtpmimipay"));

  element_class->change_state = gst_rtp_mimi_pay_change_state;
  payload_class->set_caps = gst_rtp_mimi_pay_set_caps;
  payload_class->handle_buffer = gst_rtp_mimi_pay_handle_buffer;
  payload_class->sink_event = gst_rtp_mimi_pay_sink_event;
}
