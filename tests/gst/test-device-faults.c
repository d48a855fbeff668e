/* The elements on device=cuda (the emulated backend) when the device faults mid-stream
 * (moshi_emu_inject_fault): mimienc and mimidec, on a session of their own and on the shared
 * scheduler, and moshidialog likewise. The element posts exactly one ERROR (RESOURCE FAILED:
 * the device failed, not the stream) whose debug text names the device and the CUDA error,
 * returns GST_FLOW_ERROR for that buffer and every later one, and goes to NULL cleanly.
 *
 * The fault is sticky for the whole process: each case runs in a process of its own
 * (tests/gst/meson.build, CK_RUN_CASE). */
#include <gst/check/gstcheck.h>
#include <gst/check/gstharness.h>
#include <string.h>

#include "gst-test-util.h"
#include "emu-fault.h"

#define TOKEN_CAPS "audio/x-mimi, rate=24000, channels=1, framerate=25/2, codebooks=8, " \
    "codebook-size=256, stream-format=u16le"
#define CODEBOOKS 8
#define FRAMES_BEFORE 3

typedef enum
{
  INPUT_PCM,
  INPUT_TOKENS,
} InputKind;

static GstElement *
make (const gchar * factory, gboolean shared)
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

/* Frame f of the input: speech, or tokens (any codes in range decode). */
static GstBuffer *
input_frame (InputKind kind, const gfloat * speech, gsize speech_frames, gsize f)
{
  GstBuffer *buf;
  if (kind == INPUT_PCM) {
    buf = gst_buffer_new_memdup (speech + (f % speech_frames) * FRAME, FRAME * sizeof (gfloat));
  } else {
    /* token_buffer reads frame f of a frame-major array */
    g_autofree gint32 *codes = g_new (gint32, (f + 1) * CODEBOOKS);
    for (gsize i = 0; i < (f + 1) * CODEBOOKS; i++)
      codes[i] = (gint32) ((i * 37 + 11) % CODEBOOK_SIZE);
    return token_buffer (codes, 1, CODEBOOKS, f);
  }
  GST_BUFFER_PTS (buf) = f * FRAME_NS;
  GST_BUFFER_DURATION (buf) = FRAME_NS;
  return buf;
}

/* Pops the bus: exactly one error, RESOURCE FAILED, naming the device and the fault; no
 * other error. */
static void
assert_one_device_error (GstBus * bus, GstElement * element)
{
  guint errors = 0;
  GstMessage *msg;
  while ((msg = gst_bus_pop (bus)) != NULL) {
    if (GST_MESSAGE_TYPE (msg) == GST_MESSAGE_ERROR) {
      g_autoptr (GError) error = NULL;
      g_autofree gchar *debug = NULL;
      gst_message_parse_error (msg, &error, &debug);
      GST_INFO ("error: %s (%s)", error->message, debug);
      fail_unless (GST_MESSAGE_SRC (msg) == GST_OBJECT (element));
      fail_unless (error->domain == GST_RESOURCE_ERROR
          && error->code == GST_RESOURCE_ERROR_FAILED, "error %s (%s %d)", error->message,
          g_quark_to_string (error->domain), error->code);
      fail_unless (strstr (error->message, "device") != NULL, "'%s'", error->message);
      fail_unless (debug != NULL && strstr (debug, "CUDA device 0 (") != NULL
          && strstr (debug, "cudaErrorIllegalAddress") != NULL,
          "the debug text does not name the device and the fault: %s", debug);
      errors++;
    }
    gst_message_unref (msg);
  }
  fail_unless_equals_int (errors, 1);
}

