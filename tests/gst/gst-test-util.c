/* Helpers shared by the GstHarness suites of the moshi plugin: see gst-test-util.h. */
#include "gst-test-util.h"

#include <math.h>
#include <string.h>

#include <moshi/moshi-safetensors.h>

/* ------------------------------------------------------------------ test data */

gchar *
test_data_path (const gchar * first_element, ...)
{
  const gchar *data = g_getenv ("MOSHI_TEST_DATA");
  fail_unless (data != NULL, "MOSHI_TEST_DATA is not set");
  va_list args;
  va_start (args, first_element);
  g_autofree gchar *below = g_build_filename_valist (first_element, &args);
  va_end (args);
  return g_build_filename (data, below, NULL);
}

gfloat *
load_speech (gsize * n)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *golden = test_data_path ("mimi", "small", "golden.safetensors", NULL);
  g_autoptr (MoshiSafetensors) st = moshi_safetensors_open (golden, &error);
  fail_unless (st != NULL, "%s", error ? error->message : "");
  const MoshiTensorEntry *e = moshi_safetensors_lookup (st, "speech.pcm");
  fail_unless (e != NULL && e->dtype == MOSHI_DTYPE_F32);
  *n = e->nbytes / sizeof (gfloat);
  return g_memdup2 (e->data, e->nbytes);
}

void
write_broken_safetensors (const gchar * dir, const gchar * source, gchar ** garbage,
    gchar ** truncated)
{
  *garbage = g_build_filename (dir, "garbage.safetensors", NULL);
  *truncated = g_build_filename (dir, "truncated.safetensors", NULL);
  fail_unless (g_file_set_contents (*garbage, "this is not a safetensors file", -1, NULL));
  gchar *contents;
  gsize len;
  fail_unless (g_file_get_contents (source, &contents, &len, NULL));
  fail_unless (g_file_set_contents (*truncated, contents, len / 2, NULL));
  g_free (contents);
}

void
quantize_to_s16 (const gfloat * pcm, gsize n, gint16 * s16, gfloat * as_float)
{
  for (gsize i = 0; i < n; i++) {
    s16[i] = (gint16) CLAMP (lrintf (pcm[i] * 32767.0f), -32768, 32767);
    as_float[i] = s16[i] / 32768.0f;
  }
}

/* ------------------------------------------------------------------ library reference */

MoshiMimi *
load_mimi (const gchar * model_path, const gchar * config_path)
{
  g_autoptr (GError) error = NULL;
  MoshiMimi *mimi = moshi_mimi_load (model_path, config_path, NULL, &error);
  fail_unless (mimi != NULL, "%s", error ? error->message : "");
  return mimi;
}

gint32 *
reference_mimi_encode (const gchar * model_path, const gchar * config_path,
    const gfloat * pcm, gsize n, gint codebooks, gsize * n_frames)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (MoshiMimi) mimi = load_mimi (model_path, config_path);
  MoshiMimiSessionOptions options = {.num_codebooks = codebooks,.max_frames_per_call = 1 };
  g_autoptr (MoshiMimiSession) session = moshi_mimi_session_new (mimi, &options, &error);
  fail_unless (session != NULL, "%s", error ? error->message : "");

  gsize frames = (n + FRAME - 1) / FRAME;
  g_autofree gfloat *padded = g_new0 (gfloat, frames * FRAME);
  memcpy (padded, pcm, n * sizeof (gfloat));
  g_autofree gint32 *by_codebook = g_new (gint32, frames * codebooks);
  fail_unless (moshi_mimi_session_encode (session, padded, (gint) frames, by_codebook,
          &error), "%s", error ? error->message : "");
  gint32 *codes = g_new (gint32, frames * codebooks);
  for (gsize f = 0; f < frames; f++)
    for (gint k = 0; k < codebooks; k++)
      codes[f * codebooks + k] = by_codebook[k * frames + f];
  *n_frames = frames;
  return codes;
}

/* ------------------------------------------------------------------ harness helpers */

GstHarness *
harness_for (GstElement * element)
{
  GstHarness *h = gst_harness_new_with_element (element, "sink", "src");
  gst_object_unref (element);
  return h;
}

GstClockTime
samples_to_time (guint64 samples)
{
  return gst_util_uint64_scale (samples, GST_SECOND, RATE);
}

