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

/* What the registry needs to know of a model type: how to load one, and where its reference
 * count and its key slot (a char *, NULL for models loaded outside the registry) are. */
typedef struct {
  gpointer (*load) (const char *weights_path, const char *config_path, gconstpointer options,
      GError **error);
  gsize ref_count_offset;
  gsize key_offset;
} MoshiRegistryType;

/* Returns the model already loaded for these files (compared by canonical path) on this
 * device with one more reference, or loads it (under the registry's lock, so two users
 * starting together load once) and enters it. device names the device actually used, so
 * that requests that resolve to the same device share. */
gpointer moshi_registry_load (MoshiRegistry *registry, const MoshiRegistryType *type,
    const char *device, const char *weights_path, const char *config_path,
    gconstpointer options, GError **error);

/* Drops one reference of a registered object. Returns TRUE when it was the last: the entry is
 * gone and the caller frees the object. The count only reaches zero under the lock, so a
 * concurrent get never revives an object being freed. */
gboolean moshi_registry_unref (MoshiRegistry *registry, const char *key, gint *ref_count);

/* The canonical spelling of a path (symlinks and "." resolved when the file exists). */
char *moshi_canonical_path (const char *path);

G_END_DECLS
