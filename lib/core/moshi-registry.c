#include "moshi-registry.h"

#include <stdlib.h>

gpointer
moshi_registry_get (MoshiRegistry *registry, const char *key, gint *(*ref_count) (gpointer),
    MoshiRegistryLoadFunc load, gpointer user_data, GError **error)
{
  g_mutex_lock (&registry->lock);
  if (registry->entries == NULL)
    registry->entries = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  gpointer obj = g_hash_table_lookup (registry->entries, key);
  if (obj != NULL) {
    g_atomic_int_inc (ref_count (obj));
  } else {
    obj = load (user_data, error);
    if (obj != NULL)
      g_hash_table_insert (registry->entries, g_strdup (key), obj);
  }
  g_mutex_unlock (&registry->lock);
  return obj;
}

gboolean
moshi_registry_unref (MoshiRegistry *registry, const char *key, gint *ref_count)
{
  g_mutex_lock (&registry->lock);
  gboolean last = g_atomic_int_dec_and_test (ref_count);
  if (last)
    g_hash_table_remove (registry->entries, key);
  g_mutex_unlock (&registry->lock);
  return last;
}

char *
moshi_canonical_path (const char *path)
{
  char *real = realpath (path, NULL);
  if (real == NULL)
    return g_canonicalize_filename (path, NULL);
  char *copy = g_strdup (real);
  free (real);
  return copy;
}
