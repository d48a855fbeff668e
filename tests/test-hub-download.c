/* Tests of lib/core/moshi-hub-download: fetching into the hub cache from a stand-in hub
 * (tests/hub-server.py on 127.0.0.1, its path in $MOSHI_HUB_SERVER).
 *
 * One server runs for the whole suite; each test gets its own cache and its own repository
 * names, and sets the server's faults (faults.json) as it needs them. */
#include <glib/gstdio.h>
#include <string.h>
#include <unistd.h>

#include "hub-server-util.h"
#include "moshi-dialog-load.h"
#include "moshi-error.h"
#include "moshi-hub.h"
#include "moshi-hub-download.h"
#include "test-support.h"

#define COMMIT "0123456789abcdef0123456789abcdef01234567"
#define LM_SIZE (300 * 1000)

static MoshiTestHub hub;
static char *server_root;       /* hub.root and hub.endpoint, in the tests' own words */
static char *endpoint;
static char *tmp_dir;
static char *cache_dir;

static void
write_bytes (const char *path, const void *data, gsize len)
{
  g_autofree char *dir = g_path_get_dirname (path);
  ck_assert_int_eq (g_mkdir_with_parents (dir, 0755), 0);
  g_autoptr (GError) error = NULL;
  ck_assert_msg (g_file_set_contents (path, data, (gssize) len, &error), "%s",
      error ? error->message : "");
}

static void
start_server (void)
{
  g_autoptr (GError) error = NULL;
  ck_assert_msg (moshi_test_hub_start (&hub, &error), "%s", error ? error->message : "");
  server_root = hub.root;
  endpoint = hub.endpoint;
}

static void
stop_server (void)
{
  moshi_test_hub_stop (&hub);
  server_root = endpoint = NULL;
}

static void
set_faults (const char *json)
{
  g_autofree char *path = g_build_filename (server_root, "faults.json", NULL);
  if (json == NULL)
    g_unlink (path);
  else
    write_bytes (path, json, strlen (json));
}

static char *
request_log (void)
{
  g_autofree char *path = g_build_filename (server_root, "requests.log", NULL);
  char *contents = NULL;
  if (!g_file_get_contents (path, &contents, NULL, NULL))
    return g_strdup ("");
  return contents;
}

static void
setup (void)
{
  tmp_dir = g_dir_make_tmp ("moshi-hub-dl-XXXXXX", NULL);
  cache_dir = g_build_filename (tmp_dir, "hub", NULL);
  g_autofree char *home = g_build_filename (tmp_dir, "hf-home", NULL);
  g_setenv ("HF_HUB_CACHE", cache_dir, TRUE);
  g_setenv ("HF_HOME", home, TRUE);   /* no token file of the user's */
  g_setenv ("HF_ENDPOINT", endpoint, TRUE);
  g_unsetenv ("HF_HUB_OFFLINE");
  g_unsetenv ("HF_TOKEN");
  g_unsetenv ("HUGGING_FACE_HUB_TOKEN");
  g_unsetenv ("HF_TOKEN_PATH");
  /* Proxies only where a test sets them. */
  static const char *const proxies[] = { "HTTP_PROXY", "http_proxy", "HTTPS_PROXY",
    "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy" };
  for (guint i = 0; i < G_N_ELEMENTS (proxies); i++)
    g_unsetenv (proxies[i]);
  set_faults (NULL);
  g_autofree char *log = g_build_filename (server_root, "requests.log", NULL);
  g_unlink (log);
}

static void
teardown (void)
{
  moshi_test_remove_tree (tmp_dir);
  g_clear_pointer (&tmp_dir, g_free);
  g_clear_pointer (&cache_dir, g_free);
}

static void
publish_file (const char *repo, const char *file, const void *data, gsize len)
{
  g_autofree char *repo_id = g_strdup_printf ("test/%s", repo);
  g_autoptr (GError) error = NULL;
  ck_assert_msg (moshi_test_hub_publish (&hub, repo_id, COMMIT, file, data, len, &error), "%s",
      error ? error->message : "");
}

