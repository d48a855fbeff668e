/* gst-moshi: checks moshi-hub.c and moshi-hub-download.c share, so that a name from a spec or
 * from a server is held to one rule before it becomes part of a path. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* "owner/name" with hub-legal characters, neither part "." or "..". */
G_GNUC_INTERNAL gboolean moshi_hub_valid_repo_id (const char *repo_id);
/* A relative path that stays inside the directory it is joined to. */
G_GNUC_INTERNAL gboolean moshi_hub_valid_relative_path (const char *path);
/* 40 hex digits. */
G_GNUC_INTERNAL gboolean moshi_hub_is_commit (const char *s);

G_END_DECLS
