/* gst-moshi: the keys of an upstream config.json as a table (key, type, range, default), read
 * by one function, so that every value of the LM and Mimi configs has its range stated once and
 * checked at load, and every error names the config and the key.
 *
 * A table describes the keys of one JSON object; the fields it fills live in one struct (the
 * "base"), at the offsets the entries give. Keys not in the table are errors: a misspelt key
 * would otherwise silently keep its default. */
#pragma once

#include <glib.h>

#include "moshi-json.h"

G_BEGIN_DECLS

typedef enum {
  MOSHI_CONFIG_INT,             /* int in [min, max]; an integral float (Python's 512.0) too */
  MOSHI_CONFIG_NUMBER,          /* double in [min, max] */
  MOSHI_CONFIG_BOOL,            /* gboolean */
  MOSHI_CONFIG_CHOICE,          /* int: the value of the name among choices */
  MOSHI_CONFIG_PRESENT,         /* gboolean: FALSE for null, TRUE for any other value */
  MOSHI_CONFIG_EXPECT_BOOL,     /* no field: must be the default (what is implemented) */
  MOSHI_CONFIG_EXPECT_INT,      /* no field: must be the default */
  MOSHI_CONFIG_EXPECT_NAME,     /* no field: must be choices[0] (null passes too) */
  MOSHI_CONFIG_OFF,             /* no field: an unimplemented feature, so false, null, 0 or {} */
  MOSHI_CONFIG_IGNORED,         /* no field: describes the checkpoint, not the model */
  MOSHI_CONFIG_CUSTOM,          /* read by the config's own code (arrays, sections) */
} MoshiConfigType;

typedef struct {
  const char *name;
  int value;
} MoshiConfigChoice;

/* A null value keeps the default instead of being an error. */
#define MOSHI_CONFIG_NULL_KEEPS_DEFAULT (1u << 0)

typedef struct {
  const char *key;
  MoshiConfigType type;
  gsize offset;                 /* of the field in the base struct, for the types with one */
  double min, max;              /* INT, NUMBER */
  double default_value;         /* INT, NUMBER, BOOL, CHOICE, PRESENT, EXPECT_BOOL, EXPECT_INT */
  const MoshiConfigChoice *choices;     /* CHOICE, EXPECT_NAME: ends with a NULL name */
  guint flags;
} MoshiConfigKey;

/* Sets the default of every entry that has a field. */
void moshi_config_set_defaults (const MoshiConfigKey *table, gsize n_keys, gpointer base);

/* The entry for key, or NULL. */
const MoshiConfigKey *moshi_config_find (const MoshiConfigKey *table, gsize n_keys,
    const char *key);

/* Reads one value into its field (nothing for CUSTOM). path is the key as the error names it
 * (e.g. "seanet.ratios", "depformer_num_layers"); what names the config. */
gboolean moshi_config_read_value (const MoshiConfigKey *entry, const MoshiJson *value,
    gpointer base, const char *what, const char *path, GError **error);

/* Reads element i of array into element i of the int array at entry's offset (an INT entry
 * whose range is the elements'); path names the array in messages, as "path[i]". */
gboolean moshi_config_read_int_element (const MoshiConfigKey *entry, const MoshiJson *array,
    gsize i, gpointer base, const char *what, const char *path, GError **error);

/* Reads every member of obj with the table: unknown keys are errors; CUSTOM entries are left to
 * the caller. section prefixes the key in messages ("" for the top level). */
gboolean moshi_config_read_object (const MoshiConfigKey *table, gsize n_keys,
    const MoshiJson *obj, gpointer base, const char *what, const char *section,
    GError **error);

/* Sets error to "what: \"path\" must be expected" and returns FALSE. */
gboolean moshi_config_bad_value (const char *what, const char *path, const char *expected,
    GError **error);

/* Copies the field of entry from src to dst (two bases of the same struct type). */
void moshi_config_copy_field (const MoshiConfigKey *entry, gpointer dst, gconstpointer src);

G_END_DECLS