/* Publishes repository test/<name> on the server: a large LFS file and a small config. */
static guint8 *
publish (const char *name)
{
  guint8 *lm = g_malloc (LM_SIZE);
  MoshiTestRng rng;
  moshi_test_rng_init (&rng, 7);
  for (gsize i = 0; i < LM_SIZE; i++)
    lm[i] = (guint8) (moshi_test_rng_uniform (&rng) * 127 + 128);
  publish_file (name, "model.safetensors", lm, LM_SIZE);
  publish_file (name, "config.json", "{\"dim\": 16}", 11);
  return lm;
}

static void
assert_file_equals (const char *path, const void *data, gsize len)
{
  g_autofree char *contents = NULL;
  gsize got = 0;
  ck_assert_msg (g_file_get_contents (path, &contents, &got, NULL), "cannot read %s", path);
  ck_assert_uint_eq (got, len);
  ck_assert_msg (memcmp (contents, data, len) == 0, "%s differs from what was served", path);
}

static char *
cache_path (const char *repo_folder, const char *a, const char *b, const char *c)
{
  return g_build_filename (cache_dir, repo_folder, a, b, c, NULL);
}

typedef struct {
  guint calls;
  guint64 first_downloaded, last_downloaded, total;
  gboolean first_done, last_done;
  char *filename;
} Progress;

static void
on_progress (const MoshiHubProgress *p, gpointer user_data)
{
  Progress *pr = user_data;
  ck_assert (p->started == (pr->calls == 0 || pr->last_done));
  if (pr->calls++ == 0) {
    pr->first_downloaded = p->downloaded;
    pr->first_done = p->done;
    pr->filename = g_strdup (p->filename);
  }
  pr->last_downloaded = p->downloaded;
  pr->last_done = p->done;
  pr->total = p->total;
}

static guint
count (const char *haystack, const char *needle)
{
  guint n = 0;
  for (const char *p = haystack; (p = strstr (p, needle)) != NULL; p++)
    n++;
  return n;
}

/* ---- tests ---- */

START_TEST (test_fresh_download)
{
  g_autofree guint8 *lm = publish ("fresh");
  Progress pr = { 0 };
  MoshiHubOptions opts = { .progress = on_progress, .user_data = &pr };
  g_autoptr (GError) error = NULL;
  g_autofree char *path = moshi_hub_resolve_full ("test/fresh", "model.safetensors", &opts,
      &error);
  ck_assert_msg (error == NULL, "%s", error ? error->message : "");

  /* The layout huggingface_hub makes: a relative link to blobs/<sha256>, refs/main. */
  g_autofree char *entry = cache_path ("models--test--fresh", "snapshots", COMMIT,
      "model.safetensors");
  ck_assert_str_eq (path, entry);
  g_autofree char *sha = g_compute_checksum_for_data (G_CHECKSUM_SHA256, lm, LM_SIZE);
  g_autofree char *target = g_file_read_link (path, NULL);
  g_autofree char *expected_target = g_strdup_printf ("../../blobs/%s", sha);
  ck_assert_str_eq (target, expected_target);
  assert_file_equals (path, lm, LM_SIZE);
  g_autofree char *ref = cache_path ("models--test--fresh", "refs", "main", NULL);
  assert_file_equals (ref, COMMIT, strlen (COMMIT));

  ck_assert_uint_ge (pr.calls, 2);
  ck_assert_uint_eq (pr.first_downloaded, 0);
  ck_assert (!pr.first_done);
  ck_assert (pr.last_done);
  ck_assert_uint_eq (pr.last_downloaded, LM_SIZE);
  ck_assert_uint_eq (pr.total, LM_SIZE);
  ck_assert_str_eq (pr.filename, "model.safetensors");
  g_free (pr.filename);

  /* A small file: its ETag (the git hash) names the blob. */
  g_autofree char *config = moshi_hub_resolve_full ("test/fresh:config.json", NULL, NULL,
      &error);
  ck_assert_msg (error == NULL, "%s", error ? error->message : "");
  assert_file_equals (config, "{\"dim\": 16}", 11);
  g_autofree char *config_target = g_file_read_link (config, NULL);
  ck_assert (g_str_has_prefix (config_target, "../../blobs/"));
  ck_assert_uint_eq (strlen (config_target), strlen ("../../blobs/") + 40);

  /* Cached now: the next resolution asks nothing. */
  g_autofree char *log_before = request_log ();
  g_autofree char *again = moshi_hub_resolve ("test/fresh", "model.safetensors", &error);
  ck_assert_msg (error == NULL, "%s", error ? error->message : "");
  ck_assert_str_eq (again, path);
  g_autofree char *log_after = request_log ();
  ck_assert_str_eq (log_after, log_before);
}
END_TEST

