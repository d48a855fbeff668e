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

#define FRAMES_BEFORE 3

/* Pops the bus: exactly one error, RESOURCE FAILED, naming the device and the fault; no
 * other error. */
static void
assert_one_device_error (GstBus * bus, GstElement * element)
{
  g_autofree gchar *debug = NULL;
  g_autoptr (GError) error = pop_only_error (bus, element, GST_RESOURCE_ERROR,
      GST_RESOURCE_ERROR_FAILED, &debug);
  fail_unless (strstr (error->message, "device") != NULL, "'%s'", error->message);
  fail_unless (debug != NULL && strstr (debug, "CUDA device 0 (") != NULL
      && strstr (debug, "cudaErrorIllegalAddress") != NULL,
      "the debug text does not name the device and the fault: %s", debug);
}

static void
run_fault (const gchar * factory, gboolean shared, InputKind kind, const gchar * caps)
{
  GstElement *element = make_device_element (factory, shared);
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
    fail_unless_equals_int (gst_harness_push (h, device_input_frame (kind, speech,
                speech_frames, f)), GST_FLOW_OK);
  MoshiTestEmu emu;
  fail_unless (moshi_test_emu_lookup (&emu), "the emulated CUDA module is not loaded");

  /* the next kernel launch faults: within the next frame's work */
  emu.inject_fault (1);
  GstFlowReturn ret = gst_harness_push (h, device_input_frame (kind, speech, speech_frames,
          f++));
  fail_unless_equals_int (ret, GST_FLOW_ERROR);
  fail_unless_equals_uint64 (emu.fault_pending (), 0);
  assert_one_device_error (bus, h->element);

  /* later buffers: refused again, without another error message */
  for (gint i = 0; i < 2; i++)
    fail_unless_equals_int (gst_harness_push (h, device_input_frame (kind, speech,
                speech_frames, f++)), GST_FLOW_ERROR);
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
static const DeviceTestCase cases[] = {
  {"mimienc", "mimienc", FALSE, INPUT_PCM, RAW_F32_CAPS},
  {"mimienc-shared", "mimienc", TRUE, INPUT_PCM, RAW_F32_CAPS},
  {"mimidec", "mimidec", FALSE, INPUT_TOKENS, DEVICE_TEST_TOKEN_CAPS},
  {"mimidec-shared", "mimidec", TRUE, INPUT_TOKENS, DEVICE_TEST_TOKEN_CAPS},
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
  return device_test_suite ("device-faults", test_fault, cases, G_N_ELEMENTS (cases));
}

GST_CHECK_MAIN (device_faults);
