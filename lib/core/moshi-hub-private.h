/* gst-moshi: checks moshi-hub.c and moshi-hub-download.c share, so that a name from a spec or
 * from a server is held to one rule before it becomes part of a path. */
#pragma once

#include <glib.h>

#include "moshi-hub-download.h"

G_BEGIN_DECLS

/* "owner/name" with hub-legal characters, neither part "." or "..". */
G_GNUC_INTERNAL gboolean moshi_hub_valid_repo_id (const char *repo_id);
/* A relative path that stays inside the directory it is joined to. */
G_GNUC_INTERNAL gboolean moshi_hub_valid_relative_path (const char *path);
/* 40 hex digits. */
G_GNUC_INTERNAL gboolean moshi_hub_is_commit (const char *s);

/* moshi_hub_download, telling apart a file the repository lacks (*missing TRUE: the hub said
 * 404 for it in an existing repository; remembered in the cache) from other failures. */
G_GNUC_INTERNAL char *moshi_hub_download_checked (const char *repo_id, const char *revision,
    const char *filename, const MoshiHubOptions *options, gboolean *missing,
    GError **error);

G_END_DECLS
