/* gst-moshi: what the model loaders share. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* A tensor missing or misshapen is as likely the config's fault as the weights': adds to such
 * an error the config the shapes came from, or, with none given, that they were the released
 * model's (kind "Mimi" or "LM", released e.g. "the released Moshi 7B") and where the weights'
 * own config.json is when one lies beside them. Other errors are left as they are. */
void moshi_model_load_error_hint (GError **error, const char *kind, const char *released,
    const char *weights_path, const char *config_path);

G_END_DECLS