START_TEST (test_interrupted_then_resumed)
{
  g_autofree guint8 *lm = publish ("resume");
  set_faults ("{\"drop_after\": 100000}");
  g_autoptr (GError) error = NULL;
  g_autofree char *path = moshi_hub_resolve ("test/resume", "model.safetensors", &error);
  ck_assert_ptr_null (path);
  ck_assert (g_error_matches (error, MOSHI_ERROR, MOSHI_ERROR_IO));
  moshi_assert_error_contains (error, "test/resume");
  moshi_assert_error_contains (error, "model.safetensors");
  moshi_assert_error_contains (error, "resumes");

  g_autofree char *sha = g_compute_checksum_for_data (G_CHECKSUM_SHA256, lm, LM_SIZE);
  g_autofree char *name = g_strdup_printf ("%s.incomplete", sha);
  g_autofree char *incomplete = cache_path ("models--test--resume", "blobs", name, NULL);
  GStatBuf st;
  ck_assert_int_eq (g_stat (incomplete, &st), 0);
  ck_assert_msg (st.st_size > 0 && st.st_size < LM_SIZE, "%ld bytes kept", (long) st.st_size);

  set_faults (NULL);
  g_clear_error (&error);
  path = moshi_hub_resolve ("test/resume", "model.safetensors", &error);
  ck_assert_msg (error == NULL, "%s", error ? error->message : "");
  assert_file_equals (path, lm, LM_SIZE);
  ck_assert (!g_file_test (incomplete, G_FILE_TEST_EXISTS));
  /* Only the missing part was asked for. */
  g_autofree char *log = request_log ();
  g_autofree char *range = g_strdup_printf ("bytes=%ld-", (long) st.st_size);
  ck_assert_msg (strstr (log, range) != NULL, "no request for %s in:\n%s", range, log);
}
END_TEST

/* A download that stopped after its last byte, before the rename: only checked, not fetched;
 * and when what it holds is not the content, deleted. */
START_TEST (test_complete_incomplete_file)
{
  g_autofree guint8 *lm = publish ("complete");
  g_autofree char *sha = g_compute_checksum_for_data (G_CHECKSUM_SHA256, lm, LM_SIZE);
  g_autofree char *name = g_strdup_printf ("%s.incomplete", sha);
  g_autofree char *incomplete = cache_path ("models--test--complete", "blobs", name, NULL);
  write_bytes (incomplete, lm, LM_SIZE);
  g_autoptr (GError) error = NULL;
  g_autofree char *path = moshi_hub_resolve ("test/complete", "model.safetensors", &error);
  ck_assert_msg (error == NULL, "%s", error ? error->message : "");
  assert_file_equals (path, lm, LM_SIZE);
  g_autofree char *log = request_log ();
  g_autofree char *range = g_strdup_printf ("bytes=%d-", LM_SIZE);
  ck_assert_msg (strstr (log, range) != NULL, "%s", log);

  /* The same length of something else: rejected, and nothing kept to resume from. */
  g_free (publish ("complete-bad"));
  g_autofree char *bad = cache_path ("models--test--complete-bad", "blobs", name, NULL);
  lm[0] ^= 1;
  write_bytes (bad, lm, LM_SIZE);
  g_autofree char *none = moshi_hub_resolve ("test/complete-bad", "model.safetensors", &error);
  ck_assert_ptr_null (none);
  moshi_assert_error_contains (error, "corrupted");
  ck_assert (!g_file_test (bad, G_FILE_TEST_EXISTS));
}
END_TEST