void
push_pcm (GstHarness * h, const gfloat * pcm, gsize n, gsize chunk, GstClockTime start_ns)
{
  for (gsize off = 0; off < n; off += chunk) {
    gsize m = MIN (chunk, n - off);
    GstBuffer *buf = gst_buffer_new_memdup (pcm + off, m * sizeof (gfloat));
    GST_BUFFER_PTS (buf) = start_ns + samples_to_time (off);
    GST_BUFFER_DURATION (buf) = start_ns + samples_to_time (off + m) - GST_BUFFER_PTS (buf);
    fail_unless_equals_int (gst_harness_push (h, buf), GST_FLOW_OK);
  }
}

GstBuffer *
token_buffer (const gint32 * codes, gsize frames, gint codebooks, gsize first_frame)
{
  gsize size = frames * codebooks * 2;
  guint8 *data = g_malloc (size);
  for (gsize i = 0; i < frames * codebooks; i++)
    GST_WRITE_UINT16_LE (data + 2 * i, (guint16) codes[first_frame * codebooks + i]);
  GstBuffer *buf = gst_buffer_new_wrapped (data, size);
  GST_BUFFER_PTS (buf) = first_frame * FRAME_NS;
  GST_BUFFER_DURATION (buf) = frames * FRAME_NS;
  return buf;
}

void
push_flush (GstHarness * h)
{
  GstSegment segment;
  fail_unless (gst_harness_push_event (h, gst_event_new_flush_start ()));
  fail_unless (gst_harness_push_event (h, gst_event_new_flush_stop (TRUE)));
  gst_segment_init (&segment, GST_FORMAT_TIME);
  fail_unless (gst_harness_push_event (h, gst_event_new_segment (&segment)));
}

GPtrArray *
pull_all (GstHarness * h)
{
  GPtrArray *bufs = g_ptr_array_new_with_free_func ((GDestroyNotify) gst_buffer_unref);
  GstBuffer *buf;
  while ((buf = gst_harness_try_pull (h)) != NULL)
    g_ptr_array_add (bufs, buf);
  return bufs;
}

GPtrArray *
pull_events (GstHarness * h, GstEventType type)
{
  GPtrArray *events = g_ptr_array_new_with_free_func ((GDestroyNotify) gst_event_unref);
  GstEvent *event;
  while ((event = gst_harness_try_pull_event (h)) != NULL) {
    if (GST_EVENT_TYPE (event) == type)
      g_ptr_array_add (events, event);
    else
      gst_event_unref (event);
  }
  return events;
}

/* ------------------------------------------------------------------ comparisons */

gfloat *
concat_f32 (GPtrArray * bufs, gsize * n)
{
  GByteArray *bytes = g_byte_array_new ();
  for (guint i = 0; i < bufs->len; i++) {
    GstMapInfo map;
    fail_unless (gst_buffer_map (g_ptr_array_index (bufs, i), &map, GST_MAP_READ));
    g_byte_array_append (bytes, map.data, map.size);
    gst_buffer_unmap (g_ptr_array_index (bufs, i), &map);
  }
  *n = bytes->len / sizeof (gfloat);
  return (gfloat *) g_byte_array_free (bytes, FALSE);
}

void
assert_pcm_equal (const gfloat * got, const gfloat * expected, gsize n)
{
  for (gsize i = 0; i < n; i++) {
    if (memcmp (&got[i], &expected[i], sizeof (gfloat)) != 0)
      fail ("sample %" G_GSIZE_FORMAT " differs: %.9g vs %.9g (frame %" G_GSIZE_FORMAT ")",
          i, got[i], expected[i], i / FRAME);
  }
}

double
assert_f32_buffers_close (GPtrArray * bufs, const gfloat * expected, gsize n,
    double tolerance)
{
  gsize got_n;
  g_autofree gfloat *got = concat_f32 (bufs, &got_n);
  fail_unless_equals_int (got_n, n);
  double diff = 0, norm = 0;
  for (gsize i = 0; i < n; i++) {
    diff += ((double) got[i] - expected[i]) * ((double) got[i] - expected[i]);
    norm += (double) expected[i] * expected[i];
  }
  double rel = norm > 0 ? sqrt (diff / norm) : sqrt (diff);
  fail_unless (rel <= tolerance, "audio %.3g relative L2 from the expected, more than %.3g",
      rel, tolerance);
  return rel;
}

