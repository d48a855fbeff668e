/* Tests of rtpmimipay and rtpmimidepay (docs/rtp-mimi.md).
 *
 * Harness tests: pay -> depay round trips bit-exact for several packings (16-bit, 11-bit for
 * 2048 entries, 8-bit for the small test Mimi's 256, 10-bit for 1000) and 1..5 frames per
 * packet, RTP timestamps and buffer timestamps, the marker bit, the caps and SDP fmtp, and
 * malformed packets. Then a loopback pipeline: mimienc ! rtpmimipay ! netsim (loss and
 * reordering) ! udpsink -> udpsrc ! rtpjitterbuffer ! rtpmimidepay ! mimidec plc=true, whose
 * output must be exactly as long as the packets sent span, with concealment for each lost
 * one, both with the jitterbuffer's lost-packet events (GAP events) and without them (DISCONT
 * and a timestamp jump). The loopback needs netsim (gst-plugins-bad) and the system plugins;
 * it is skipped without them. */
#include <gst/check/gstcheck.h>
#include <gst/check/gstharness.h>
#include <gst/rtp/rtp.h>
#include <gst/sdp/sdp.h>
#include <stdio.h>
#include <string.h>

#include "gst-test-util.h"

#define FRAME_NS (80 * GST_MSECOND)
#define FRAME_SAMPLES 1920

static gchar *
token_caps (guint codebooks, guint size)
{
  return g_strdup_printf ("audio/x-mimi, rate=24000, channels=1, framerate=25/2, "
      "codebooks=%u, codebook-size=%u, stream-format=u16le", codebooks, size);
}

/* A token buffer of n frames of random codes below size, timestamped at frame index first. */
static GstBuffer *
make_tokens (GRand * rand, guint codebooks, guint size, guint n, guint64 first,
    guint16 * codes_out)
{
  GstBuffer *buf = gst_buffer_new_allocate (NULL, (gsize) n * codebooks * 2, NULL);
  GstMapInfo map;
  fail_unless (gst_buffer_map (buf, &map, GST_MAP_WRITE));
  for (guint i = 0; i < n * codebooks; i++) {
    /* Include the extremes, which exercise every bit of a code. */
    guint code = i % 7 == 0 ? size - 1 : i % 11 == 0 ? 0 : (guint) g_rand_int_range (rand, 0,
        (gint32) size);
    GST_WRITE_UINT16_LE (map.data + 2 * i, code);
    if (codes_out)
      codes_out[i] = (guint16) code;
  }
  gst_buffer_unmap (buf, &map);
  GST_BUFFER_PTS (buf) = first * FRAME_NS;
  GST_BUFFER_DURATION (buf) = n * FRAME_NS;
  return buf;
}

static GstHarness *
new_pay (guint codebooks, guint size, guint fpp, guint code_bits, const gchar * model_id)
{
  GstHarness *h = gst_harness_new ("rtpmimipay");
  g_autofree gchar *caps = token_caps (codebooks, size);
  /* The harness starts the element: seqnum-offset and timestamp-offset would come too late,
   * so the checks are relative to the first packet. */
  g_object_set (h->element, "frames-per-packet", fpp, "code-bits", code_bits, "pt", 101,
      NULL);
  if (model_id)
    g_object_set (h->element, "model-id", model_id, NULL);
  gst_harness_set_src_caps_str (h, caps);
  return h;
}

/* Pushes n frames (in token buffers of per_buffer frames) through pay and depay; checks the
 * packets and that the tokens come out unchanged. */