START_TEST (test_corrupted_blob_rejected)
{
  g_autofree guint8 *lm = publish ("corrupt");
  set_faults ("{\"corrupt\": true}");
  g_autoptr (GError) error = NULL;
  g_autofree char *path = moshi_hub_resolve ("test/corrupt", "model.safetensors", &error);
  ck_assert_ptr_null (path);
  ck_assert (g_error_matches (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT));
  moshi_assert_error_contains (error, "corrupted");
  g_autofree char *sha = g_compute_checksum_for_data (G_CHECKSUM_SHA256, lm, LM_SIZE);
  moshi_assert_error_contains (error, sha);

  /* Nothing of it stays: no blob, no partial file to resume, no snapshot entry. */
  g_autofree char *blobs = cache_path ("models--test--corrupt", "blobs", NULL, NULL);
  GDir *dir = g_dir_open (blobs, 0, NULL);
  ck_assert_ptr_nonnull (dir);
  ck_assert_ptr_null (g_dir_read_name (dir));
  g_dir_close (dir);
  g_autofree char *entry = cache_path ("models--test--corrupt", "snapshots", COMMIT,
      "model.safetensors");
  ck_assert (!g_file_test (entry, G_FILE_TEST_EXISTS) && !g_file_test (entry,
          G_FILE_TEST_IS_SYMLINK));

  set_faults (NULL);
  g_clear_error (&error);
  path = moshi_hub_resolve ("test/corrupt", "model.safetensors", &error);
  ck_assert_msg (error == NULL, "%s", error ? error->message : "");
  assert_file_equals (path, lm, LM_SIZE);
}
END_TEST

START_TEST (test_offline_with_full_cache)
{
  g_autofree guint8 *lm = publish ("offline");
  g_autoptr (GError) error = NULL;
  g_autofree char *online = moshi_hub_resolve ("test/offline", "model.safetensors", &error);
  ck_assert_msg (error == NULL, "%s", error ? error->message : "");

  g_setenv ("HF_HUB_OFFLINE", "1", TRUE);
  ck_assert (moshi_hub_is_offline ());
  g_autofree char *log_before = request_log ();
  g_autofree char *path = moshi_hub_resolve ("test/offline", "model.safetensors", &error);
  ck_assert_msg (error == NULL, "%s", error ? error->message : "");
  ck_assert_str_eq (path, online);
  assert_file_equals (path, lm, LM_SIZE);

  /* A file the cache lacks: a clear error, and still no request. */
  g_autofree char *missing = moshi_hub_resolve ("test/offline:config.json", NULL, &error);
  ck_assert_ptr_null (missing);
  ck_assert (g_error_matches (error, MOSHI_ERROR, MOSHI_ERROR_IO));
  moshi_assert_error_contains (error, "HF_HUB_OFFLINE");
  moshi_assert_error_contains (error, "config.json");
  g_clear_error (&error);
  g_autofree char *direct = moshi_hub_download ("test/offline", NULL, "config.json", NULL,
      &error);
  ck_assert_ptr_null (direct);
  ck_assert (g_error_matches (error, MOSHI_ERROR, MOSHI_ERROR_UNSUPPORTED));
  g_autofree char *log_after = request_log ();
  ck_assert_str_eq (log_after, log_before);

  g_setenv ("HF_HUB_OFFLINE", "0", TRUE);
  ck_assert (!moshi_hub_is_offline ());
}
END_TEST