void
assert_f32_buffers_equal (GPtrArray * bufs, const gfloat * expected, gsize n)
{
  gsize got_n;
  g_autofree gfloat *got = concat_f32 (bufs, &got_n);
  fail_unless_equals_int (got_n, n);
  assert_pcm_equal (got, expected, n);
}

void
assert_s16_frames_equal (GPtrArray * bufs, const gfloat * expected)
{
  for (guint f = 0; f < bufs->len; f++) {
    GstMapInfo map;
    fail_unless (gst_buffer_map (g_ptr_array_index (bufs, f), &map, GST_MAP_READ));
    for (gsize i = 0; i < FRAME; i++) {
      gfloat v = roundf (expected[f * FRAME + i] * 32768.0f);
      gint16 want = (gint16) CLAMP (v, -32768.0f, 32767.0f);
      fail_unless_equals_int ((gint16) GST_READ_UINT16_LE (map.data + 2 * i), want);
    }
    gst_buffer_unmap (g_ptr_array_index (bufs, f), &map);
  }
}

void
assert_token_buffer_equal (GstBuffer * buf, const gint32 * codes, gint codebooks)
{
  GstMapInfo map;
  fail_unless (gst_buffer_map (buf, &map, GST_MAP_READ));
  fail_unless_equals_int (map.size, codebooks * 2);
  for (gint k = 0; k < codebooks; k++)
    fail_unless_equals_int (GST_READ_UINT16_LE (map.data + 2 * k), codes[k]);
  gst_buffer_unmap (buf, &map);
}

void
assert_current_caps (GstPad * pad, const gchar * expected_caps)
{
  GstCaps *caps = gst_pad_get_current_caps (pad);
  GstCaps *expected = gst_caps_from_string (expected_caps);
  fail_unless (gst_caps_is_equal (caps, expected), "caps %" GST_PTR_FORMAT, caps);
  gst_caps_unref (expected);
  gst_caps_unref (caps);
}

/* ------------------------------------------------------------------ bus, errors */

GstBus *
attach_bus (GstElement * element)
{
  GstBus *bus = gst_bus_new ();
  gst_element_set_bus (element, bus);
  return bus;
}

void
drop_bus (GstBus * bus)
{
  gst_bus_set_flushing (bus, TRUE);
  gst_object_unref (bus);
}

guint
count_bus_warnings (GstBus * bus)
{
  guint warnings = 0;
  GstMessage *msg;
  while ((msg = gst_bus_pop (bus)) != NULL) {
    fail_if (GST_MESSAGE_TYPE (msg) == GST_MESSAGE_ERROR);
    warnings += GST_MESSAGE_TYPE (msg) == GST_MESSAGE_WARNING;
    gst_message_unref (msg);
  }
  return warnings;
}

GstMessage *
pop_error (GstBus * bus)
{
  GstMessage *msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ERROR);
  fail_unless (msg != NULL, "no error message on the bus");
  return msg;
}

GstMessage *
expect_open_error (GstElement * element)
{
  GstBus *bus = attach_bus (element);
  fail_unless_equals_int (gst_element_set_state (element, GST_STATE_READY),
      GST_STATE_CHANGE_FAILURE);
  GstMessage *msg = pop_error (bus);
  /* one clear error, not followed by a base class's generic one */
  GstMessage *second = gst_bus_pop_filtered (bus, GST_MESSAGE_ERROR);
  if (second != NULL) {
    GError *error = NULL;
    gst_message_parse_error (second, &error, NULL);
    fail ("a second error after a failed open: %s", error->message);
  }
  gst_element_set_state (element, GST_STATE_NULL);
  drop_bus (bus);
  return msg;
}

void
assert_error (GstMessage * msg, GQuark domain, gint code, const gchar * needle,
    const gchar * needle2)
{
  GError *error = NULL;
  gchar *debug = NULL;
  gst_message_parse_error (msg, &error, &debug);
  fail_unless (error->domain == domain && error->code == code,
      "error %s (%s %d) is not the expected one", error->message,
      g_quark_to_string (error->domain), error->code);
  fail_unless (strstr (error->message, needle) != NULL, "'%s' does not name '%s'",
      error->message, needle);
  if (needle2 != NULL)
    fail_unless (strstr (error->message, needle2) != NULL, "'%s' does not name '%s'",
        error->message, needle2);
  g_error_free (error);
  g_free (debug);
  gst_message_unref (msg);
}

