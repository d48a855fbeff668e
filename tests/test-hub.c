/* Tests of lib/core/moshi-hub: resolving repo ids in a fake local Hugging Face cache.
 *
 * Each test gets a fresh temporary directory laid out like huggingface_hub's cache
 * (refs/, snapshots/<commit>/ with symlinks into blobs/), and an environment where only the
 * variables the test sets point anywhere. */
#include <glib/gstdio.h>
#include <string.h>
#include <unistd.h>

#include "hub-server-util.h"
#include "moshi-error.h"
#include "moshi-hub.h"
#include "test-support.h"

#define COMMIT_MAIN "0123456789abcdef0123456789abcdef01234567"
#define COMMIT_V2   "89abcdef0123456789abcdef0123456789abcdef"
#define MIMI MOSHI_HUB_MIMI_FILENAME

static char *tmp_dir;
static char *cache_dir;

static void
write_file (const char *path, const char *contents)
{
  g_autofree char *dir = g_path_get_dirname (path);
  ck_assert_int_eq (g_mkdir_with_parents (dir, 0755), 0);
  g_autoptr (GError) error = NULL;
  ck_assert_msg (g_file_set_contents (path, contents, -1, &error), "%s",
      error ? error->message : "");
}

/* Adds <file> to snapshot <commit> of owner/name the way huggingface_hub does: the content in
 * blobs/<id>, the snapshot entry a relative symlink to it. */
static char *
add_cached_file (const char *cache, const char *owner, const char *name, const char *commit,
    const char *file, const char *contents)
{
  g_autofree char *folder = g_strdup_printf ("models--%s--%s", owner, name);
  g_autofree char *blob_id = g_compute_checksum_for_string (G_CHECKSUM_SHA256, contents, -1);
  g_autofree char *blob = g_build_filename (cache, folder, "blobs", blob_id, NULL);
  write_file (blob, contents);
  char *entry = g_build_filename (cache, folder, "snapshots", commit, file, NULL);
  g_autofree char *entry_dir = g_path_get_dirname (entry);
  ck_assert_int_eq (g_mkdir_with_parents (entry_dir, 0755), 0);
  /* snapshots/<commit>/<file> -> ../../blobs/<id>, one more ../ per directory in file */
  GString *target = g_string_new ("../../");
  for (const char *p = file; *p; p++)
    if (*p == '/')
      g_string_append (target, "../");
  g_string_append_printf (target, "blobs/%s", blob_id);
  ck_assert_int_eq (symlink (target->str, entry), 0);
  g_string_free (target, TRUE);
  return entry;
}

static void
set_ref (const char *cache, const char *owner, const char *name, const char *ref,
    const char *commit)
{
  g_autofree char *folder = g_strdup_printf ("models--%s--%s", owner, name);
  g_autofree char *path = g_build_filename (cache, folder, "refs", ref, NULL);
  /* huggingface_hub writes the hash without a newline; tolerate one anyway. */
  g_autofree char *text = g_strdup_printf ("%s\n", commit);
  write_file (path, text);
}

static void
setup (void)
{
  tmp_dir = g_dir_make_tmp ("moshi-hub-XXXXXX", NULL);
  ck_assert_ptr_nonnull (tmp_dir);
  cache_dir = g_build_filename (tmp_dir, "hub", NULL);
  g_setenv ("HF_HUB_CACHE", cache_dir, TRUE);
  g_unsetenv ("HUGGINGFACE_HUB_CACHE");
  g_unsetenv ("HF_HOME");
  g_unsetenv ("XDG_CACHE_HOME");
  /* Resolution only: what is missing is reported, not downloaded (test-hub-download). */
  g_setenv ("HF_HUB_OFFLINE", "1", TRUE);
}

static void
teardown (void)
{
  moshi_test_remove_tree (tmp_dir);
  g_clear_pointer (&tmp_dir, g_free);
  g_clear_pointer (&cache_dir, g_free);
}

/* ---- plain paths ---- */

START_TEST (test_existing_file_is_returned)
{
  g_autofree char *file = g_build_filename (tmp_dir, "model.safetensors", NULL);
  write_file (file, "x");
  g_autoptr (GError) error = NULL;
  g_autofree char *path = moshi_hub_resolve (file, MIMI, &error);
  ck_assert_ptr_null (error);
  ck_assert_str_eq (path, file);
}
END_TEST

