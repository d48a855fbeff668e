#include "config-table.h"

#include "moshi-error.h"

#include <math.h>
#include <string.h>

static int *
int_field (const MoshiConfigKey *entry, gpointer base)
{
  return (int *) ((char *) base + entry->offset);
}

static double *
number_field (const MoshiConfigKey *entry, gpointer base)
{
  return (double *) ((char *) base + entry->offset);
}

static gboolean *
bool_field (const MoshiConfigKey *entry, gpointer base)
{
  return (gboolean *) ((char *) base + entry->offset);
}

void
moshi_config_set_defaults (const MoshiConfigKey *table, gsize n_keys, gpointer base)
{
  for (gsize i = 0; i < n_keys; i++) {
    const MoshiConfigKey *e = &table[i];
    switch (e->type) {
      case MOSHI_CONFIG_INT:
      case MOSHI_CONFIG_CHOICE:
        *int_field (e, base) = (int) e->default_value;
        break;
      case MOSHI_CONFIG_NUMBER:
        *number_field (e, base) = e->default_value;
        break;
      case MOSHI_CONFIG_BOOL:
      case MOSHI_CONFIG_PRESENT:
        *bool_field (e, base) = e->default_value != 0;
        break;
      default:
        break;
    }
  }
}

const MoshiConfigKey *
moshi_config_find (const MoshiConfigKey *table, gsize n_keys, const char *key)
{
  for (gsize i = 0; i < n_keys; i++)
    if (strcmp (table[i].key, key) == 0)
      return &table[i];
  return NULL;
}

gboolean
moshi_config_bad_value (const char *what, const char *path, const char *expected, GError **error)
{
  g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG, "%s: \"%s\" must be %s", what, path,
      expected);
  return FALSE;
}

static gboolean
unsupported (const char *what, const char *path, const char *value, GError **error)
{
  g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG, "%s: \"%s\" = %s is not supported", what,
      path, value);
  return FALSE;
}

/* An integer in [min, max] (both within an int), compared as a double first so that values
 * beyond an int64 are never cast. */
static gboolean
read_int (const MoshiJson *v, double min, double max, int *out)
{
  gint64 x;
  double d;
  if (moshi_json_int64 (v, &x)) {
    if (x < min || x > max)
      return FALSE;
    *out = (int) x;
    return TRUE;
  }
  if (!moshi_json_double (v, &d) || d != floor (d) || !(d >= min && d <= max))
    return FALSE;
  *out = (int) d;
  return TRUE;
}

static char *
names_of (const MoshiConfigChoice *choices)
{
  GString *s = g_string_new ("one of ");
  for (int i = 0; choices[i].name != NULL; i++)
    g_string_append_printf (s, "%s%s", i > 0 ? ", " : "", choices[i].name);
  return g_string_free (s, FALSE);
}

/* FALSE when the value turns an unimplemented feature on: true, a non-zero number or a
 * non-empty object or list. */
static gboolean
is_off (const MoshiJson *v)
{
  double d;
  switch (moshi_json_kind (v)) {
    case MOSHI_JSON_TRUE:
      return FALSE;
    case MOSHI_JSON_OBJECT:
    case MOSHI_JSON_ARRAY:
      return moshi_json_length (v) == 0;
    default:
      return !moshi_json_double (v, &d) || d == 0;
  }
}