void
assert_caps_refused (GstHarness * h, const gchar * caps_str)
{
  GstCaps *caps = gst_caps_from_string (caps_str);
  fail_if (gst_pad_send_event (GST_PAD_PEER (h->srcpad), gst_event_new_caps (caps)));
  gst_caps_unref (caps);
}

void
stress_state_changes (GstHarness * h, const gchar * caps, GstBuffer * buf)
{
  /* What GStreamer's own stress tests tolerate: sticky events racing the state changes. */
  gst_check_add_log_filter ("GStreamer", G_LOG_LEVEL_WARNING,
      g_regex_new ("Got data flow before (stream-start|segment) event", 0, 0, NULL),
      NULL, NULL, NULL);
  gst_check_add_log_filter ("GStreamer", G_LOG_LEVEL_WARNING,
      g_regex_new ("Sticky event misordering", 0, 0, NULL), NULL, NULL, NULL);

  GstSegment segment;
  gst_segment_init (&segment, GST_FORMAT_TIME);
  GstCaps *c = gst_caps_from_string (caps);
  GstHarnessThread *push = gst_harness_stress_push_buffer_start (h, c, &segment, buf);
  GstHarnessThread *state = gst_harness_stress_statechange_start (h);
  g_usleep (G_USEC_PER_SEC / 2);
  guint toggles = gst_harness_stress_thread_stop (state);
  guint pushes = gst_harness_stress_thread_stop (push);
  GST_INFO ("%u state changes, %u pushes", toggles, pushes);
  fail_unless (toggles > 0 && pushes > 0);
  gst_caps_unref (c);
  gst_buffer_unref (buf);
  g_ptr_array_unref (pull_all (h));
  gst_check_clear_log_filter ();
}

/* ------------------------------------------------------------------ stream order */

/* Breaches listed by stream_checker_assert_clean. */
#define BREACHES_SHOWN 5
/* How often a wait looks at the bus for an error: a polling period, not a deadline. */
#define BUS_POLL_US (100 * G_TIME_SPAN_MILLISECOND)

struct _StreamChecker
{
  GstPad *pad;
  gulong probe;
  GMutex lock;
  GCond changed;
  gboolean need_segment;        /* the stream started or flushed since the last SEGMENT */
  GstClockTime last_pts;        /* the latest timestamp in the current segment */
  guint32 segment_seqnum;
  guint buffers_since_segment;
  gboolean eos_since_segment;
  guint segments, buffers, refuse;
  GPtrArray *breaches;
};

static void
check_buffer (StreamChecker * checker, GstBuffer * buf)
{
  GstClockTime pts = GST_BUFFER_PTS (buf);

  if (checker->need_segment) {
    g_ptr_array_add (checker->breaches, g_strdup_printf ("buffer at %" GST_TIME_FORMAT
            " without a segment since the stream started or flushed (after %u segments, %u "
            "buffers)", GST_TIME_ARGS (pts), checker->segments, checker->buffers));
  } else if (GST_CLOCK_TIME_IS_VALID (pts) && GST_CLOCK_TIME_IS_VALID (checker->last_pts)
      && pts < checker->last_pts) {
    g_ptr_array_add (checker->breaches, g_strdup_printf ("timestamp back from %"
            GST_TIME_FORMAT " to %" GST_TIME_FORMAT " in segment %u (seqnum %u)",
            GST_TIME_ARGS (checker->last_pts), GST_TIME_ARGS (pts), checker->segments,
            checker->segment_seqnum));
  }
  if (GST_CLOCK_TIME_IS_VALID (pts))
    checker->last_pts = pts;
  checker->buffers++;
  checker->buffers_since_segment++;
}

static void
check_event (StreamChecker * checker, GstEvent * event)
{
  switch (GST_EVENT_TYPE (event)) {
    case GST_EVENT_STREAM_START:
    case GST_EVENT_FLUSH_STOP:
      checker->need_segment = TRUE;
      break;
    case GST_EVENT_SEGMENT:
      checker->need_segment = FALSE;
      checker->last_pts = GST_CLOCK_TIME_NONE;
      checker->segment_seqnum = gst_event_get_seqnum (event);
      checker->buffers_since_segment = 0;
      checker->eos_since_segment = FALSE;
      checker->segments++;
      break;
    case GST_EVENT_EOS:
      checker->eos_since_segment = TRUE;
      break;
    default:
      break;
  }
}

