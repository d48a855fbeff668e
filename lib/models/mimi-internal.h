/* gst-moshi: what the library's own code knows of a Mimi beyond the public API. */
#pragma once

#include "moshi-backend.h"
#include "moshi-mimi.h"

G_BEGIN_DECLS

MoshiBackend *moshi_mimi_get_backend (const MoshiMimi *mimi);
/* moshi_mimi_load, or with shared moshi_mimi_load_shared, on a backend the caller has opened
 * (the dialog loader: its LM's), so that loading a dialog model opens the backend once. */
MoshiMimi *moshi_mimi_load_on_backend (MoshiBackend *be, gboolean shared,
    const char *weights_path, const char *config_path, const MoshiMimiLoadOptions *options,
    GError **error);

G_END_DECLS
