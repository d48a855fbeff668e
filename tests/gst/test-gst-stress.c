/* Stress tests of the moshi elements in whole pipelines, driven as an application drives
 * them (issue 14): a storm of flushing seeks while data flows through mimienc, mimidec and
 * moshidialog; a pipeline taken from NULL to PLAYING and back again and again; caps changed
 * in the middle of a stream. A StreamChecker on every sink pad checks that each restart's
 * SEGMENT arrives before its data and that timestamps never go back within a segment.
 *
 * The input is a generated WAV through filesrc ! wavparse ! audioconvert, as in the issue's
 * reproducer, or audiotestsrc where caps change. The models are the small ones of tests/data.
 * Needs the system plugins (base and good); the program exits 77 (skipped) without them.
 *
 * Timing is the scheduler's: each seek waits, without a deadline, for the previous seek's
 * SEGMENT and then 0 to 2 buffers (a fixed-seed sequence), so that the seeks land while the
 * elements are busy; the checks hold whatever the interleaving. */
#include <gst/check/gstcheck.h>
#include <glib/gstdio.h>
#include <string.h>

#include "gst-test-util.h"

#define WAV_SECONDS 20
#define SEED 14

static gchar *tmp_dir, *wav_path;
static gchar *mimi_path, *mimi_config, *lm_path, *lm_config, *tokenizer_path;

static const gchar *const needed_plugins[] = {
  "filesrc", "wavparse", "audioconvert", "audiotestsrc", "capsfilter", "fakesink",
};

/* Under valgrind every frame costs some fifty times more: fewer rounds. */
static guint
rounds (guint normal, guint under_valgrind)
{
  return g_getenv ("MOSHI_TEST_VALGRIND") != NULL ? under_valgrind : normal;
}

/* ------------------------------------------------------------------ data */

/* seconds of the golden speech, looped, as 16-bit PCM (audioconvert turns it into F32). */
static void
write_speech_wav (const gchar * path, guint seconds)
{
  gsize speech_len;
  g_autofree gfloat *speech = load_speech (&speech_len);
  gsize n = (gsize) seconds * RATE;
  gsize data_len = n * 2;
  g_autofree guint8 *wav = g_malloc (44 + data_len);
  memcpy (wav, "RIFF", 4);
  GST_WRITE_UINT32_LE (wav + 4, 36 + data_len);
  memcpy (wav + 8, "WAVEfmt ", 8);
  GST_WRITE_UINT32_LE (wav + 16, 16);
  GST_WRITE_UINT16_LE (wav + 20, 1);
  GST_WRITE_UINT16_LE (wav + 22, 1);
  GST_WRITE_UINT32_LE (wav + 24, RATE);
  GST_WRITE_UINT32_LE (wav + 28, RATE * 2);
  GST_WRITE_UINT16_LE (wav + 32, 2);
  GST_WRITE_UINT16_LE (wav + 34, 16);
  memcpy (wav + 36, "data", 4);
  GST_WRITE_UINT32_LE (wav + 40, data_len);
  for (gsize i = 0; i < n; i++) {
    gfloat v = CLAMP (speech[i % speech_len], -1.0f, 1.0f) * 32767.0f;
    GST_WRITE_UINT16_LE (wav + 44 + 2 * i, (guint16) (gint16) v);
  }
  fail_unless (g_file_set_contents (path, (const gchar *) wav, 44 + data_len, NULL));
}

static void
setup_data (void)
{
  mimi_path = test_data_path ("mimi", "small", "model.safetensors", NULL);
  mimi_config = test_data_path ("mimi", "small", "config.json", NULL);
  lm_path = test_data_path ("lm", "dialog", "model.safetensors", NULL);
  lm_config = test_data_path ("lm", "dialog", "config.json", NULL);
  tokenizer_path = test_data_path ("tokenizer", "tiny.model", NULL);
  tmp_dir = g_dir_make_tmp ("moshi-stress-XXXXXX", NULL);
  fail_unless (tmp_dir != NULL);
  wav_path = g_build_filename (tmp_dir, "speech.wav", NULL);
  write_speech_wav (wav_path, WAV_SECONDS);
}

static void
teardown_data (void)
{
  g_unlink (wav_path);
  g_rmdir (tmp_dir);
  g_clear_pointer (&wav_path, g_free);
  g_clear_pointer (&tmp_dir, g_free);
  g_clear_pointer (&mimi_path, g_free);
  g_clear_pointer (&mimi_config, g_free);
  g_clear_pointer (&lm_path, g_free);
  g_clear_pointer (&lm_config, g_free);
  g_clear_pointer (&tokenizer_path, g_free);
}