static void
round_trip (guint codebooks, guint size, guint fpp, guint code_bits, guint expected_bits,
    guint n, guint per_buffer)
{
  g_autoptr (GRand) rand = g_rand_new_with_seed (codebooks * 1000 + size + fpp);
  GstHarness *pay = new_pay (codebooks, size, fpp, code_bits, NULL);
  GstHarness *depay = gst_harness_new ("rtpmimidepay");
  guint16 *codes = g_new0 (guint16, (gsize) n * codebooks);

  for (guint f = 0; f < n; f += per_buffer) {
    guint m = MIN (per_buffer, n - f);
    fail_unless_equals_int (gst_harness_push (pay, make_tokens (rand, codebooks, size, m, f,
                codes + (gsize) f * codebooks)), GST_FLOW_OK);
  }
  fail_unless (gst_harness_push_event (pay, gst_event_new_eos ()));

  /* The packets: fpp frames each but the last, timestamps 1920 per frame. */
  g_autoptr (GstCaps) rtp_caps = gst_pad_get_current_caps (pay->sinkpad);
  fail_unless (rtp_caps != NULL);
  GstStructure *s = gst_caps_get_structure (rtp_caps, 0);
  g_autofree gchar *bits_str = g_strdup_printf ("%u", expected_bits);
  fail_unless_equals_string (gst_structure_get_string (s, "code-bits"), bits_str);
  gst_harness_set_src_caps (depay, gst_caps_ref (rtp_caps));

  gsize frame_bytes = ((gsize) codebooks * expected_bits + 7) / 8;
  guint n_packets = (n + fpp - 1) / fpp;
  guint seq0 = 0;
  guint32 ts0 = 0;
  fail_unless_equals_int (gst_harness_buffers_in_queue (pay), n_packets);
  for (guint p = 0; p < n_packets; p++) {
    GstBuffer *pkt = gst_harness_pull (pay);
    GstRTPBuffer rtp = GST_RTP_BUFFER_INIT;
    guint frames = MIN (fpp, n - p * fpp);
    fail_unless (gst_rtp_buffer_map (pkt, GST_MAP_READ, &rtp));
    fail_unless_equals_int (gst_rtp_buffer_get_payload_len (&rtp), frames * frame_bytes);
    fail_unless_equals_int (gst_rtp_buffer_get_payload_type (&rtp), 101);
    if (p == 0) {
      seq0 = gst_rtp_buffer_get_seq (&rtp);
      ts0 = gst_rtp_buffer_get_timestamp (&rtp);
    }
    fail_unless_equals_int (gst_rtp_buffer_get_seq (&rtp), (guint16) (seq0 + p));
    fail_unless_equals_uint64 (gst_rtp_buffer_get_timestamp (&rtp),
        (guint32) (ts0 + p * fpp * FRAME_SAMPLES));
    /* Only the first packet of the stream starts a talkspurt. */
    fail_unless_equals_int (gst_rtp_buffer_get_marker (&rtp), p == 0);
    gst_rtp_buffer_unmap (&rtp);
    fail_unless_equals_int (gst_harness_push (depay, pkt), GST_FLOW_OK);
  }

  /* The tokens: bit-exact, timestamped from the packets. */
  for (guint p = 0; p < n_packets; p++) {
    GstBuffer *out = gst_harness_pull (depay);
    guint frames = MIN (fpp, n - p * fpp);
    fail_unless_equals_uint64 (GST_BUFFER_PTS (out), (guint64) p * fpp * FRAME_NS);
    fail_unless_equals_uint64 (GST_BUFFER_DURATION (out), frames * FRAME_NS);
    GstMapInfo map;
    fail_unless (gst_buffer_map (out, &map, GST_MAP_READ));
    fail_unless_equals_int (map.size, frames * codebooks * 2);
    for (gsize i = 0; i < (gsize) frames * codebooks; i++)
      fail_unless_equals_int (GST_READ_UINT16_LE (map.data + 2 * i),
          codes[(gsize) p * fpp * codebooks + i]);
    gst_buffer_unmap (out, &map);
    gst_buffer_unref (out);
  }
  g_autoptr (GstCaps) out_caps = gst_pad_get_current_caps (depay->sinkpad);
  g_autofree gchar *expected = token_caps (codebooks, size);
  g_autoptr (GstCaps) expected_caps = gst_caps_from_string (expected);
  fail_unless (gst_caps_is_equal (out_caps, expected_caps), "depayloaded caps %"
      GST_PTR_FORMAT, out_caps);

  g_free (codes);
  gst_harness_teardown (pay);
  gst_harness_teardown (depay);
}

GST_START_TEST (test_round_trip)
{
  for (guint fpp = 1; fpp <= 5; fpp++) {
    /* The released Mimi: 11 bits, 11 bytes a frame; the same in 16 bits. */
    round_trip (8, 2048, fpp, 0, 11, 13, 1);
    round_trip (8, 2048, fpp, 16, 16, 13, 1);
    /* The small test Mimi (16 x 256): 8 bits. Buffers of several frames from upstream. */
    round_trip (16, 256, fpp, 0, 8, 12, 3);
    /* Not a power of two, frames that end mid-byte: 3 x 10 bits = 4 bytes. */
    round_trip (3, 1000, fpp, 0, 10, 7, 2);
    round_trip (32, 65536, fpp, 0, 16, 4, 4);
    round_trip (1, 2, fpp, 0, 1, 9, 1);
  }
}

GST_END_TEST;

/* The worked example of docs/rtp-mimi.md. */
GST_START_TEST (test_packing_example)
{
  static const guint16 codes[] = { 5, 0, 255, 256, 1024, 7, 2047, 1 };
  static const guint8 packed[] = { 0x00, 0xa0, 0x00, 0x7f, 0x90, 0x08, 0x00, 0x01, 0xff,
    0xf8, 0x01
  };
  GstHarness *pay = new_pay (8, 2048, 1, 0, NULL);
  GstBuffer *buf = gst_buffer_new_allocate (NULL, sizeof codes, NULL);
  GstMapInfo map;
  gst_buffer_map (buf, &map, GST_MAP_WRITE);
  for (guint i = 0; i < G_N_ELEMENTS (codes); i++)
    GST_WRITE_UINT16_LE (map.data + 2 * i, codes[i]);
  gst_buffer_unmap (buf, &map);
  GST_BUFFER_PTS (buf) = 0;
  fail_unless_equals_int (gst_harness_push (pay, buf), GST_FLOW_OK);
  GstBuffer *pkt = gst_harness_pull (pay);
  GstRTPBuffer rtp = GST_RTP_BUFFER_INIT;
  fail_unless (gst_rtp_buffer_map (pkt, GST_MAP_READ, &rtp));
  fail_unless_equals_int (gst_rtp_buffer_get_payload_len (&rtp), sizeof packed);
  fail_unless (memcmp (gst_rtp_buffer_get_payload (&rtp), packed, sizeof packed) == 0);
  gst_rtp_buffer_unmap (&rtp);
  gst_buffer_unref (pkt);
  gst_harness_teardown (pay);
}