START_TEST (test_missing_file_names_repo_and_file)
{
  g_free (publish ("missing"));
  g_autoptr (GError) error = NULL;
  g_autofree char *path = moshi_hub_resolve ("test/missing:nope/tokenizer.model", NULL, &error);
  ck_assert_ptr_null (path);
  ck_assert (g_error_matches (error, MOSHI_ERROR, MOSHI_ERROR_IO));
  moshi_assert_error_contains (error, "test/missing");
  moshi_assert_error_contains (error, "nope/tokenizer.model");
  moshi_assert_error_contains (error, "404");

  g_clear_error (&error);
  g_autofree char *no_repo = moshi_hub_resolve ("test/no-such-repo", "model.safetensors",
      &error);
  ck_assert_ptr_null (no_repo);
  moshi_assert_error_contains (error, "test/no-such-repo");
  moshi_assert_error_contains (error, "404");
  g_autofree char *folder = g_build_filename (cache_dir, "models--test--no-such-repo", NULL);
  ck_assert (!g_file_test (folder, G_FILE_TEST_EXISTS));
}
END_TEST

START_TEST (test_redirect_of_renamed_repo)
{
  g_autofree guint8 *lm = publish ("renamed");
  set_faults ("{\"renamed\": {\"old/name\": \"test/renamed\"}}");
  g_autoptr (GError) error = NULL;
  g_autofree char *path = moshi_hub_resolve ("old/name", "model.safetensors", &error);
  ck_assert_msg (error == NULL, "%s", error ? error->message : "");
  /* Cached under the name asked for, as huggingface_hub does. */
  g_autofree char *entry = cache_path ("models--old--name", "snapshots", COMMIT,
      "model.safetensors");
  ck_assert_str_eq (path, entry);
  assert_file_equals (path, lm, LM_SIZE);
}
END_TEST

START_TEST (test_token_is_sent)
{
  g_free (publish ("gated"));
  g_setenv ("HF_TOKEN", "hf_secret", TRUE);
  g_autoptr (GError) error = NULL;
  g_autofree char *path = moshi_hub_resolve ("test/gated:config.json", NULL, &error);
  ck_assert_msg (error == NULL, "%s", error ? error->message : "");
  g_autofree char *log = request_log ();
  ck_assert_msg (strstr (log, "HEAD /test/gated/resolve/main/config.json - Bearer hf_secret")
      != NULL, "%s", log);
  ck_assert_uint_eq (count (log, "Bearer hf_secret"), count (log, "\n"));
}
END_TEST

START_TEST (test_proxy_from_environment)
{
  /* The stand-in hub doubles as the proxy: a hub name that does not resolve is reached
   * only through it. */
  g_autofree guint8 *lm = publish ("proxied");
  g_setenv ("HF_ENDPOINT", "http://hub.invalid", TRUE);
  g_setenv ("HTTP_PROXY", endpoint, TRUE);
  g_autoptr (GError) error = NULL;
  g_autofree char *path = moshi_hub_resolve ("test/proxied", "model.safetensors", &error);
  g_unsetenv ("HTTP_PROXY");
  ck_assert_msg (error == NULL, "%s", error ? error->message : "");
  assert_file_equals (path, lm, LM_SIZE);
  g_autofree char *log = request_log ();
  ck_assert_msg (strstr (log, "HEAD http://hub.invalid/test/proxied/resolve/main/") != NULL,
      "%s", log);
}
END_TEST