/* ------------------------------------------------------------------ pipelines */

/* The pipelines under test; each has a capsfilter "out" and a fakesink "sink" after the
 * element under test. */
typedef enum
{
  CODEC,                        /* mimienc ! mimidec */
  DIALOG,                       /* moshidialog, its text_src to "text_sink" */
} Chain;

static gchar *
chain_description (Chain chain)
{
  if (chain == CODEC)
    return g_strdup_printf ("mimienc name=mimienc model=%s config=%s ! mimidec name=dec "
        "model=%s config=%s ! capsfilter name=out ! fakesink name=sink sync=false", mimi_path,
        mimi_config, mimi_path, mimi_config);
  /* The text sink must not wait for preroll: words are sparse, and the audio sink would
   * hold the streaming thread in preroll while the text sink waited for a word. */
  return g_strdup_printf ("moshidialog name=dialog model=%s lm-config=%s mimi-model=%s "
      "mimi-config=%s tokenizer=%s ! capsfilter name=out ! fakesink name=sink sync=false "
      "dialog.text_src ! fakesink name=text_sink sync=false async=false", lm_path, lm_config,
      mimi_path, mimi_config, tokenizer_path);
}

/* A checker on the sink pad of the element named name. */
static StreamChecker *
check_input_of (GstElement * pipeline, const gchar * name)
{
  g_autoptr (GstElement) element = gst_bin_get_by_name (GST_BIN (pipeline), name);
  fail_unless (element != NULL, "no %s", name);
  g_autoptr (GstPad) pad = gst_element_get_static_pad (element, "sink");
  return stream_checker_attach (pad);
}

/* The checkers of a pipeline: first the main sink's, then the other ones along the chain
 * (what mimienc sends to mimidec; moshidialog's text). */
static GPtrArray *
attach_checkers (GstElement * pipeline, Chain chain)
{
  GPtrArray *checkers = g_ptr_array_new_with_free_func ((GDestroyNotify) stream_checker_free);
  g_ptr_array_add (checkers, check_input_of (pipeline, "sink"));
  g_ptr_array_add (checkers, check_input_of (pipeline, chain == CODEC ? "dec" : "text_sink"));
  return checkers;
}

static void
assert_checkers_clean (GPtrArray * checkers)
{
  for (guint i = 0; i < checkers->len; i++)
    stream_checker_assert_clean (g_ptr_array_index (checkers, i));
}

/* Every checker saw n_segments SEGMENTs. */
static void
assert_segments (GPtrArray * checkers, guint n_segments)
{
  for (guint i = 0; i < checkers->len; i++) {
    guint segments, n_buffers;
    stream_checker_counts (g_ptr_array_index (checkers, i), &segments, &n_buffers);
    GST_INFO ("checker %u: %u segments, %u buffers", i, segments, n_buffers);
    fail_unless_equals_int (segments, n_segments);
  }
}

/* Waits until the SEGMENT went out through every checker, and min_buffers after it at the
 * main sink: then no push of it is still under way that the next seek could refuse (the
 * text pad gets it after the audio pad). */
static void
wait_segment_everywhere (GPtrArray * checkers, guint n_segments, guint32 seqnum,
    guint min_buffers, GstBus * bus)
{
  for (guint i = 0; i < checkers->len; i++)
    stream_checker_wait_segment (g_ptr_array_index (checkers, i), n_segments, seqnum,
        i == 0 ? min_buffers : 0, bus);
}

/* A pipeline under test, with its checkers (the main sink's first) and its bus. */
typedef struct
{
  GstElement *pipeline;
  GPtrArray *checkers;
  GstBus *bus;
} Run;

/* source: the description of what feeds the chain. */
static void
run_init (Run * run, const gchar * source, Chain chain)
{
  g_autofree gchar *tail = chain_description (chain);
  g_autofree gchar *description = g_strdup_printf ("%s ! %s", source, tail);
  g_autoptr (GError) error = NULL;
  run->pipeline = gst_parse_launch (description, &error);
  fail_unless (run->pipeline != NULL && error == NULL, "%s: %s", description,
      error ? error->message : "");
  run->checkers = attach_checkers (run->pipeline, chain);
  run->bus = gst_element_get_bus (run->pipeline);
}