GST_END_TEST;

static gboolean
pull_marker (GstHarness * h, guint32 * ts, guint * len)
{
  GstBuffer *pkt = gst_harness_pull (h);
  GstRTPBuffer rtp = GST_RTP_BUFFER_INIT;
  fail_unless (gst_rtp_buffer_map (pkt, GST_MAP_READ, &rtp));
  gboolean marker = gst_rtp_buffer_get_marker (&rtp);
  *ts = gst_rtp_buffer_get_timestamp (&rtp);
  *len = gst_rtp_buffer_get_payload_len (&rtp);
  gst_rtp_buffer_unmap (&rtp);
  gst_buffer_unref (pkt);
  return marker;
}

/* A timestamp jump, a DISCONT buffer and a GAP event each end the packet being filled and
 * start a talkspurt (marker); the RTP timestamps jump with the PTS. */
GST_START_TEST (test_marker_and_discont)
{
  g_autoptr (GRand) rand = g_rand_new_with_seed (7);
  GstHarness *pay = new_pay (8, 2048, 3, 0, NULL);
  guint32 ts;
  guint len;

  for (guint f = 0; f < 4; f++)
    gst_harness_push (pay, make_tokens (rand, 8, 2048, 1, f, NULL));
  /* Frames 0-2 make a packet; frame 3 is pending when frame 10 comes after silence. */
  gst_harness_push (pay, make_tokens (rand, 8, 2048, 1, 10, NULL));
  gst_harness_push (pay, make_tokens (rand, 8, 2048, 1, 11, NULL));
  GstBuffer *d = make_tokens (rand, 8, 2048, 1, 12, NULL);
  GST_BUFFER_FLAG_SET (d, GST_BUFFER_FLAG_DISCONT);
  gst_harness_push (pay, d);
  gst_harness_push_event (pay, gst_event_new_gap (13 * FRAME_NS, FRAME_NS));
  gst_harness_push (pay, make_tokens (rand, 8, 2048, 1, 14, NULL));
  gst_harness_push_event (pay, gst_event_new_eos ());

  fail_unless_equals_int (gst_harness_buffers_in_queue (pay), 5);
  fail_unless (pull_marker (pay, &ts, &len));
  guint32 ts0 = ts;
  fail_unless_equals_int (len, 33);
  fail_if (pull_marker (pay, &ts, &len));       /* frame 3, cut short by the jump */
  fail_unless_equals_int (ts, ts0 + 3 * FRAME_SAMPLES);
  fail_unless_equals_int (len, 11);
  fail_unless (pull_marker (pay, &ts, &len));   /* frames 10-11, cut short by DISCONT */
  fail_unless_equals_int (ts, ts0 + 10 * FRAME_SAMPLES);
  fail_unless_equals_int (len, 22);
  fail_unless (pull_marker (pay, &ts, &len));   /* frame 12, cut short by the gap */
  fail_unless_equals_int (ts, ts0 + 12 * FRAME_SAMPLES);
  fail_unless (pull_marker (pay, &ts, &len));   /* frame 14 after the gap, at EOS */
  fail_unless_equals_int (ts, ts0 + 14 * FRAME_SAMPLES);
  gst_harness_teardown (pay);
}

GST_END_TEST;

/* The payloader's caps and what an SDP makes of them; the depayloader takes SDP-style string
 * fields, ints, defaults, and refuses another model or too few bits. */
