/* The elements with models named by Hugging Face repo id that are not in the cache yet:
 * downloaded from a stand-in hub on 127.0.0.1 (tests/hub-server.py), with progress messages
 * on the bus; a repo's config.json used by moshidialog; offline mode's error. */
#include <gst/check/gstcheck.h>
#include <glib/gstdio.h>
#include <string.h>
#include <unistd.h>

#include "gst-test-util.h"
#include "hub-server-util.h"
#include <moshi/moshi-hub.h>
#include <moshi/moshi-hub-download.h>

#define COMMIT "89abcdef0123456789abcdef0123456789abcdef"

static MoshiTestHub hub;
static gchar *cache_dir;

static void
setup (void)
{
  g_autoptr (GError) error = NULL;
  fail_unless (moshi_test_hub_start (&hub, &error), "%s", error ? error->message : "");
  cache_dir = g_dir_make_tmp ("moshi-gst-hub-XXXXXX", NULL);
  g_setenv ("HF_HUB_CACHE", cache_dir, TRUE);
  g_setenv ("HF_ENDPOINT", hub.endpoint, TRUE);
  g_setenv ("HF_HOME", cache_dir, TRUE);        /* no token file of the user's */
  g_unsetenv ("HF_HUB_OFFLINE");
  g_unsetenv ("HF_TOKEN");
}

static void
teardown (void)
{
  moshi_test_hub_stop (&hub);
  moshi_test_remove_tree (cache_dir);
  g_clear_pointer (&cache_dir, g_free);
}

static void
publish_data (const gchar * repo_id, const gchar * file, const gchar * first, ...)
{
  va_list args;
  va_start (args, first);
  g_autofree gchar *rel = g_build_filename_valist (first, &args);
  va_end (args);
  g_autofree gchar *src = test_data_path (rel, NULL);
  g_autofree gchar *data = NULL;
  gsize len = 0;
  g_autoptr (GError) error = NULL;
  fail_unless (g_file_get_contents (src, &data, &len, NULL), "cannot read %s", src);
  fail_unless (moshi_test_hub_publish (&hub, repo_id, COMMIT, file, data, len, &error),
      "%s", error ? error->message : "");
}

typedef struct
{
  guint starts, completes;
  gboolean saw_percent;
  GPtrArray *files;
} ProgressSeen;

/* Reads the download progress messages off the bus. */
static void
collect_progress (GstBus * bus, ProgressSeen * seen)
{
  GstMessage *msg;
  seen->files = g_ptr_array_new_with_free_func (g_free);
  while ((msg = gst_bus_pop_filtered (bus, GST_MESSAGE_PROGRESS)) != NULL) {
    GstProgressType type;
    gchar *code = NULL, *text = NULL;
    gst_message_parse_progress (msg, &type, &code, &text);
    fail_unless_equals_string (code, "download");
    const GstStructure *s = gst_message_get_structure (msg);
    gint percent = -2;
    fail_unless (gst_structure_get_int (s, "percent", &percent));
    if (percent >= 0 && percent <= 100)
      seen->saw_percent = TRUE;
    if (type == GST_PROGRESS_TYPE_START)
      seen->starts++;
    if (type == GST_PROGRESS_TYPE_COMPLETE) {
      seen->completes++;
      fail_unless (strstr (text, "Downloaded") != NULL, "%s", text);
      g_ptr_array_add (seen->files, g_strdup (gst_structure_get_string (s, "file")));
    }
    g_free (code);
    g_free (text);
    gst_message_unref (msg);
  }
}

static gboolean
seen_file (ProgressSeen * seen, const gchar * file)
{
  for (guint i = 0; i < seen->files->len; i++) {
    if (g_strcmp0 (g_ptr_array_index (seen->files, i), file) == 0)
      return TRUE;
  }
  return FALSE;
}

GST_START_TEST (test_mimienc_downloads_with_progress)
{
  publish_data ("test/mimi", MOSHI_HUB_MIMI_FILENAME, "mimi", "small",
      "model.safetensors", NULL);
  g_autofree gchar *config = test_data_path ("mimi", "small", "config.json", NULL);
  GstElement *enc = gst_element_factory_make ("mimienc", NULL);
  g_object_set (enc, "model", "test/mimi", "config", config, NULL);
  GstBus *bus = attach_bus (enc);
  fail_unless_equals_int (gst_element_set_state (enc, GST_STATE_READY),
      GST_STATE_CHANGE_SUCCESS);
  ProgressSeen seen = { 0 };
  collect_progress (bus, &seen);
  fail_unless_equals_int (seen.starts, 1);
  fail_unless_equals_int (seen.completes, 1);
  fail_unless (seen.saw_percent);
  fail_unless (seen_file (&seen, MOSHI_HUB_MIMI_FILENAME));
  g_ptr_array_unref (seen.files);
  gst_element_set_state (enc, GST_STATE_NULL);
  drop_bus (bus);
  gst_object_unref (enc);
}
GST_END_TEST;

/* The whole model from one repo id: the LM, Mimi beside it, and the repo's config.json as
 * the LM's config (the tiny LM loads with no other). */