static GstPadProbeReturn
stream_checker_probe (GstPad * pad, GstPadProbeInfo * info, gpointer user_data)
{
  StreamChecker *checker = user_data;
  GstPadProbeReturn ret = GST_PAD_PROBE_OK;

  g_mutex_lock (&checker->lock);
  if (info->type & GST_PAD_PROBE_TYPE_BUFFER) {
    check_buffer (checker, GST_PAD_PROBE_INFO_BUFFER (info));
    if (checker->refuse > 0) {
      checker->refuse--;
      gst_buffer_unref (GST_PAD_PROBE_INFO_BUFFER (info));
      GST_PAD_PROBE_INFO_DATA (info) = NULL;
      GST_PAD_PROBE_INFO_FLOW_RETURN (info) = GST_FLOW_FLUSHING;
      ret = GST_PAD_PROBE_HANDLED;
    }
  } else {
    check_event (checker, GST_PAD_PROBE_INFO_EVENT (info));
  }
  g_cond_broadcast (&checker->changed);
  g_mutex_unlock (&checker->lock);
  return ret;
}

StreamChecker *
stream_checker_attach (GstPad * pad)
{
  StreamChecker *checker = g_new0 (StreamChecker, 1);
  g_mutex_init (&checker->lock);
  g_cond_init (&checker->changed);
  checker->need_segment = TRUE;
  checker->last_pts = GST_CLOCK_TIME_NONE;
  checker->segment_seqnum = GST_SEQNUM_INVALID;
  checker->breaches = g_ptr_array_new_with_free_func (g_free);
  checker->pad = gst_object_ref (pad);
  /* Flush events reach only the probes that ask for them. */
  checker->probe = gst_pad_add_probe (pad, GST_PAD_PROBE_TYPE_BUFFER |
      GST_PAD_PROBE_TYPE_EVENT_DOWNSTREAM | GST_PAD_PROBE_TYPE_EVENT_FLUSH,
      stream_checker_probe, checker, NULL);
  return checker;
}

void
stream_checker_refuse_buffers (StreamChecker * checker, guint n)
{
  g_mutex_lock (&checker->lock);
  checker->refuse = n;
  g_mutex_unlock (&checker->lock);
}

static void
fail_on_bus_error (GstBus * bus)
{
  GstMessage *msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ERROR);
  if (msg == NULL)
    return;
  g_autoptr (GError) error = NULL;
  g_autofree gchar *debug = NULL;
  gst_message_parse_error (msg, &error, &debug);
  gst_message_unref (msg);
  fail ("error on the bus: %s (%s)", error->message, debug ? debug : "");
}

/* Under the checker's lock. */
static gboolean
segment_went_out (StreamChecker * checker, guint n_segments, guint32 seqnum,
    guint min_buffers)
{
  if (checker->breaches->len > 0)
    return TRUE;
  return checker->segments >= n_segments
      && (seqnum == GST_SEQNUM_INVALID || checker->segment_seqnum == seqnum)
      && (checker->buffers_since_segment >= min_buffers || checker->eos_since_segment);
}

void
stream_checker_wait_segment (StreamChecker * checker, guint n_segments, guint32 seqnum,
    guint min_buffers, GstBus * bus)
{
  g_mutex_lock (&checker->lock);
  while (!segment_went_out (checker, n_segments, seqnum, min_buffers)) {
    gint64 until = g_get_monotonic_time () + BUS_POLL_US;
    if (!g_cond_wait_until (&checker->changed, &checker->lock, until)) {
      g_mutex_unlock (&checker->lock);
      fail_on_bus_error (bus);
      g_mutex_lock (&checker->lock);
    }
  }
  g_mutex_unlock (&checker->lock);
}

void
stream_checker_counts (StreamChecker * checker, guint * segments, guint * n_buffers)
{
  g_mutex_lock (&checker->lock);
  *segments = checker->segments;
  *n_buffers = checker->buffers;
  g_mutex_unlock (&checker->lock);
}

void
stream_checker_assert_clean (StreamChecker * checker)
{
  g_mutex_lock (&checker->lock);
  g_autoptr (GString) text = g_string_new (NULL);
  for (guint i = 0; i < MIN (checker->breaches->len, BREACHES_SHOWN); i++)
    g_string_append_printf (text, "; %s", (gchar *) g_ptr_array_index (checker->breaches, i));
  guint n = checker->breaches->len;
  g_mutex_unlock (&checker->lock);
  fail_unless (n == 0, "%u breaches of stream order on %s:%s%s", n,
      GST_DEBUG_PAD_NAME (checker->pad), text->str);
}