static void
run_fault (const gchar * factory, gboolean shared, InputKind kind, const gchar * caps)
{
  GstElement *element = make (factory, shared);
  GstBus *bus = attach_bus (element);
  GstHarness *h = harness_for (element);
  GstHarness *text = NULL;
  if (g_str_equal (factory, "moshidialog"))
    text = gst_harness_new_with_element (h->element, NULL, "text_src");
  gst_harness_set_src_caps_str (h, caps);
  gsize n;
  g_autofree gfloat *speech = load_speech (&n);
  gsize speech_frames = n / FRAME;

  gsize f = 0;
  for (; f < FRAMES_BEFORE; f++)
    fail_unless_equals_int (gst_harness_push (h, input_frame (kind, speech, speech_frames, f)),
        GST_FLOW_OK);
  MoshiTestEmu emu;
  fail_unless (moshi_test_emu_lookup (&emu), "the emulated CUDA module is not loaded");

  /* the next kernel launch faults: within the next frame's work */
  emu.inject_fault (1);
  GstFlowReturn ret = gst_harness_push (h, input_frame (kind, speech, speech_frames, f++));
  fail_unless_equals_int (ret, GST_FLOW_ERROR);
  fail_unless_equals_uint64 (emu.fault_pending (), 0);
  assert_one_device_error (bus, h->element);

  /* later buffers: refused again, without another error message */
  for (gint i = 0; i < 2; i++)
    fail_unless_equals_int (gst_harness_push (h, input_frame (kind, speech, speech_frames,
                f++)), GST_FLOW_ERROR);
  GstMessage *msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ERROR);
  fail_unless (msg == NULL, "a second error message");

  fail_unless_equals_int (gst_element_set_state (h->element, GST_STATE_NULL),
      GST_STATE_CHANGE_SUCCESS);
  /* the device stays lost for the process: once everything on it is gone, opening it again
   * fails (libmoshi's probe launch meets the sticky error), saying why */
  fail_unless_equals_int (gst_element_set_state (h->element, GST_STATE_PLAYING),
      GST_STATE_CHANGE_FAILURE);
  msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ERROR);
  fail_unless (msg != NULL, "no error message for the failed restart");
  {
    g_autoptr (GError) error = NULL;
    g_autofree gchar *debug = NULL;
    gst_message_parse_error (msg, &error, &debug);
    GST_INFO ("restart: %s (%s)", error->message, debug);
    fail_unless (strstr (error->message, "no usable CUDA device: an illegal memory access")
        != NULL,
        "the restart's error does not name the fault: %s (%s)", error->message, debug);
  }
  gst_message_unref (msg);
  fail_unless_equals_int (gst_element_set_state (h->element, GST_STATE_NULL),
      GST_STATE_CHANGE_SUCCESS);
  if (text != NULL)
    gst_harness_teardown (text);
  gst_harness_teardown (h);
  drop_bus (bus);
}

/* The cases, one per process: the element, on the shared scheduler or alone, and its input. */
static const struct
{
  const gchar *name;
  const gchar *factory;
  gboolean shared;
  InputKind kind;
  const gchar *caps;
} cases[] = {
  {"mimienc", "mimienc", FALSE, INPUT_PCM, RAW_F32_CAPS},
  {"mimienc-shared", "mimienc", TRUE, INPUT_PCM, RAW_F32_CAPS},
  {"mimidec", "mimidec", FALSE, INPUT_TOKENS, TOKEN_CAPS},
  {"mimidec-shared", "mimidec", TRUE, INPUT_TOKENS, TOKEN_CAPS},
  {"dialog", "moshidialog", FALSE, INPUT_PCM, RAW_F32_CAPS},
  {"dialog-shared", "moshidialog", TRUE, INPUT_PCM, RAW_F32_CAPS},
};

GST_START_TEST (test_fault)
{
  run_fault (cases[__i__].factory, cases[__i__].shared, cases[__i__].kind,
      cases[__i__].caps);
}
GST_END_TEST;

static Suite *
device_faults_suite (void)
{
  Suite *s = suite_create ("device-faults");
  for (guint i = 0; i < G_N_ELEMENTS (cases); i++) {
    TCase *tc = tcase_create (cases[i].name);
    tcase_set_timeout (tc, 600);
    tcase_add_loop_test (tc, test_fault, i, i + 1);
    suite_add_tcase (s, tc);
  }
  return s;
}

GST_CHECK_MAIN (device_faults);