START_TEST (test_optional_file)
{
  g_free (publish ("with-config"));
  g_free (publish ("no-config"));
  g_autofree char *server_config = g_build_filename (server_root, "repos", "test", "no-config",
      "files", "config.json", NULL);
  ck_assert_int_eq (g_unlink (server_config), 0);
  g_autoptr (GError) error = NULL;

  g_autofree char *present = moshi_hub_resolve_optional ("test/with-config", "config.json",
      NULL, &error);
  ck_assert_msg (error == NULL, "%s", error ? error->message : "");
  assert_file_equals (present, "{\"dim\": 16}", 11);

  /* Absent: no error, and the absence is remembered where huggingface_hub remembers it. */
  g_autofree char *absent = moshi_hub_resolve_optional ("test/no-config", "config.json", NULL,
      &error);
  ck_assert_msg (error == NULL, "%s", error ? error->message : "");
  ck_assert_ptr_null (absent);
  g_autofree char *marker = cache_path ("models--test--no-config", ".no_exist", COMMIT,
      "config.json");
  ck_assert (g_file_test (marker, G_FILE_TEST_EXISTS));
  g_autofree char *log_before = request_log ();
  g_autofree char *again = moshi_hub_resolve_optional ("test/no-config", "config.json", NULL,
      &error);
  ck_assert_ptr_null (again);
  ck_assert_ptr_null (error);
  g_autofree char *log_after = request_log ();
  ck_assert_str_eq (log_after, log_before);

  /* A repository that does not exist is an error, not an absent file. */
  g_autofree char *no_repo = moshi_hub_resolve_optional ("test/no-such-repo", "config.json",
      NULL, &error);
  ck_assert_ptr_null (no_repo);
  moshi_assert_error_contains (error, "404");
  g_clear_error (&error);

  /* Offline with nothing cached: nothing to say, nothing asked. */
  g_setenv ("HF_HUB_OFFLINE", "1", TRUE);
  g_free (publish ("offline-config"));
  g_autofree char *offline = moshi_hub_resolve_optional ("test/offline-config", "config.json",
      NULL, &error);
  ck_assert_ptr_null (offline);
  ck_assert_ptr_null (error);

  /* A folder: its own file or nothing. */
  g_autofree char *folder_config = g_build_filename (tmp_dir, "folder", "config.json", NULL);
  g_autofree char *folder = g_path_get_dirname (folder_config);
  ck_assert_int_eq (g_mkdir_with_parents (folder, 0755), 0);
  ck_assert_ptr_null (moshi_hub_resolve_optional (folder, "config.json", NULL, &error));
  write_bytes (folder_config, "{}", 2);
  g_autofree char *in_folder = moshi_hub_resolve_optional (folder, "config.json", NULL, &error);
  ck_assert_str_eq (in_folder, folder_config);
}
END_TEST

/* ---- whole conversation models ---- */

/* Serves a copy of a file under tests/data as <file> of test/<repo>. */
static void
publish_data (const char *repo, const char *file, const char *data_file)
{
  g_autofree char *src = moshi_test_data_path (data_file);
  g_autofree char *contents = NULL;
  gsize len = 0;
  ck_assert_msg (g_file_get_contents (src, &contents, &len, NULL), "cannot read %s", src);
  publish_file (repo, file, contents, len);
}

/* The LM's config with the Mimi file renamed through "mimi_name", as upstream configs do. */
static void
publish_config (const char *repo)
{
  g_autofree char *src = moshi_test_data_path ("lm/dialog/config.json");
  g_autofree char *contents = NULL;
  ck_assert (g_file_get_contents (src, &contents, NULL, NULL));
  char *brace = strchr (contents, '{');
  ck_assert_ptr_nonnull (brace);
  g_autofree char *named = g_strdup_printf ("{\"mimi_name\": \"mimi.safetensors\", %s",
      brace + 1);
  publish_file (repo, "config.json", named, strlen (named));
}

static MoshiDialogLoadOptions
small_mimi_options (void)
{
  static char *mimi_config;
  if (mimi_config == NULL)
    mimi_config = moshi_test_data_path ("mimi/small/config.json");
  MoshiDialogLoadOptions o = moshi_dialog_load_options_default ();
  o.device = MOSHI_DEVICE_CPU;
  o.mimi_config = mimi_config;
  return o;
}