gboolean
moshi_config_read_value (const MoshiConfigKey *e, const MoshiJson *v, gpointer base,
    const char *what, const char *path, GError **error)
{
  if ((e->flags & MOSHI_CONFIG_NULL_KEEPS_DEFAULT) && moshi_json_kind (v) == MOSHI_JSON_NULL)
    return TRUE;
  switch (e->type) {
    case MOSHI_CONFIG_INT:
      if (!read_int (v, e->min, e->max, int_field (e, base))) {
        g_autofree char *range = g_strdup_printf ("an integer in [%.0f, %.0f]", e->min, e->max);
        return moshi_config_bad_value (what, path, range, error);
      }
      return TRUE;
    case MOSHI_CONFIG_NUMBER: {
      double d;
      if (!moshi_json_double (v, &d) || !(d >= e->min && d <= e->max)) {
        g_autofree char *range = g_strdup_printf ("a number in [%g, %g]", e->min, e->max);
        return moshi_config_bad_value (what, path, range, error);
      }
      *number_field (e, base) = d;
      return TRUE;
    }
    case MOSHI_CONFIG_BOOL:
      if (!moshi_json_bool (v, bool_field (e, base)))
        return moshi_config_bad_value (what, path, "true or false", error);
      return TRUE;
    case MOSHI_CONFIG_CHOICE: {
      const char *s = moshi_json_string (v);
      for (int i = 0; s && e->choices[i].name != NULL; i++)
        if (strcmp (s, e->choices[i].name) == 0) {
          *int_field (e, base) = e->choices[i].value;
          return TRUE;
        }
      g_autofree char *names = names_of (e->choices);
      return moshi_config_bad_value (what, path, names, error);
    }
    case MOSHI_CONFIG_PRESENT:
      *bool_field (e, base) = moshi_json_kind (v) != MOSHI_JSON_NULL;
      return TRUE;
    case MOSHI_CONFIG_EXPECT_BOOL: {
      gboolean b;
      if (!moshi_json_bool (v, &b))
        return moshi_config_bad_value (what, path, "true or false", error);
      if (b != (e->default_value != 0))
        return unsupported (what, path, b ? "true" : "false", error);
      return TRUE;
    }
    case MOSHI_CONFIG_EXPECT_INT: {
      int x;
      if (!read_int (v, e->default_value, e->default_value, &x)) {
        g_autofree char *expected = g_strdup_printf ("%.0f (the only value supported)",
            e->default_value);
        return moshi_config_bad_value (what, path, expected, error);
      }
      return TRUE;
    }
    case MOSHI_CONFIG_EXPECT_NAME: {
      if (moshi_json_kind (v) == MOSHI_JSON_NULL)
        return TRUE;
      const char *s = moshi_json_string (v);
      if (s != NULL && strcmp (s, e->choices[0].name) == 0)
        return TRUE;
      g_autofree char *value = g_strdup_printf ("%s (supported: %s)", s ? s : "(not a string)",
          e->choices[0].name);
      return unsupported (what, path, value, error);
    }
    case MOSHI_CONFIG_OFF:
      if (!is_off (v)) {
        g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG, "%s: \"%s\" is not supported", what,
            path);
        return FALSE;
      }
      return TRUE;
    case MOSHI_CONFIG_IGNORED:
    case MOSHI_CONFIG_CUSTOM:
      return TRUE;
  }
  g_assert_not_reached ();
}

gboolean
moshi_config_read_int_element (const MoshiConfigKey *entry, const MoshiJson *array, gsize i,
    gpointer base, const char *what, const char *path, GError **error)
{
  g_assert (entry->type == MOSHI_CONFIG_INT);
  MoshiConfigKey element = *entry;
  element.offset += i * sizeof (int);
  g_autofree char *element_path = g_strdup_printf ("%s[%" G_GSIZE_FORMAT "]", path, i);
  return moshi_config_read_value (&element, moshi_json_index (array, i), base, what,
      element_path, error);
}

gboolean
moshi_config_read_object (const MoshiConfigKey *table, gsize n_keys, const MoshiJson *obj,
    gpointer base, const char *what, const char *section, GError **error)
{
  for (gsize i = 0; i < moshi_json_length (obj); i++) {
    const char *key = moshi_json_member_name (obj, i);
    g_autofree char *path = *section ? g_strdup_printf ("%s.%s", section, key) : g_strdup (key);
    const MoshiConfigKey *e = moshi_config_find (table, n_keys, key);
    if (e == NULL) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_CONFIG, "%s: \"%s\" is not a known key", what,
          path);
      return FALSE;
    }
    if (!moshi_config_read_value (e, moshi_json_index (obj, i), base, what, path, error))
      return FALSE;
  }
  return TRUE;
}

void
moshi_config_copy_field (const MoshiConfigKey *e, gpointer dst, gconstpointer src)
{
  gsize size = 0;
  switch (e->type) {
    case MOSHI_CONFIG_INT:
    case MOSHI_CONFIG_CHOICE:
      size = sizeof (int);
      break;
    case MOSHI_CONFIG_NUMBER:
      size = sizeof (double);
      break;
    case MOSHI_CONFIG_BOOL:
    case MOSHI_CONFIG_PRESENT:
      size = sizeof (gboolean);
      break;
    default:
      return;
  }
  memcpy ((char *) dst + e->offset, (const char *) src + e->offset, size);
}