GST_START_TEST (test_caps_and_sdp)
{
  g_autoptr (GRand) rand = g_rand_new_with_seed (3);
  GstHarness *pay = new_pay (16, 256, 2, 0, "small-test-mimi");
  gst_harness_push (pay, make_tokens (rand, 16, 256, 2, 0, NULL));
  g_autoptr (GstCaps) caps = gst_pad_get_current_caps (pay->sinkpad);
  GstStructure *s = gst_caps_get_structure (caps, 0);
  fail_unless_equals_string (gst_structure_get_string (s, "media"), "audio");
  fail_unless_equals_string (gst_structure_get_string (s, "encoding-name"), "MIMI");
  gint v;
  fail_unless (gst_structure_get_int (s, "clock-rate", &v) && v == 24000);
  fail_unless (gst_structure_get_int (s, "payload", &v) && v == 101);
  fail_unless_equals_string (gst_structure_get_string (s, "codebooks"), "16");
  fail_unless_equals_string (gst_structure_get_string (s, "codebook-size"), "256");
  fail_unless_equals_string (gst_structure_get_string (s, "code-bits"), "8");
  fail_unless_equals_string (gst_structure_get_string (s, "model-id"), "small-test-mimi");

  /* To SDP and back. */
  GstSDPMedia *media;
  gst_sdp_media_new (&media);
  fail_unless_equals_int (gst_sdp_media_set_media_from_caps (caps, media), GST_SDP_OK);
  const gchar *rtpmap = gst_sdp_media_get_attribute_val (media, "rtpmap");
  const gchar *fmtp = gst_sdp_media_get_attribute_val (media, "fmtp");
  fail_unless_equals_string (rtpmap, "101 MIMI/24000");
  fail_unless (fmtp != NULL && strstr (fmtp, "codebooks=16") && strstr (fmtp,
          "codebook-size=256") && strstr (fmtp, "code-bits=8")
      && strstr (fmtp, "model-id=small-test-mimi"), "fmtp: %s", fmtp);
  GstCaps *from_sdp = gst_sdp_media_get_caps_from_media (media, 101);
  fail_unless (from_sdp != NULL);
  gst_sdp_media_attributes_to_caps (media, from_sdp);
  GstStructure *fs = gst_caps_get_structure (from_sdp, 0);
  gst_structure_set_name (fs, "application/x-rtp");

  GstHarness *depay = gst_harness_new ("rtpmimidepay");
  g_object_set (depay->element, "model-id", "small-test-mimi", NULL);
  gst_harness_set_src_caps (depay, from_sdp);
  gst_harness_push (depay, gst_harness_pull (pay));
  GstBuffer *out = gst_harness_pull (depay);
  fail_unless_equals_int (gst_buffer_get_size (out), 2 * 16 * 2);
  gst_buffer_unref (out);
  g_autofree gchar *small = token_caps (16, 256);
  assert_current_caps (depay->sinkpad, small);
  gst_sdp_media_free (media);
  gst_harness_teardown (depay);
  gst_harness_teardown (pay);

  const gchar *base = "application/x-rtp, media=audio, payload=96, clock-rate=24000, "
      "encoding-name=MIMI";
  /* Ints, from hand-written caps. */
  depay = gst_harness_new ("rtpmimidepay");
  g_autofree gchar *ints = g_strdup_printf ("%s, codebooks=(int)4, codebook-size=(int)1000",
      base);
  gst_harness_set_src_caps_str (depay, ints);
  g_autofree gchar *c4 = token_caps (4, 1000);
  assert_current_caps (depay->sinkpad, c4);
  gst_harness_teardown (depay);
  /* Nothing: the released Mimi. */
  depay = gst_harness_new ("rtpmimidepay");
  gst_harness_set_src_caps_str (depay, base);
  g_autofree gchar *released = token_caps (8, 2048);
  assert_current_caps (depay->sinkpad, released);
  gst_harness_teardown (depay);

  /* Refused: another model, too few bits, nonsense. */
  const gchar *bad[] = {
    "codebooks=(string)8, model-id=(string)other",
    "codebooks=(string)8, code-bits=(string)10",
    "codebooks=(string)x8",
    "codebooks=(string)33",
    "codebook-size=(string)1",
  };
  for (guint i = 0; i < G_N_ELEMENTS (bad); i++) {
    g_autofree gchar *str = g_strdup_printf ("%s, %s", base, bad[i]);
    depay = gst_harness_new ("rtpmimidepay");
    g_object_set (depay->element, "model-id", i == 0 ? "small-test-mimi" : NULL, NULL);
    GstBus *bus = gst_bus_new ();
    gst_element_set_bus (depay->element, bus);
    gst_harness_play (depay);
    GstCaps *c = gst_caps_from_string (str);
    fail_unless (c != NULL, "%s", str);
    gst_harness_set_src_caps (depay, c);
        GstCaps *accepted = gst_pad_get_current_caps (depay->sinkpad);
    fail_unless (accepted == NULL, "accepted %s", str);
    GstMessage *msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ERROR);
    fail_unless (msg != NULL, "no error for %s", str);
    gst_message_unref (msg);
    gst_element_set_bus (depay->element, NULL);
    drop_bus (bus);
    gst_harness_teardown (depay);
  }

  /* The payloader refuses code-bits too small for the codebook. */
  pay = gst_harness_new ("rtpmimipay");
  g_object_set (pay->element, "code-bits", 10, NULL);
  GstBus *bus = gst_bus_new ();
  gst_element_set_bus (pay->element, bus);
  g_autofree gchar *tc = token_caps (8, 2048);
  gst_harness_set_src_caps_str (pay, tc);
  fail_unless (gst_harness_push (pay, make_tokens (rand, 8, 2048, 1, 0, NULL))
      != GST_FLOW_OK);
  GstMessage *msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ERROR);
  fail_unless (msg != NULL);
  gst_message_unref (msg);
  gst_element_set_bus (pay->element, NULL);
  drop_bus (bus);
  gst_harness_teardown (pay);
}