static void
run_init_wav (Run * run, Chain chain)
{
  g_autofree gchar *source = g_strdup_printf ("filesrc location=%s ! wavparse ! audioconvert",
      wav_path);
  run_init (run, source, chain);
}

static void
run_play (Run * run)
{
  fail_if (gst_element_set_state (run->pipeline, GST_STATE_PLAYING) ==
      GST_STATE_CHANGE_FAILURE);
}

static void
run_stop (Run * run)
{
  fail_unless_equals_int (gst_element_set_state (run->pipeline, GST_STATE_NULL),
      GST_STATE_CHANGE_SUCCESS);
  count_bus_warnings (run->bus);
}

/* Stops the pipeline, checks that every checker saw n_segments SEGMENTs and no breach. */
static void
run_finish (Run * run, guint n_segments)
{
  run_stop (run);
  assert_checkers_clean (run->checkers);
  assert_segments (run->checkers, n_segments);
  gst_object_unref (run->bus);
  g_ptr_array_unref (run->checkers);
  gst_object_unref (run->pipeline);
}

/* ------------------------------------------------------------------ seek storm */

static void
seek_storm (Chain chain, guint n_seeks)
{
  Run run;
  run_init_wav (&run, chain);
  g_autoptr (GRand) rand = g_rand_new_with_seed (SEED);

  run_play (&run);
  wait_segment_everywhere (run.checkers, 1, GST_SEQNUM_INVALID, 1, run.bus);
  for (guint i = 0; i < n_seeks; i++) {
    GstClockTime position = g_rand_int_range (rand, 0, (WAV_SECONDS - 1) * 1000) * GST_MSECOND;
    GstEvent *seek = gst_event_new_seek (1.0, GST_FORMAT_TIME, GST_SEEK_FLAG_FLUSH,
        GST_SEEK_TYPE_SET, position, GST_SEEK_TYPE_NONE, GST_CLOCK_TIME_NONE);
    guint32 seqnum = gst_event_get_seqnum (seek);
    fail_unless (gst_element_send_event (run.pipeline, seek), "seek %u refused", i);
    wait_segment_everywhere (run.checkers, i + 2, seqnum, g_rand_int_range (rand, 0, 3),
        run.bus);
    assert_checkers_clean (run.checkers);
  }
  run_finish (&run, n_seeks + 1);
}

GST_START_TEST (test_seek_storm_mimi_codec)
{
  seek_storm (CODEC, rounds (100, 12));
}
GST_END_TEST;

GST_START_TEST (test_seek_storm_dialog)
{
  seek_storm (DIALOG, rounds (100, 12));
}
GST_END_TEST;

/* ------------------------------------------------------------------ reuse */

/* The pipeline goes to PLAYING, runs until its SEGMENT and 0 to 3 buffers went out, and back
 * to NULL, n_cycles times; every cycle starts a new stream with its own SEGMENT. */
static void
reuse_cycles (Chain chain, guint n_cycles)
{
  Run run;
  run_init_wav (&run, chain);
  g_autoptr (GRand) rand = g_rand_new_with_seed (SEED);

  for (guint i = 0; i < n_cycles; i++) {
    run_play (&run);
    wait_segment_everywhere (run.checkers, i + 1, GST_SEQNUM_INVALID,
        g_rand_int_range (rand, 0, 4), run.bus);
    assert_checkers_clean (run.checkers);
    run_stop (&run);
  }
  run_finish (&run, n_cycles);
}

GST_START_TEST (test_reuse_mimi_codec)
{
  reuse_cycles (CODEC, rounds (40, 6));
}
GST_END_TEST;

GST_START_TEST (test_reuse_dialog)
{
  reuse_cycles (DIALOG, rounds (40, 6));
}
GST_END_TEST;

/* ------------------------------------------------------------------ renegotiation */

static void
set_raw_format (GstElement * pipeline, const gchar * capsfilter, const gchar * format)
{
  g_autoptr (GstElement) filter = gst_bin_get_by_name (GST_BIN (pipeline), capsfilter);
  g_autoptr (GstCaps) caps = gst_caps_new_simple ("audio/x-raw", "format", G_TYPE_STRING,
      format, NULL);
  g_object_set (filter, "caps", caps, NULL);
}