START_TEST (test_directory_holding_default_file)
{
  g_autofree char *file = g_build_filename (tmp_dir, "snap", MIMI, NULL);
  write_file (file, "x");
  g_autofree char *dir = g_build_filename (tmp_dir, "snap", NULL);
  g_autoptr (GError) error = NULL;
  g_autofree char *path = moshi_hub_resolve (dir, MIMI, &error);
  ck_assert_ptr_null (error);
  ck_assert_str_eq (path, file);

  g_autofree char *none = moshi_hub_resolve (tmp_dir, MIMI, &error);
  ck_assert_ptr_null (none);
  ck_assert (g_error_matches (error, MOSHI_ERROR, MOSHI_ERROR_IO));
  moshi_assert_error_contains (error, tmp_dir);
  moshi_assert_error_contains (error, MIMI);
}
END_TEST

START_TEST (test_missing_path_names_the_path)
{
  g_autofree char *missing = g_build_filename (tmp_dir, "no", "such.safetensors", NULL);
  g_autoptr (GError) error = NULL;
  g_autofree char *path = moshi_hub_resolve (missing, MIMI, &error);
  ck_assert_ptr_null (path);
  ck_assert (g_error_matches (error, MOSHI_ERROR, MOSHI_ERROR_IO));
  moshi_assert_error_contains (error, missing);
  moshi_assert_error_contains (error, "no such file");

  g_clear_error (&error);
  g_autofree char *empty = moshi_hub_resolve ("", MIMI, &error);
  ck_assert_ptr_null (empty);
  ck_assert (g_error_matches (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT));
}
END_TEST

/* ---- repo ids ---- */

START_TEST (test_repo_id_default_file_at_main)
{
  g_autofree char *entry = add_cached_file (cache_dir, "kyutai", "moshiko-pytorch-bf16",
      COMMIT_MAIN, MIMI, "weights");
  set_ref (cache_dir, "kyutai", "moshiko-pytorch-bf16", "main", COMMIT_MAIN);

  g_autoptr (GError) error = NULL;
  g_autofree char *path = moshi_hub_resolve ("kyutai/moshiko-pytorch-bf16", MIMI, &error);
  ck_assert_msg (error == NULL, "%s", error ? error->message : "");
  ck_assert_str_eq (path, entry);
  g_autofree char *contents = NULL;
  ck_assert (g_file_get_contents (path, &contents, NULL, NULL));
  ck_assert_str_eq (contents, "weights");
}
END_TEST

START_TEST (test_repo_id_with_filename_and_revision)
{
  g_free (add_cached_file (cache_dir, "kyutai", "moshiko-pytorch-bf16", COMMIT_MAIN, MIMI,
          "main"));
  g_autofree char *other = add_cached_file (cache_dir, "kyutai", "moshiko-pytorch-bf16",
      COMMIT_MAIN, "sub/dir/config.json", "{}");
  g_autofree char *v2 = add_cached_file (cache_dir, "kyutai", "moshiko-pytorch-bf16",
      COMMIT_V2, MIMI, "v2");
  set_ref (cache_dir, "kyutai", "moshiko-pytorch-bf16", "main", COMMIT_MAIN);
  set_ref (cache_dir, "kyutai", "moshiko-pytorch-bf16", "v2", COMMIT_V2);

  g_autoptr (GError) error = NULL;
  g_autofree char *p1 = moshi_hub_resolve ("kyutai/moshiko-pytorch-bf16:sub/dir/config.json",
      MIMI, &error);
  ck_assert_msg (error == NULL, "%s", error ? error->message : "");
  ck_assert_str_eq (p1, other);

  g_autofree char *p2 = moshi_hub_resolve ("kyutai/moshiko-pytorch-bf16@v2", MIMI, &error);
  ck_assert_msg (error == NULL, "%s", error ? error->message : "");
  ck_assert_str_eq (p2, v2);

  /* A commit hash needs no ref. */
  g_autofree char *p3 = moshi_hub_resolve ("kyutai/moshiko-pytorch-bf16@" COMMIT_V2 ":" MIMI,
      NULL, &error);
  ck_assert_msg (error == NULL, "%s", error ? error->message : "");
  ck_assert_str_eq (p3, v2);

  /* No default and no file named: say how to name one. */
  g_autofree char *p4 = moshi_hub_resolve ("kyutai/moshiko-pytorch-bf16", NULL, &error);
  ck_assert_ptr_null (p4);
  moshi_assert_error_contains (error, "kyutai/moshiko-pytorch-bf16:<file>");
}
END_TEST