void
stream_checker_free (StreamChecker * checker)
{
  gst_pad_remove_probe (checker->pad, checker->probe);
  gst_object_unref (checker->pad);
  g_ptr_array_unref (checker->breaches);
  g_cond_clear (&checker->changed);
  g_mutex_clear (&checker->lock);
  g_free (checker);
}

/* ------------------------------------------------------------------ device tests */

GstElement *
make_device_element (const gchar * factory, gboolean shared)
{
  GstElement *element = gst_element_factory_make (factory, NULL);
  fail_unless (element != NULL, "no %s: is the plugin on GST_PLUGIN_PATH_1_0?", factory);
  g_autofree gchar *mimi = test_data_path ("mimi", "small", "model.safetensors", NULL);
  g_autofree gchar *mimi_cfg = test_data_path ("mimi", "small", "config.json", NULL);
  if (g_str_equal (factory, "moshidialog")) {
    g_autofree gchar *lm = test_data_path ("lm", "dialog", "model.safetensors", NULL);
    g_autofree gchar *lm_cfg = test_data_path ("lm", "dialog", "config.json", NULL);
    g_autofree gchar *tok = test_data_path ("tokenizer", "tiny.model", NULL);
    g_object_set (element, "model", lm, "lm-config", lm_cfg, "mimi-model", mimi,
        "mimi-config", mimi_cfg, "tokenizer", tok, NULL);
  } else {
    g_object_set (element, "model", mimi, "config", mimi_cfg, NULL);
  }
  gst_util_set_object_arg (G_OBJECT (element), "device", "cuda");
  g_object_set (element, "shared-scheduler", shared, NULL);
  return element;
}

GstBuffer *
device_input_frame (InputKind kind, const gfloat * speech, gsize speech_frames, gsize f)
{
  GstBuffer *buf;
  if (kind == INPUT_PCM) {
    buf = gst_buffer_new_memdup (speech + (f % speech_frames) * FRAME, FRAME * sizeof (gfloat));
  } else {
    /* token_buffer reads frame f of a frame-major array */
    g_autofree gint32 *codes = g_new (gint32, (f + 1) * DEVICE_TEST_CODEBOOKS);
    for (gsize i = 0; i < (f + 1) * DEVICE_TEST_CODEBOOKS; i++)
      codes[i] = (gint32) ((i * 37 + 11) % CODEBOOK_SIZE);
    return token_buffer (codes, 1, DEVICE_TEST_CODEBOOKS, f);
  }
  GST_BUFFER_PTS (buf) = f * FRAME_NS;
  GST_BUFFER_DURATION (buf) = FRAME_NS;
  return buf;
}

Suite *
device_test_suite (const gchar * name, TFun test,
    const DeviceTestCase * cases, guint n_cases)
{
  Suite *s = suite_create (name);
  for (guint i = 0; i < n_cases; i++) {
    TCase *tc = tcase_create (cases[i].name);
    tcase_set_timeout (tc, 600);
    tcase_add_loop_test (tc, test, i, i + 1);
    suite_add_tcase (s, tc);
  }
  return s;
}

GError *
pop_only_error (GstBus * bus, GstElement * element, GQuark domain, gint code,
    gchar ** debug)
{
  GError *only = NULL;
  GstMessage *msg;
  while ((msg = gst_bus_pop (bus)) != NULL) {
    if (GST_MESSAGE_TYPE (msg) == GST_MESSAGE_ERROR) {
      GError *error = NULL;
      gchar *text = NULL;
      gst_message_parse_error (msg, &error, &text);
      GST_INFO ("error: %s (%s)", error->message, text);
      fail_unless (only == NULL, "a second error: %s (%s)", error->message, text);
      fail_unless (GST_MESSAGE_SRC (msg) == GST_OBJECT (element));
      fail_unless (error->domain == domain && error->code == code, "error %s (%s %d)",
          error->message, g_quark_to_string (error->domain), error->code);
      only = error;
      *debug = text;
    }
    gst_message_unref (msg);
  }
  fail_unless (only != NULL, "no error message on the bus");
  return only;
}