GST_END_TEST;

static GstBuffer *
make_packet (guint16 seq, guint32 ts, const guint8 * payload, guint len)
{
  GstBuffer *buf = gst_rtp_buffer_new_allocate (len, 0, 0);
  GstRTPBuffer rtp = GST_RTP_BUFFER_INIT;
  gst_rtp_buffer_map (buf, GST_MAP_WRITE, &rtp);
  gst_rtp_buffer_set_payload_type (&rtp, 96);
  gst_rtp_buffer_set_seq (&rtp, seq);
  gst_rtp_buffer_set_timestamp (&rtp, ts);
  if (len)
    memcpy (gst_rtp_buffer_get_payload (&rtp), payload, len);
  gst_rtp_buffer_unmap (&rtp);
  GST_BUFFER_PTS (buf) = gst_util_uint64_scale (ts, GST_SECOND, 24000);
  return buf;
}

/* Bad packets are dropped with a warning and counted, never crash, and the next good packet
 * is DISCONT so that its decoder conceals what they covered. */
GST_START_TEST (test_malformed_packets)
{
  GstHarness *depay = gst_harness_new ("rtpmimidepay");
  GstBus *bus = gst_bus_new ();
  gst_element_set_bus (depay->element, bus);
  /* 8 codebooks of 2000 entries, 11 bits: 2000..2047 fit the bits but are no code. */
  gst_harness_set_src_caps_str (depay, "application/x-rtp, media=audio, payload=96, "
      "clock-rate=24000, encoding-name=MIMI, codebooks=(string)8, "
      "codebook-size=(string)2000");
  guint8 good[22] = { 0 }, bad_code[11];
  memset (bad_code, 0xff, sizeof bad_code);     /* every code 2047 */
  guint16 seq = 1;
  guint32 ts = 0;

  fail_unless_equals_int (gst_harness_push (depay, make_packet (seq++, ts, good, 11)),
      GST_FLOW_OK);
  ts += FRAME_SAMPLES;
  gst_buffer_unref (gst_harness_pull (depay));
  /* No frame, truncated, a frame and a half, a code outside the codebook. */
  const guint lens[] = { 0, 10, 16 };
  for (guint i = 0; i < G_N_ELEMENTS (lens); i++) {
    fail_unless_equals_int (gst_harness_push (depay, make_packet (seq++, ts, good, lens[i])),
        GST_FLOW_OK);
    ts += FRAME_SAMPLES;
  }
  fail_unless_equals_int (gst_harness_push (depay, make_packet (seq++, ts, bad_code, 11)),
      GST_FLOW_OK);
  ts += FRAME_SAMPLES;
  /* Not even an RTP header: the base class drops it. */
  GstBuffer *junk = gst_buffer_new_allocate (NULL, 5, NULL);
  gst_buffer_memset (junk, 0, 0x80, 5);
  gst_harness_push (depay, junk);
  fail_unless_equals_int (gst_harness_buffers_in_queue (depay), 0);
  guint64 malformed;
  g_object_get (depay->element, "malformed-packets", &malformed, NULL);
  fail_unless_equals_uint64 (malformed, 4);
  /* One warning for the run of bad packets (plus the base class's for the junk). */
  guint warnings = count_bus_warnings (bus);
  fail_unless (warnings >= 1 && warnings <= 2, "%u warnings", warnings);

  fail_unless_equals_int (gst_harness_push (depay, make_packet (seq++, ts, good, 22)),
      GST_FLOW_OK);
  GstBuffer *out = gst_harness_pull (depay);
  fail_unless (GST_BUFFER_FLAG_IS_SET (out, GST_BUFFER_FLAG_DISCONT));
  fail_unless_equals_int (gst_buffer_get_size (out), 2 * 8 * 2);
  fail_unless_equals_uint64 (GST_BUFFER_DURATION (out), 2 * FRAME_NS);
  fail_unless_equals_uint64 (GST_BUFFER_PTS (out), 5 * FRAME_NS);
  gst_buffer_unref (out);

  gst_element_set_bus (depay->element, NULL);
  drop_bus (bus);
  gst_harness_teardown (depay);
}

GST_END_TEST;

