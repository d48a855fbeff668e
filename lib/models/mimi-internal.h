/* gst-moshi: what the library's own code knows of a Mimi beyond the public API. */
#pragma once

#include "moshi-backend.h"
#include "moshi-mimi.h"

G_BEGIN_DECLS

MoshiBackend *moshi_mimi_get_backend (const MoshiMimi *mimi);

G_END_DECLS
