/* gst-moshi: process-wide registries of loaded models, so that elements naming the same files
 * share one copy. An entry leaves its registry with its last reference. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef struct {
  GMutex lock;
  GHashTable *entries;      /* key -> object (not reffed) */
} MoshiRegistry;

/* Statically allocated registries start zeroed. */
#define MOSHI_REGISTRY_INIT { { 0 }, NULL }

typedef gpointer (*MoshiRegistryLoadFunc) (gpointer user_data, GError **error);

/* Returns the object under key with one more reference (*ref_count incremented), or loads it
 * with load (under the registry's lock, so two users starting together load once) and enters
 * it. The caller keeps the key string in the object to release it later. */
gpointer moshi_registry_get (MoshiRegistry *registry, const char *key, gint *(*ref_count) (gpointer),
    MoshiRegistryLoadFunc load, gpointer user_data, GError **error);

/* Drops one reference of a registered object. Returns TRUE when it was the last: the entry is
 * gone and the caller frees the object. The count only reaches zero under the lock, so a
 * concurrent get never revives an object being freed. */
gboolean moshi_registry_unref (MoshiRegistry *registry, const char *key, gint *ref_count);

/* The canonical spelling of a path (symlinks and "." resolved when the file exists). */
char *moshi_canonical_path (const char *path);

G_END_DECLS