/* A lost packet announced by the jitterbuffer becomes a GAP event of its duration. */
GST_START_TEST (test_packet_lost_is_gap)
{
  GstHarness *depay = gst_harness_new ("rtpmimidepay");
  gst_harness_set_src_caps_str (depay, "application/x-rtp, media=audio, payload=96, "
      "clock-rate=24000, encoding-name=MIMI");
  guint8 good[11] = { 0 };
  gst_harness_push (depay, make_packet (1, 0, good, 11));
  gst_buffer_unref (gst_harness_pull (depay));
  GstStructure *lost = gst_structure_new ("GstRTPPacketLost", "seqnum", G_TYPE_UINT, 2,
      "timestamp", G_TYPE_UINT64, FRAME_NS, "duration", G_TYPE_UINT64, FRAME_NS, NULL);
  fail_unless (gst_harness_push_event (depay,
          gst_event_new_custom (GST_EVENT_CUSTOM_DOWNSTREAM, lost)));
  GstEvent *ev;
  gboolean found = FALSE;
  while ((ev = gst_harness_try_pull_event (depay)) != NULL) {
    if (GST_EVENT_TYPE (ev) == GST_EVENT_GAP) {
      GstClockTime t, d;
      gst_event_parse_gap (ev, &t, &d);
      fail_unless_equals_uint64 (t, FRAME_NS);
      fail_unless_equals_uint64 (d, FRAME_NS);
      found = TRUE;
    }
    gst_event_unref (ev);
  }
  fail_unless (found);
  gst_harness_teardown (depay);
}

GST_END_TEST;

/* ------------------------------------------------------------------ loopback */

typedef struct
{
  GMutex lock;
  guint64 concealed;            /* samples mimidec says it concealed */
  GHashTable *sent;             /* RTP timestamp -> frames, of packets the depayloader got */
  guint64 out_samples;
  gint64 last_seq;
  gboolean reordered;
  guint64 packets;
  GstClockTime first_pts;
  GstClockTime end_pts;         /* where the last decoded buffer ends */
} Loopback;

static Loopback *loopback;

/* mimidec logs "concealed N samples" at DEBUG; that is what tells concealment was used
 * without a counter in the element. */
static void
log_concealment (GstDebugCategory * category, GstDebugLevel level, const gchar * file,
    const gchar * function, gint line, GObject * object, GstDebugMessage * message,
    gpointer user_data)
{
  (void) level, (void) file, (void) function, (void) line, (void) object, (void) user_data;
  if (loopback == NULL || strcmp (gst_debug_category_get_name (category), "mimidec") != 0)
    return;
  const gchar *text = gst_debug_message_get (message);
  guint64 n;
  if (text && sscanf (text, "concealed %" G_GUINT64_FORMAT " samples", &n) == 1) {
    g_mutex_lock (&loopback->lock);
    loopback->concealed += n;
    g_mutex_unlock (&loopback->lock);
  }
}

/* At udpsrc: did netsim reorder anything? */
static GstPadProbeReturn
on_received (GstPad * pad, GstPadProbeInfo * info, gpointer data)
{
  (void) pad, (void) data;
  GstBuffer *buf = GST_PAD_PROBE_INFO_BUFFER (info);
  GstRTPBuffer rtp = GST_RTP_BUFFER_INIT;
  if (gst_rtp_buffer_map (buf, GST_MAP_READ, &rtp)) {
    gint64 seq = gst_rtp_buffer_get_seq (&rtp);
    g_mutex_lock (&loopback->lock);
    if (seq < loopback->last_seq)
      loopback->reordered = TRUE;
    loopback->last_seq = seq;
    loopback->packets++;
    g_mutex_unlock (&loopback->lock);
    gst_rtp_buffer_unmap (&rtp);
  }
  return GST_PAD_PROBE_OK;
}

/* At the depayloader: the packets the jitterbuffer let through (it drops those that come
 * too late, which must then be concealed like lost ones). */
static GstPadProbeReturn
on_depayed (GstPad * pad, GstPadProbeInfo * info, gpointer data)
{
  (void) pad, (void) data;
  GstBuffer *buf = GST_PAD_PROBE_INFO_BUFFER (info);
  GstRTPBuffer rtp = GST_RTP_BUFFER_INIT;
  if (gst_rtp_buffer_map (buf, GST_MAP_READ, &rtp)) {
    guint32 ts = gst_rtp_buffer_get_timestamp (&rtp);
    guint frames = gst_rtp_buffer_get_payload_len (&rtp) / 16;  /* 16 x 8 bits */
    g_mutex_lock (&loopback->lock);
    g_hash_table_insert (loopback->sent, GUINT_TO_POINTER (ts), GUINT_TO_POINTER (frames));
    g_mutex_unlock (&loopback->lock);
    gst_rtp_buffer_unmap (&rtp);
  }
  return GST_PAD_PROBE_OK;
}

static GstPadProbeReturn
on_decoded (GstPad * pad, GstPadProbeInfo * info, gpointer data)
{
  (void) pad, (void) data;
  GstBuffer *buf = GST_PAD_PROBE_INFO_BUFFER (info);
  g_mutex_lock (&loopback->lock);
  if (!GST_CLOCK_TIME_IS_VALID (loopback->first_pts))
    loopback->first_pts = GST_BUFFER_PTS (buf);
  if (GST_BUFFER_PTS_IS_VALID (buf) && GST_BUFFER_DURATION_IS_VALID (buf))
    loopback->end_pts = GST_BUFFER_PTS (buf) + GST_BUFFER_DURATION (buf);
  loopback->out_samples += gst_buffer_get_size (buf) / 4;
  g_mutex_unlock (&loopback->lock);
  return GST_PAD_PROBE_OK;
}

