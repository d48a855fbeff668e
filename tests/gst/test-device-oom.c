/* The elements on device=cuda (the emulated backend) when device memory runs out
 * (moshi_emu_set_memory_limit): another moshidialog on the shared scheduler, another
 * mimienc on the shared Mimi scheduler, another mimidec on a session of its own. The one that
 * does not fit fails to start with exactly one ERROR, RESOURCE NO_SPACE_LEFT (not the device
 * failure of test-device-faults.c), whose debug text names the sizes and the fix; the first
 * keeps running, and once the first is gone the other fits.
 *
 * The limit is process-wide: each case runs in a process of its own (tests/gst/meson.build,
 * CK_RUN_CASE). */
#include <gst/check/gstcheck.h>
#include <gst/check/gstharness.h>
#include <string.h>

#include "gst-test-util.h"
#include "emu-fault.h"

/* Pops the bus: exactly one error, RESOURCE NO_SPACE_LEFT from element, its debug text
 * naming the sizes and the fix. */
static void
assert_one_no_memory_error (GstBus * bus, GstElement * element, gboolean dialog)
{
  g_autofree gchar *debug = NULL;
  g_autoptr (GError) error = pop_only_error (bus, element, GST_RESOURCE_ERROR,
      GST_RESOURCE_ERROR_NO_SPACE_LEFT, &debug);
  fail_unless (strstr (error->message, "out of memory") != NULL, "'%s'", error->message);
  fail_unless (debug != NULL && strstr (debug, "not enough device memory for ") != NULL
      && strstr (debug, "needs ") != NULL && strstr (debug, " free (CUDA device 0 (") != NULL
      && strstr (debug, "lower max-conversations") != NULL,
      "the debug text does not name the sizes and the fix: %s", debug);
  if (dialog)
    fail_unless (strstr (debug, "KV cache") != NULL && strstr (debug, "kv-cache=fp8") != NULL,
        "%s", debug);
  else
    fail_unless (strstr (debug, "max-streams") != NULL, "%s", debug);
}

static void
run_oom (const gchar * factory, gboolean shared, InputKind kind, const gchar * caps)
{
  gboolean dialog = g_str_equal (factory, "moshidialog");
  GstHarness *h = harness_for (make_device_element (factory, shared));
  GstHarness *text = dialog ? gst_harness_new_with_element (h->element, NULL, "text_src")
      : NULL;
  gst_harness_set_src_caps_str (h, caps);
  gsize n;
  g_autofree gfloat *speech = load_speech (&n);
  gsize speech_frames = n / FRAME;
  gsize f = 0;
  for (; f < 2; f++)
    fail_unless_equals_int (gst_harness_push (h, device_input_frame (kind, speech,
                speech_frames, f)), GST_FLOW_OK);
  MoshiTestEmu emu;
  fail_unless (moshi_test_emu_lookup (&emu), "the emulated CUDA module is not loaded");

  /* what another one takes, started and stopped without a limit */
  GstElement *other = make_device_element (factory, shared);
  GstBus *bus = attach_bus (other);
  size_t used = moshi_test_emu_used (&emu);
  fail_unless (gst_element_set_state (other, GST_STATE_PAUSED) != GST_STATE_CHANGE_FAILURE);
  size_t one = moshi_test_emu_used (&emu) - used;
  fail_unless (one > 0);
  fail_unless_equals_int (gst_element_set_state (other, GST_STATE_NULL),
      GST_STATE_CHANGE_SUCCESS);
  fail_unless_equals_uint64 (moshi_test_emu_used (&emu), used);

  /* all of it but its last allocation: for moshidialog, half of its KV cache */
  emu.set_memory_limit (used + one - 1);
  fail_unless_equals_int (gst_element_set_state (other, GST_STATE_PAUSED),
      GST_STATE_CHANGE_FAILURE);
  assert_one_no_memory_error (bus, other, dialog);
  fail_unless_equals_int (gst_element_set_state (other, GST_STATE_NULL),
      GST_STATE_CHANGE_SUCCESS);
  fail_unless_equals_uint64 (moshi_test_emu_used (&emu), used);

  /* the first runs on */
  for (gint i = 0; i < 3; i++, f++)
    fail_unless_equals_int (gst_harness_push (h, device_input_frame (kind, speech,
                speech_frames, f)), GST_FLOW_OK);
  fail_unless (gst_harness_buffers_received (h) > 0);

  /* with the first gone, the other fits */
  if (text != NULL)
    gst_harness_teardown (text);
  gst_harness_teardown (h);
  fail_unless (gst_element_set_state (other, GST_STATE_PAUSED) != GST_STATE_CHANGE_FAILURE);
  fail_unless (gst_bus_pop_filtered (bus, GST_MESSAGE_ERROR) == NULL);
  fail_unless_equals_int (gst_element_set_state (other, GST_STATE_NULL),
      GST_STATE_CHANGE_SUCCESS);
  emu.set_memory_limit (0);
  drop_bus (bus);
  gst_object_unref (other);
}

static const DeviceTestCase cases[] = {
  {"dialog-shared", "moshidialog", TRUE, INPUT_PCM, RAW_F32_CAPS},
  {"mimienc-shared", "mimienc", TRUE, INPUT_PCM, RAW_F32_CAPS},
  {"mimidec", "mimidec", FALSE, INPUT_TOKENS, DEVICE_TEST_TOKEN_CAPS},
};

GST_START_TEST (test_oom)
{
  run_oom (cases[__i__].factory, cases[__i__].shared, cases[__i__].kind, cases[__i__].caps);
}
GST_END_TEST;

static Suite *
device_oom_suite (void)
{
  return device_test_suite ("device-oom", test_oom, cases, G_N_ELEMENTS (cases));
}

GST_CHECK_MAIN (device_oom);