static void
assert_format (GstElement * pipeline, const gchar * element_name, const gchar * format)
{
  g_autoptr (GstElement) element = gst_bin_get_by_name (GST_BIN (pipeline), element_name);
  g_autoptr (GstPad) pad = gst_element_get_static_pad (element, "sink");
  g_autoptr (GstCaps) caps = gst_pad_get_current_caps (pad);
  fail_unless (caps != NULL);
  const gchar *current = gst_structure_get_string (gst_caps_get_structure (caps, 0), "format");
  fail_unless (g_strcmp0 (current, format) == 0, "%s takes %s, not %s", element_name, current,
      format);
}

/* audiotestsrc (buffers of 1000 samples, not a whole frame) feeds the element under test;
 * every few buffers the raw format switches between F32LE and S16LE, upstream of the element
 * and downstream of it, each side on its own and then both at once. The stream goes on in
 * order and without an error, and each side follows a switch within a few buffers counted
 * from when it was made: the RECONFIGURE goes upstream in the caller's thread, so only the
 * buffers already on their way (one from the source, one frame out of the element) can still
 * be of the old format. */
static void
renegotiate (Chain chain, const gchar * element_under_test, guint n_switches)
{
  const guint buffers_per_switch = 4;
  const gchar *formats[] = { "F32LE", "S16LE" };
  const gchar *in_format = formats[0], *out_format = formats[0];
  guint segments, n_buffers = 0;
  Run run;
  run_init (&run, "audiotestsrc samplesperbuffer=1000 ! audio/x-raw, rate=24000, channels=1 "
      "! capsfilter name=in caps=audio/x-raw,format=F32LE", chain);

  run_play (&run);
  for (guint i = 1; i <= n_switches + 1; i++) {
    wait_segment_everywhere (run.checkers, 1, GST_SEQNUM_INVALID,
        n_buffers + buffers_per_switch, run.bus);
    assert_checkers_clean (run.checkers);
    if (i > 1) {
      assert_format (run.pipeline, element_under_test, in_format);
      assert_format (run.pipeline, "sink", out_format);
    }
    if (i == n_switches + 1)
      break;
    /* Upstream on odd rounds, downstream on even ones, both on the last. */
    if (i % 2 == 1 || i == n_switches) {
      in_format = in_format == formats[0] ? formats[1] : formats[0];
      set_raw_format (run.pipeline, "in", in_format);
    }
    if (i % 2 == 0 || i == n_switches) {
      out_format = out_format == formats[0] ? formats[1] : formats[0];
      set_raw_format (run.pipeline, "out", out_format);
    }
    stream_checker_counts (g_ptr_array_index (run.checkers, 0), &segments, &n_buffers);
  }
  run_finish (&run, 1);
}

GST_START_TEST (test_renegotiate_mimi_codec)
{
  renegotiate (CODEC, "mimienc", 6);
}
GST_END_TEST;

GST_START_TEST (test_renegotiate_dialog)
{
  renegotiate (DIALOG, "dialog", 6);
}
GST_END_TEST;

static Suite *
stress_suite (void)
{
  Suite *s = suite_create ("gst-stress");

  TCase *seeks = tcase_create ("seeks");
  tcase_add_unchecked_fixture (seeks, setup_data, teardown_data);
  tcase_add_test (seeks, test_seek_storm_mimi_codec);
  tcase_add_test (seeks, test_seek_storm_dialog);
  suite_add_tcase (s, seeks);

  TCase *reuse = tcase_create ("reuse");
  tcase_add_unchecked_fixture (reuse, setup_data, teardown_data);
  tcase_add_test (reuse, test_reuse_mimi_codec);
  tcase_add_test (reuse, test_reuse_dialog);
  suite_add_tcase (s, reuse);

  TCase *caps = tcase_create ("caps");
  tcase_add_unchecked_fixture (caps, setup_data, teardown_data);
  tcase_add_test (caps, test_renegotiate_mimi_codec);
  tcase_add_test (caps, test_renegotiate_dialog);
  suite_add_tcase (s, caps);

  return s;
}

int
main (int argc, char **argv)
{
  gst_check_init (&argc, &argv);
  for (guint i = 0; i < G_N_ELEMENTS (needed_plugins); i++) {
    GstElementFactory *factory = gst_element_factory_find (needed_plugins[i]);
    if (factory == NULL) {
      g_printerr ("SKIP: no %s (gstreamer1.0-plugins-base and -good)\n", needed_plugins[i]);
      return 77;
    }
    gst_object_unref (factory);
  }
  return gst_check_run_suite (stress_suite (), "gst-stress", __FILE__);
}