START_TEST (test_dialog_model_from_repo)
{
  publish_data ("dialog", "model.safetensors", "lm/dialog/model.safetensors");
  publish_data ("dialog", "mimi.safetensors", "mimi/small/model.safetensors");
  publish_data ("dialog", "tokenizer_spm_32k_3.model", "tokenizer/tiny.model");
  publish_config ("dialog");

  Progress pr = { 0 };
  MoshiDialogLoadOptions o = small_mimi_options ();
  o.hub.progress = on_progress;
  o.hub.user_data = &pr;
  MoshiDialogLoadInfo info = { 0 };
  g_autoptr (GError) error = NULL;
  g_autoptr (MoshiDialogModel) model = moshi_dialog_model_load ("test/dialog", &o, &info,
      &error);
  ck_assert_msg (model != NULL, "%s", error ? error->message : "");
  ck_assert_int_eq (info.failed, MOSHI_DIALOG_PART_NONE);

  /* config.json was fetched and used: the tiny LM loads only with it. */
  g_autofree char *config = cache_path ("models--test--dialog", "snapshots", COMMIT,
      "config.json");
  ck_assert_str_eq (info.lm_config, config);
  g_autofree char *mimi = cache_path ("models--test--dialog", "snapshots", COMMIT,
      "mimi.safetensors");
  ck_assert_str_eq (info.mimi_path, mimi);
  ck_assert_ptr_nonnull (info.tokenizer_path);
  ck_assert_int_eq (moshi_dialog_model_frame_size (model), 1920);
  ck_assert_uint_ge (pr.calls, 4);      /* two LFS files, each reported started and done */
  g_free (pr.filename);
  moshi_dialog_load_info_clear (&info);
}
END_TEST

START_TEST (test_dialog_model_from_folder)
{
  /* Kyutai's file names, no tokenizer, a config.json beside the weights. */
  g_autofree char *folder = g_build_filename (tmp_dir, "moshi", NULL);
  static const char *const files[][2] = {
    { "model.safetensors", "lm/dialog/model.safetensors" },
    { "config.json", "lm/dialog/config.json" },
    { MOSHI_HUB_MIMI_FILENAME, "mimi/small/model.safetensors" },
  };
  ck_assert_int_eq (g_mkdir_with_parents (folder, 0755), 0);
  for (gsize i = 0; i < G_N_ELEMENTS (files); i++) {
    g_autofree char *link = g_build_filename (folder, files[i][0], NULL);
    g_autofree char *target = moshi_test_data_path (files[i][1]);
    g_autofree char *absolute = g_canonicalize_filename (target, NULL);
    ck_assert_int_eq (symlink (absolute, link), 0);
  }
  MoshiDialogLoadOptions o = small_mimi_options ();
  MoshiDialogLoadInfo info = { 0 };
  g_autoptr (GError) error = NULL;
  guint opens = moshi_backend_open_count ();
  g_autoptr (MoshiDialogModel) model = moshi_dialog_model_load (folder, &o, &info, &error);
  ck_assert_msg (model != NULL, "%s", error ? error->message : "");
  /* the LM and Mimi on one backend, opened once */
  ck_assert_uint_eq (moshi_backend_open_count () - opens, 1);
  ck_assert_ptr_null (info.tokenizer_path);
  ck_assert_ptr_null (moshi_dialog_model_display (model, 5));
  moshi_dialog_load_info_clear (&info);

  /* The LM named on its own: its folder is the source. */
  g_autofree char *lm = g_build_filename (folder, "model.safetensors", NULL);
  o.lm = folder;
  g_autoptr (MoshiDialogModel) again = moshi_dialog_model_load (NULL, &o, &info, &error);
  ck_assert_msg (again != NULL, "%s", error ? error->message : "");
  ck_assert_str_eq (info.lm_path, lm);
  moshi_dialog_load_info_clear (&info);

  /* A plain LM file has no folder to take config or Mimi from. */
  o.lm = lm;
  g_autoptr (MoshiDialogModel) none = moshi_dialog_model_load (NULL, &o, &info, &error);
  ck_assert_ptr_null (none);
  ck_assert_int_eq (info.failed, MOSHI_DIALOG_PART_LM);   /* Moshi 7B's config does not fit */
  ck_assert (!info.not_found);
  moshi_dialog_load_info_clear (&info);
}
END_TEST