START_TEST (test_repo_not_cached_lists_searched_path)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *path = moshi_hub_resolve ("kyutai/moshiko-pytorch-bf16", MIMI, &error);
  ck_assert_ptr_null (path);
  ck_assert (g_error_matches (error, MOSHI_ERROR, MOSHI_ERROR_IO));
  g_autofree char *ref = g_build_filename (cache_dir, "models--kyutai--moshiko-pytorch-bf16",
      "refs", "main", NULL);
  moshi_assert_error_contains (error, ref);
  moshi_assert_error_contains (error, "$HF_HUB_CACHE");
  moshi_assert_error_contains (error, "HF_HUB_OFFLINE is set");
  moshi_assert_error_contains (error, "huggingface-cli download kyutai/moshiko-pytorch-bf16 " MIMI);
}
END_TEST

START_TEST (test_file_missing_from_snapshot)
{
  g_free (add_cached_file (cache_dir, "kyutai", "moshiko-pytorch-bf16", COMMIT_MAIN,
          "model.safetensors", "lm"));
  set_ref (cache_dir, "kyutai", "moshiko-pytorch-bf16", "main", COMMIT_MAIN);

  g_autoptr (GError) error = NULL;
  g_autofree char *path = moshi_hub_resolve ("kyutai/moshiko-pytorch-bf16", MIMI, &error);
  ck_assert_ptr_null (path);
  g_autofree char *expected = g_build_filename (cache_dir, "models--kyutai--moshiko-pytorch-bf16",
      "snapshots", COMMIT_MAIN, MIMI, NULL);
  moshi_assert_error_contains (error, expected);
  moshi_assert_error_contains (error, "HF_HUB_OFFLINE is set");
}
END_TEST

START_TEST (test_dangling_symlink)
{
  g_autofree char *entry = add_cached_file (cache_dir, "kyutai", "mimi", COMMIT_MAIN, MIMI, "w");
  set_ref (cache_dir, "kyutai", "mimi", "main", COMMIT_MAIN);
  g_autofree char *blob_id = g_compute_checksum_for_string (G_CHECKSUM_SHA256, "w", -1);
  g_autofree char *blob = g_build_filename (cache_dir, "models--kyutai--mimi", "blobs", blob_id,
      NULL);
  ck_assert_int_eq (g_unlink (blob), 0);

  g_autoptr (GError) error = NULL;
  g_autofree char *path = moshi_hub_resolve ("kyutai/mimi", MIMI, &error);
  ck_assert_ptr_null (path);
  moshi_assert_error_contains (error, entry);
  moshi_assert_error_contains (error, "dangling");
}
END_TEST

START_TEST (test_rejects_escaping_specs)
{
  g_free (add_cached_file (cache_dir, "kyutai", "mimi", COMMIT_MAIN, MIMI, "w"));
  set_ref (cache_dir, "kyutai", "mimi", "main", COMMIT_MAIN);
  /* None of these may read outside the repository's folder. */
  static const char *const bad[] = {
    "kyutai/mimi:../../../etc/passwd", "kyutai/mimi:/etc/passwd", "kyutai/mimi@../main",
    "kyutai/..", "../mimi", "kyutai/mimi/extra", "/kyutai", "kyutai/", "kyutai/mimi@",
    "kyutai/mimi:", "kyu tai/mimi",
  };
  for (gsize i = 0; i < G_N_ELEMENTS (bad); i++) {
    g_autoptr (GError) error = NULL;
    g_autofree char *path = moshi_hub_resolve (bad[i], MIMI, &error);
    ck_assert_msg (path == NULL, "'%s' resolved to %s", bad[i], path);
    ck_assert_msg (error != NULL, "no error for '%s'", bad[i]);
  }
}
END_TEST

START_TEST (test_bad_ref_contents)
{
  set_ref (cache_dir, "kyutai", "mimi", "main", "../../../../etc");
  g_autoptr (GError) error = NULL;
  g_autofree char *path = moshi_hub_resolve ("kyutai/mimi", MIMI, &error);
  ck_assert_ptr_null (path);
  ck_assert (g_error_matches (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT));
  moshi_assert_error_contains (error, "refs");
}
END_TEST

