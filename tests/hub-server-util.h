/* gst-moshi tests: the stand-in Hugging Face hub (tests/hub-server.py) from C, for the
 * library's and the elements' download tests. Plain GLib, no test framework. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef struct {
  GPid pid;
  char *root;                   /* what it serves: root/repos/<owner>/<name>/… */
  char *endpoint;               /* http://127.0.0.1:<port>, for HF_ENDPOINT */
} MoshiTestHub;

/* Starts the server in python3 (script from $MOSHI_HUB_SERVER) on a new temporary root.
 * FALSE with error when it does not come up. */
gboolean moshi_test_hub_start (MoshiTestHub *hub, GError **error);
/* Stops it and deletes its root. */
void moshi_test_hub_stop (MoshiTestHub *hub);
/* Serves data as <file> of repo_id ("owner/name") at the commit `commit`. */
gboolean moshi_test_hub_publish (MoshiTestHub *hub, const char *repo_id, const char *commit,
    const char *file, const void *data, gsize len, GError **error);

/* Deletes a file or a folder with everything in it; symbolic links are removed, not
 * followed. */
void moshi_test_remove_tree (const char *path);

G_END_DECLS