static GstPadProbeReturn
on_sender_eos (GstPad * pad, GstPadProbeInfo * info, gpointer data)
{
  (void) pad;
  if (GST_EVENT_TYPE (GST_PAD_PROBE_INFO_EVENT (info)) == GST_EVENT_EOS)
    g_atomic_int_set ((gint *) data, 1);
  return GST_PAD_PROBE_OK;
}

/* __i__ 0: the jitterbuffer announces losses (do-lost=true: GAP events); 1: it does not, and
 * mimidec sees DISCONT buffers whose timestamps jump. */
GST_START_TEST (test_loopback_loss_and_reordering)
{
  gboolean do_lost = __i__ == 0;
  GstElementFactory *netsim = gst_element_factory_find ("netsim");
  GstElementFactory *udpsrc = gst_element_factory_find ("udpsrc");
  GstElementFactory *jb = gst_element_factory_find ("rtpjitterbuffer");
  if (!netsim || !udpsrc || !jb) {
    g_printerr ("SKIP loopback: netsim, udpsrc or rtpjitterbuffer missing "
        "(gstreamer1.0-plugins-good/-bad)\n");
    g_clear_object (&netsim);
    g_clear_object (&udpsrc);
    g_clear_object (&jb);
    return;
  }
  g_object_unref (netsim);
  g_object_unref (udpsrc);
  g_object_unref (jb);

  Loopback lb = { 0 };
  g_mutex_init (&lb.lock);
  lb.sent = g_hash_table_new (NULL, NULL);
  lb.last_seq = -1;
  lb.first_pts = GST_CLOCK_TIME_NONE;
  loopback = &lb;
  gst_debug_set_threshold_for_name ("mimidec", GST_LEVEL_DEBUG);
  gst_debug_add_log_function (log_concealment, NULL, NULL);
  /* Only our function sees mimidec's DEBUG lines; stderr stays readable. */
  gst_debug_remove_log_function (gst_debug_log_default);

  g_autofree gchar *model = test_data_path ("mimi", "small", "model.safetensors", NULL);
  g_autofree gchar *config = test_data_path ("mimi", "small", "config.json", NULL);
  /* 100 frames (8 s) of live noise, 2 frames a packet: 50 packets, 160 ms apart. netsim
   * drops 15% and delays a third of them by up to 400 ms, so that later ones overtake them;
   * the jitterbuffer's 600 ms latency waits for every delayed one. Port 0: the system picks
   * a free one. */
  g_autofree gchar *desc = g_strdup_printf ("audiotestsrc is-live=true num-buffers=100 "
      "samplesperbuffer=1920 wave=pink-noise ! audio/x-raw,rate=24000,channels=1 ! "
      "mimienc model=%s config=%s num-codebooks=16 ! rtpmimipay frames-per-packet=2 ! "
      "netsim drop-probability=0.15 delay-probability=0.33 min-delay=20 max-delay=400 ! "
      "udpsink name=usink host=127.0.0.1 port=0 sync=false async=false "
      "udpsrc name=usrc address=127.0.0.1 port=0 caps=\"application/x-rtp,media=audio,"
      "clock-rate=24000,encoding-name=MIMI,payload=96,codebooks=(string)16,"
      "codebook-size=(string)256\" ! rtpjitterbuffer latency=600 do-lost=%s mode=none ! "
      "rtpmimidepay name=depay ! mimidec name=dec model=%s config=%s plc=true ! fakesink name=out "
      "sync=false", model, config, do_lost ? "true" : "false", model, config);
  GError *error = NULL;
  GstElement *pipeline = gst_parse_launch (desc, &error);
  fail_unless (pipeline != NULL, "%s", error ? error->message : "");
  GstElement *usrc = gst_bin_get_by_name (GST_BIN (pipeline), "usrc");
  GstElement *usink = gst_bin_get_by_name (GST_BIN (pipeline), "usink");
  GstElement *out = gst_bin_get_by_name (GST_BIN (pipeline), "out");
  GstElement *depay = gst_bin_get_by_name (GST_BIN (pipeline), "depay");

  /* Bind the receiver first, then point the sender at its port. */
  fail_unless (gst_element_set_state (usrc, GST_STATE_READY) != GST_STATE_CHANGE_FAILURE);
  gint port = 0;
  g_object_get (usrc, "port", &port, NULL);
  fail_unless (port > 0);
  g_object_set (usink, "port", port, NULL);

  GstPad *pad = gst_element_get_static_pad (usrc, "src");
  gst_pad_add_probe (pad, GST_PAD_PROBE_TYPE_BUFFER, on_received, NULL, NULL);
  gst_object_unref (pad);
  pad = gst_element_get_static_pad (depay, "sink");
  gst_pad_add_probe (pad, GST_PAD_PROBE_TYPE_BUFFER, on_depayed, NULL, NULL);
  gst_object_unref (pad);
  pad = gst_element_get_static_pad (out, "sink");
  gst_pad_add_probe (pad, GST_PAD_PROBE_TYPE_BUFFER, on_decoded, NULL, NULL);
  gst_object_unref (pad);
  gint sender_done = 0;
  pad = gst_element_get_static_pad (usink, "sink");
  gst_pad_add_probe (pad, GST_PAD_PROBE_TYPE_EVENT_DOWNSTREAM, on_sender_eos, &sender_done,
      NULL);
  gst_object_unref (pad);

  fail_unless (gst_element_set_state (pipeline, GST_STATE_PLAYING)
      != GST_STATE_CHANGE_FAILURE);
  GstBus *bus = gst_element_get_bus (pipeline);
  /* The sender ends after 8 s; then let the delayed packets and the jitterbuffer's latency
   * pass, and end the receiver. */
  for (gint i = 0; i < 600 && !g_atomic_int_get (&sender_done); i++) {
    GstMessage *msg = gst_bus_timed_pop_filtered (bus, 50 * GST_MSECOND, GST_MESSAGE_ERROR);
    fail_unless (msg == NULL, "error in the loopback pipeline");
  }
  fail_unless (g_atomic_int_get (&sender_done), "the sender did not finish");
  g_usleep (3 * G_USEC_PER_SEC / 2);
  gst_element_send_event (usrc, gst_event_new_eos ());
  GstMessage *msg = gst_bus_timed_pop_filtered (bus, 30 * GST_SECOND,
      GST_MESSAGE_EOS | GST_MESSAGE_ERROR);
  fail_unless (msg != NULL && GST_MESSAGE_TYPE (msg) == GST_MESSAGE_EOS, "no EOS");
  gst_message_unref (msg);
  gst_element_set_state (pipeline, GST_STATE_NULL);

  /* What the depayloader got spans from the first packet's timestamp to the last one's
   * end; every frame in between that it did not get is concealed. */
  guint32 span_start = G_MAXUINT32, last_end = 0;
  guint64 received_frames = 0;
  GHashTableIter it;
  gpointer k, v;
  g_hash_table_iter_init (&it, lb.sent);
  while (g_hash_table_iter_next (&it, &k, &v)) {
    guint32 ts = GPOINTER_TO_UINT (k);
    span_start = MIN (span_start, ts);
    last_end = MAX (last_end, ts + GPOINTER_TO_UINT (v) * FRAME_SAMPLES);
    received_frames += GPOINTER_TO_UINT (v);
  }
  guint64 span = last_end - span_start;
  guint64 lost = span - received_frames * FRAME_SAMPLES;
  g_print ("loopback (do-lost=%d): %" G_GUINT64_FORMAT " packets received (%s), %" G_GUINT64_FORMAT
      " frames lost in between; %" G_GUINT64_FORMAT " samples out, %" G_GUINT64_FORMAT
      " concealed, output %" GST_TIME_FORMAT " - %" GST_TIME_FORMAT "\n", do_lost, lb.packets,
      lb.reordered ? "reordered" : "in order", lost / FRAME_SAMPLES, lb.out_samples,
      lb.concealed, GST_TIME_ARGS (lb.first_pts), GST_TIME_ARGS (lb.end_pts));
  fail_unless (lb.packets >= 20, "too few packets arrived");
  /* Whether netsim reordered or dropped anything this time is chance (a run without either
   * has a probability below 1e-5); the checks hold either way. */
  fail_unless_equals_uint64 (lb.out_samples, span);
  fail_unless_equals_uint64 (lb.concealed, lost);

  loopback = NULL;
  gst_debug_remove_log_function (log_concealment);
  gst_debug_add_log_function (gst_debug_log_default, NULL, NULL);
  gst_debug_set_threshold_for_name ("mimidec", GST_LEVEL_NONE);
  gst_object_unref (bus);
  gst_object_unref (usrc);
  gst_object_unref (usink);
  gst_object_unref (out);
  gst_object_unref (depay);
  gst_object_unref (pipeline);
  g_hash_table_unref (lb.sent);
  g_mutex_clear (&lb.lock);
}

GST_END_TEST;

static Suite *
rtp_mimi_suite (void)
{
  Suite *s = suite_create ("rtp-mimi");
  TCase *harness = tcase_create ("harness");
  suite_add_tcase (s, harness);
  tcase_add_test (harness, test_round_trip);
  tcase_add_test (harness, test_packing_example);
  tcase_add_test (harness, test_marker_and_discont);
  tcase_add_test (harness, test_caps_and_sdp);
  tcase_add_test (harness, test_malformed_packets);
  tcase_add_test (harness, test_packet_lost_is_gap);
  TCase *network = tcase_create ("network");
  suite_add_tcase (s, network);
  tcase_add_loop_test (network, test_loopback_loss_and_reordering, 0, 2);
  return s;
}

GST_CHECK_MAIN (rtp_mimi);
