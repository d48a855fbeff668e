/* gst-moshi tests: the stand-in Hugging Face hub from C (see hub-server-util.h). */
#include "hub-server-util.h"

#include <glib/gstdio.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

void
moshi_test_remove_tree (const char *path)
{
  if (!g_file_test (path, G_FILE_TEST_IS_SYMLINK) && g_file_test (path, G_FILE_TEST_IS_DIR)) {
    GDir *dir = g_dir_open (path, 0, NULL);
    const char *name;
    while (dir && (name = g_dir_read_name (dir)) != NULL) {
      g_autofree char *child = g_build_filename (path, name, NULL);
      moshi_test_remove_tree (child);
    }
    if (dir)
      g_dir_close (dir);
    g_rmdir (path);
  } else {
    g_unlink (path);
  }
}

gboolean
moshi_test_hub_start (MoshiTestHub *hub, GError **error)
{
  memset (hub, 0, sizeof *hub);
  const char *script = g_getenv ("MOSHI_HUB_SERVER");
  if (script == NULL) {
    g_set_error (error, G_SPAWN_ERROR, G_SPAWN_ERROR_NOENT,
        "MOSHI_HUB_SERVER is not set (run the test through meson test)");
    return FALSE;
  }
  hub->root = g_dir_make_tmp ("moshi-hub-server-XXXXXX", error);
  if (hub->root == NULL)
    return FALSE;
  const char *argv[] = { "python3", script, hub->root, NULL };
  gint out_fd;
  if (!g_spawn_async_with_pipes (NULL, (char **) argv, NULL,
          G_SPAWN_SEARCH_PATH | G_SPAWN_DO_NOT_REAP_CHILD, NULL, NULL, &hub->pid, NULL,
          &out_fd, NULL, error))
    return FALSE;
  /* The server prints its port once it listens. */
  char line[32] = { 0 };
  gsize len = 0;
  while (len < sizeof line - 1) {
    ssize_t n = read (out_fd, line + len, 1);
    if (n <= 0 || line[len] == '\n')
      break;
    len++;
  }
  line[len] = '\0';
  close (out_fd);
  if (len == 0) {
    g_set_error (error, G_SPAWN_ERROR, G_SPAWN_ERROR_FAILED, "%s did not start", script);
    moshi_test_hub_stop (hub);
    return FALSE;
  }
  hub->endpoint = g_strdup_printf ("http://127.0.0.1:%s", line);
  return TRUE;
}

void
moshi_test_hub_stop (MoshiTestHub *hub)
{
  if (hub->pid > 0) {
    kill (hub->pid, SIGTERM);
    waitpid (hub->pid, NULL, 0);
    g_spawn_close_pid (hub->pid);
  }
  if (hub->root != NULL)
    moshi_test_remove_tree (hub->root);
  g_clear_pointer (&hub->root, g_free);
  g_clear_pointer (&hub->endpoint, g_free);
  hub->pid = 0;
}

static gboolean
write_with_dirs (const char *path, const void *data, gsize len, GError **error)
{
  g_autofree char *dir = g_path_get_dirname (path);
  if (g_mkdir_with_parents (dir, 0755) != 0) {
    g_set_error (error, G_FILE_ERROR, G_FILE_ERROR_FAILED, "cannot create %s", dir);
    return FALSE;
  }
  return g_file_set_contents (path, data, (gssize) len, error);
}

gboolean
moshi_test_hub_publish (MoshiTestHub *hub, const char *repo_id, const char *commit,
    const char *file, const void *data, gsize len, GError **error)
{
  g_autofree char *repo = g_build_filename (hub->root, "repos", repo_id, NULL);
  g_autofree char *commit_path = g_build_filename (repo, "commit", NULL);
  g_autofree char *dest = g_build_filename (repo, "files", file, NULL);
  return write_with_dirs (commit_path, commit, strlen (commit), error)
      && write_with_dirs (dest, data, len, error);
}
