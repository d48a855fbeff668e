/* gst-moshi: record-and-replay of device work (moshi-recorder.h). */
#include "moshi-recorder.h"

struct _MoshiRecorder {
  MoshiExec *ex;
  gboolean records;
  guint n_slots;
  MoshiGraph **graph;           /* [n_slots] */
  char **key;                   /* [n_slots]: the shapes they were recorded for */
  GHashTable *seen;             /* every shape run so far, over all slots */
  char *what, *owner;
};

gboolean
moshi_graphs_enabled (void)
{
  const char *env = g_getenv ("MOSHI_GRAPHS");
  return !(env && g_str_equal (env, "0"));
}

MoshiRecorder *
moshi_recorder_new (MoshiExec *ex, guint n_slots, gboolean allowed, const char *what,
    const char *owner)
{
  g_return_val_if_fail (n_slots > 0, NULL);
  MoshiRecorder *r = g_new0 (MoshiRecorder, 1);
  r->ex = ex;
  r->records = allowed && ex->backend->ops->capture_begin != NULL && moshi_graphs_enabled ();
  r->n_slots = n_slots;
  r->graph = g_new0 (MoshiGraph *, n_slots);
  r->key = g_new0 (char *, n_slots);
  r->seen = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  r->what = g_strdup (what);
  r->owner = g_strdup (owner);
  return r;
}

static void
free_slot (MoshiRecorder *r, guint slot)
{
  if (r->graph[slot] != NULL)
    r->ex->backend->ops->graph_free (r->ex->backend, r->graph[slot]);
  r->graph[slot] = NULL;
  g_clear_pointer (&r->key[slot], g_free);
}

void
moshi_recorder_invalidate (MoshiRecorder *r)
{
  for (guint s = 0; s < r->n_slots; s++)
    free_slot (r, s);
}

void
moshi_recorder_free (MoshiRecorder *r)
{
  if (r == NULL)
    return;
  moshi_recorder_invalidate (r);
  g_free (r->graph);
  g_free (r->key);
  g_hash_table_unref (r->seen);
  g_free (r->what);
  g_free (r->owner);
  g_free (r);
}

gboolean
moshi_recorder_records (const MoshiRecorder *r)
{
  return r->records;
}

gboolean
moshi_recorder_run (MoshiRecorder *r, guint slot, const char *key, gboolean eager,
    MoshiRecordedFunc work, gpointer ctx, GError **error)
{
  g_return_val_if_fail (slot < r->n_slots, FALSE);
  const MoshiBackendOps *ops = r->ex->backend->ops;
  if (!r->records) {
    work (ctx);
    return TRUE;
  }
  if (r->graph[slot] != NULL && g_str_equal (r->key[slot], key))
    return ops->graph_launch (r->ex, r->graph[slot], error);
  /* a shape is seen per slot: each kind of call sizes the scratch it needs in its first run */
  char *seen_key = g_strdup_printf ("%u:%s", slot, key);
  if (!g_hash_table_contains (r->seen, seen_key)) {
    if (g_hash_table_size (r->seen) >= MOSHI_RECORDER_MAX_SEEN)
      g_hash_table_remove_all (r->seen);
    g_hash_table_add (r->seen, seen_key);
    moshi_recorder_invalidate (r);
    work (ctx);
    return TRUE;
  }
  g_free (seen_key);
  if (eager) {
    work (ctx);
    return TRUE;
  }
  free_slot (r, slot);
  /* a stream that cannot even begin a capture is on a device that failed (a fault): the call
   * fails, rather than run its ops as they come on it */
  if (!ops->capture_begin (r->ex, error))
    return FALSE;
  g_autoptr (GError) why = NULL;
  work (ctx);
  MoshiGraph *graph = ops->capture_end (r->ex, &why);
  if (graph == NULL) {
    g_message ("%s: %s are not recorded, each op is launched as it comes: %s", r->owner,
        r->what, why->message);
    r->records = FALSE;
    moshi_recorder_invalidate (r);
    work (ctx);
    return TRUE;
  }
  r->graph[slot] = graph;
  r->key[slot] = g_strdup (key);
  return ops->graph_launch (r->ex, graph, error);
}
