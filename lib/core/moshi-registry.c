#include "moshi-registry.h"

#include <stdlib.h>

gpointer
moshi_registry_load (MoshiRegistry *registry, const MoshiRegistryType *type, const char *device,
    const char *weights_path, const char *config_path, gconstpointer options, GError **error)
{
  g_autofree char *weights = moshi_canonical_path (weights_path);
  g_autofree char *config = config_path ? moshi_canonical_path (config_path) : g_strdup ("");
  g_autofree char *key = g_strdup_printf ("%s\n%s\n%s", device, weights, config);

  g_mutex_lock (&registry->lock);
  if (registry->entries == NULL)
    registry->entries = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  gpointer obj = g_hash_table_lookup (registry->entries, key);
  if (obj != NULL) {
    g_atomic_int_inc ((gint *) ((guint8 *) obj + type->ref_count_offset));
  } else {
    obj = type->load (weights_path, config_path, options, error);
    if (obj != NULL) {
      /* The key is set under the lock, before any other user can see the model. */
      *(char **) ((guint8 *) obj + type->key_offset) = g_strdup (key);
      g_hash_table_insert (registry->entries, g_steal_pointer (&key), obj);
    }
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
