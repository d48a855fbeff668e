#include "model-load.h"

#include "moshi-error.h"

void
moshi_model_load_error_hint (GError **error, const char *kind, const char *released,
    const char *weights_path, const char *config_path)
{
  if (error == NULL || *error == NULL || (*error)->domain != MOSHI_ERROR
      || ((*error)->code != MOSHI_ERROR_SHAPE && (*error)->code != MOSHI_ERROR_MISSING_TENSOR))
    return;
  char *message;
  if (config_path) {
    message = g_strdup_printf ("%s (the shapes come from the %s config %s: is it the "
        "config of these weights?)", (*error)->message, kind, config_path);
  } else {
    g_autofree char *dir = g_path_get_dirname (weights_path);
    g_autofree char *beside = g_build_filename (dir, "config.json", NULL);
    gboolean found = g_file_test (beside, G_FILE_TEST_IS_REGULAR);
    message = g_strdup_printf ("%s (no %s config was given, so the weights were checked against "
        "%s: a reduced model loads with its own config%s%s)", (*error)->message, kind, released,
        found ? ", such as " : "", found ? beside : "");
  }
  g_free ((*error)->message);
  (*error)->message = message;
}