/* ---- which cache directory ---- */

START_TEST (test_cache_dir_precedence)
{
  const char *origin;
  g_autofree char *d1 = moshi_hub_cache_dir (&origin);
  ck_assert_str_eq (d1, cache_dir);
  ck_assert_str_eq (origin, "HF_HUB_CACHE");

  g_unsetenv ("HF_HUB_CACHE");
  g_setenv ("HUGGINGFACE_HUB_CACHE", "/legacy", TRUE);
  g_setenv ("HF_HOME", "/hf-home", TRUE);
  g_autofree char *d2 = moshi_hub_cache_dir (&origin);
  ck_assert_str_eq (d2, "/legacy");
  ck_assert_str_eq (origin, "HUGGINGFACE_HUB_CACHE");

  g_unsetenv ("HUGGINGFACE_HUB_CACHE");
  g_setenv ("XDG_CACHE_HOME", "/xdg", TRUE);
  g_autofree char *d3 = moshi_hub_cache_dir (&origin);
  ck_assert_str_eq (d3, "/hf-home/hub");
  ck_assert_str_eq (origin, "HF_HOME");

  g_unsetenv ("HF_HOME");
  g_autofree char *d4 = moshi_hub_cache_dir (&origin);
  ck_assert_str_eq (d4, "/xdg/huggingface/hub");
  ck_assert_str_eq (origin, "XDG_CACHE_HOME");

  g_unsetenv ("XDG_CACHE_HOME");
  g_autofree char *d5 = moshi_hub_cache_dir (&origin);
  g_autofree char *expected = g_build_filename (g_get_home_dir (), ".cache", "huggingface", "hub",
      NULL);
  ck_assert_str_eq (d5, expected);
  ck_assert_str_eq (origin, "default");
}
END_TEST

START_TEST (test_hf_home_cache_is_searched)
{
  g_unsetenv ("HF_HUB_CACHE");
  g_autofree char *home = g_build_filename (tmp_dir, "hf-home", NULL);
  g_setenv ("HF_HOME", home, TRUE);
  g_autofree char *hub = g_build_filename (home, "hub", NULL);
  g_autofree char *entry = add_cached_file (hub, "kyutai", "mimi", COMMIT_MAIN, MIMI, "w");
  set_ref (hub, "kyutai", "mimi", "main", COMMIT_MAIN);

  g_autoptr (GError) error = NULL;
  g_autofree char *path = moshi_hub_resolve ("kyutai/mimi", MIMI, &error);
  ck_assert_msg (error == NULL, "%s", error ? error->message : "");
  ck_assert_str_eq (path, entry);
}
END_TEST

static Suite *
hub_suite (void)
{
  Suite *suite = suite_create ("hub");
  TCase *paths = tcase_create ("paths");
  tcase_add_checked_fixture (paths, setup, teardown);
  tcase_add_test (paths, test_existing_file_is_returned);
  tcase_add_test (paths, test_directory_holding_default_file);
  tcase_add_test (paths, test_missing_path_names_the_path);
  suite_add_tcase (suite, paths);

  TCase *repos = tcase_create ("repo-ids");
  tcase_add_checked_fixture (repos, setup, teardown);
  tcase_add_test (repos, test_repo_id_default_file_at_main);
  tcase_add_test (repos, test_repo_id_with_filename_and_revision);
  tcase_add_test (repos, test_repo_not_cached_lists_searched_path);
  tcase_add_test (repos, test_file_missing_from_snapshot);
  tcase_add_test (repos, test_dangling_symlink);
  tcase_add_test (repos, test_rejects_escaping_specs);
  tcase_add_test (repos, test_bad_ref_contents);
  suite_add_tcase (suite, repos);

  TCase *dirs = tcase_create ("cache-dir");
  tcase_add_checked_fixture (dirs, setup, teardown);
  tcase_add_test (dirs, test_cache_dir_precedence);
  tcase_add_test (dirs, test_hf_home_cache_is_searched);
  suite_add_tcase (suite, dirs);
  return suite;
}

int
main (void)
{
  return moshi_test_run_suite (hub_suite ());
}