START_TEST (test_dialog_model_failures_name_the_part)
{
  publish_data ("no-mimi", "model.safetensors", "lm/dialog/model.safetensors");
  publish_data ("no-mimi", "config.json", "lm/dialog/config.json");
  MoshiDialogLoadOptions o = small_mimi_options ();
  MoshiDialogLoadInfo info = { 0 };
  g_autoptr (GError) error = NULL;
  g_autoptr (MoshiDialogModel) model = moshi_dialog_model_load ("test/no-mimi", &o, &info,
      &error);
  ck_assert_ptr_null (model);
  ck_assert_int_eq (info.failed, MOSHI_DIALOG_PART_MIMI);
  ck_assert (info.not_found);
  moshi_assert_error_contains (error, "test/no-mimi");
  moshi_assert_error_contains (error, MOSHI_HUB_MIMI_FILENAME);
  ck_assert_str_eq (moshi_dialog_part_name (info.failed), "Mimi model");
  moshi_dialog_load_info_clear (&info);

  /* The wrong config.json: the LM fails to load, found but unusable. */
  publish_data ("bad-config", "model.safetensors", "lm/dialog/model.safetensors");
  publish_data ("bad-config", "config.json", "lm/small7b/config.json");
  g_clear_error (&error);
  model = moshi_dialog_model_load ("test/bad-config", &o, &info, &error);
  ck_assert_ptr_null (model);
  ck_assert_int_eq (info.failed, MOSHI_DIALOG_PART_LM);
  ck_assert (!info.not_found);
  ck_assert_ptr_nonnull (info.lm_config);
  moshi_dialog_load_info_clear (&info);
}
END_TEST

START_TEST (test_without_downloader)
{
  /* This build has libsoup: the other tests cover it. Without, each fetch says why. */
  g_autoptr (GError) error = NULL;
  g_autofree char *path = moshi_hub_download ("test/x", NULL, "config.json", NULL, &error);
  ck_assert_ptr_null (path);
  ck_assert (g_error_matches (error, MOSHI_ERROR, MOSHI_ERROR_UNSUPPORTED));
  moshi_assert_error_contains (error, "libsoup");
}
END_TEST

static Suite *
download_suite (void)
{
  Suite *suite = suite_create ("hub-download");
  TCase *tc = tcase_create ("download");
  if (moshi_hub_can_download ()) {
    tcase_add_unchecked_fixture (tc, start_server, stop_server);
    tcase_add_checked_fixture (tc, setup, teardown);
    tcase_add_test (tc, test_fresh_download);
    tcase_add_test (tc, test_interrupted_then_resumed);
    tcase_add_test (tc, test_corrupted_blob_rejected);
    tcase_add_test (tc, test_complete_incomplete_file);
    tcase_add_test (tc, test_offline_with_full_cache);
    tcase_add_test (tc, test_missing_file_names_repo_and_file);
    tcase_add_test (tc, test_redirect_of_renamed_repo);
    tcase_add_test (tc, test_token_is_sent);
    tcase_add_test (tc, test_optional_file);
    tcase_add_test (tc, test_proxy_from_environment);
    tcase_add_test (tc, test_dialog_model_from_repo);
    tcase_add_test (tc, test_dialog_model_from_folder);
    tcase_add_test (tc, test_dialog_model_failures_name_the_part);
  } else {
    tcase_add_test (tc, test_without_downloader);
  }
  suite_add_tcase (suite, tc);
  return suite;
}

int
main (void)
{
  return moshi_test_run_suite (download_suite ());
}
