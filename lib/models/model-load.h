/* gst-moshi: what the model loaders share. */
#pragma once

#include <glib.h>

#include "moshi-backend.h"

G_BEGIN_DECLS

/* A tensor missing or misshapen is as likely the config's fault as the weights': adds to such
 * an error the config the shapes came from, or, with none given, that they were the released
 * model's (kind "Mimi" or "LM", released e.g. "the released Moshi 7B") and where the weights'
 * own config.json is when one lies beside them. Other errors are left as they are. */
void moshi_model_load_error_hint (GError **error, const char *kind, const char *released,
    const char *weights_path, const char *config_path);

/* What a *_load_shared call hands its loader through the registry: the caller's options and
 * the backend it opened to name the device of the registry key, so that the load does not open
 * it a second time. */
typedef struct {
  gconstpointer options;
  MoshiBackend *be;
} MoshiSharedLoad;

G_END_DECLS