GST_START_TEST (test_moshidialog_from_repo)
{
  publish_data ("test/moshi", "model.safetensors", "lm", "dialog", "model.safetensors",
      NULL);
  publish_data ("test/moshi", "config.json", "lm", "dialog", "config.json", NULL);
  publish_data ("test/moshi", MOSHI_HUB_MIMI_FILENAME, "mimi", "small",
      "model.safetensors", NULL);
  publish_data ("test/moshi", "tokenizer_spm_32k_3.model", "tokenizer", "tiny.model",
      NULL);
  g_autofree gchar *mimi_config = test_data_path ("mimi", "small", "config.json", NULL);
  GstElement *dialog = gst_element_factory_make ("moshidialog", NULL);
  g_object_set (dialog, "model", "test/moshi", "mimi-config", mimi_config,
      "tokenizer", "test/moshi", NULL);
  gst_util_set_object_arg (G_OBJECT (dialog), "device", "cpu");
  GstBus *bus = attach_bus (dialog);
  GstStateChangeReturn ret = gst_element_set_state (dialog, GST_STATE_READY);
  if (ret == GST_STATE_CHANGE_FAILURE) {
    GstMessage *msg = pop_error (bus);
    GError *error = NULL;
    gst_message_parse_error (msg, &error, NULL);
    fail ("%s", error->message);
  }
  ProgressSeen seen = { 0 };
  collect_progress (bus, &seen);
  /* The two LFS files; config.json and the tokenizer are small files without progress. */
  fail_unless (seen_file (&seen, "model.safetensors"));
  fail_unless (seen_file (&seen, MOSHI_HUB_MIMI_FILENAME));
  g_ptr_array_unref (seen.files);
  gst_element_set_state (dialog, GST_STATE_NULL);

  /* Now cached: offline, the same element opens again. */
  g_setenv ("HF_HUB_OFFLINE", "1", TRUE);
  fail_unless_equals_int (gst_element_set_state (dialog, GST_STATE_READY),
      GST_STATE_CHANGE_SUCCESS);
  gst_element_set_state (dialog, GST_STATE_NULL);
  drop_bus (bus);
  gst_object_unref (dialog);
}
GST_END_TEST;

GST_START_TEST (test_offline_missing_model)
{
  g_setenv ("HF_HUB_OFFLINE", "1", TRUE);
  GstElement *dialog = gst_element_factory_make ("moshidialog", NULL);
  g_object_set (dialog, "model", "test/absent", NULL);
  assert_error (expect_open_error (dialog), GST_RESOURCE_ERROR,
      GST_RESOURCE_ERROR_NOT_FOUND, "test/absent", "HF_HUB_OFFLINE");
  gst_object_unref (dialog);
}
GST_END_TEST;

GST_START_TEST (test_missing_file_on_hub)
{
  publish_data ("test/lm-only", "model.safetensors", "mimi", "small",
      "model.safetensors", NULL);
  GstElement *enc = gst_element_factory_make ("mimienc", NULL);
  g_object_set (enc, "model", "test/lm-only", NULL);
  assert_error (expect_open_error (enc), GST_RESOURCE_ERROR,
      GST_RESOURCE_ERROR_NOT_FOUND, "test/lm-only", MOSHI_HUB_MIMI_FILENAME);
  gst_object_unref (enc);
}
GST_END_TEST;

/* A folder whose config.json is not JSON: the LM's config is at fault, and named. */
GST_START_TEST (test_broken_config_in_folder)
{
  g_autofree gchar *folder = g_build_filename (cache_dir, "broken", NULL);
  g_autofree gchar *config = g_build_filename (folder, "config.json", NULL);
  g_autofree gchar *lm = g_build_filename (folder, "model.safetensors", NULL);
  g_autofree gchar *lm_data = test_data_path ("lm", "dialog", "model.safetensors", NULL);
  fail_unless (g_mkdir_with_parents (folder, 0755) == 0);
  fail_unless (g_file_set_contents (config, "{ not json", -1, NULL));
  fail_unless (symlink (lm_data, lm) == 0);
  GstElement *dialog = gst_element_factory_make ("moshidialog", NULL);
  g_object_set (dialog, "model", folder, NULL);
  assert_error (expect_open_error (dialog), GST_RESOURCE_ERROR,
      GST_RESOURCE_ERROR_OPEN_READ, "Moshi LM", config);
  gst_object_unref (dialog);
}
GST_END_TEST;

static Suite *
moshi_hub_suite (void)
{
  Suite *s = suite_create ("moshi-hub");
  TCase *tc = tcase_create ("download");
  tcase_add_checked_fixture (tc, setup, teardown);
  tcase_add_test (tc, test_offline_missing_model);
  tcase_add_test (tc, test_broken_config_in_folder);
  /* A build without libsoup says so instead (test-hub-download checks that). */
  if (moshi_hub_can_download ()) {
    tcase_add_test (tc, test_mimienc_downloads_with_progress);
    tcase_add_test (tc, test_moshidialog_from_repo);
    tcase_add_test (tc, test_missing_file_on_hub);
  }
  suite_add_tcase (s, tc);
  return s;
}

GST_CHECK_MAIN (moshi_hub);
