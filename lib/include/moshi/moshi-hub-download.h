/* gst-moshi: fetching model files from the Hugging Face hub into the local hub cache.
 *
 * What moshi-hub.h resolves from the cache, this fetches when it is not there, the way
 * huggingface_hub's hf_hub_download does, so that either tool can use what the other fetched:
 *   GET {HF_ENDPOINT}/{owner}/{name}/resolve/{revision}/{file}  (redirects followed)
 *   <cache>/models--<owner>--<name>/blobs/<etag>             the content; <etag> is the sha256
 *                                                            for LFS files (X-Linked-Etag)
 *   <cache>/models--<owner>--<name>/snapshots/<commit>/<file> a relative symlink to the blob
 *   <cache>/models--<owner>--<name>/refs/<revision>           the commit (X-Repo-Commit)
 * A download goes to blobs/<etag>.incomplete first; an interrupted one is resumed from there
 * with a Range request. LFS files are checked against their sha256 before they become a blob.
 *
 * Environment, as huggingface_hub reads it:
 *   HF_ENDPOINT       the hub's address (default https://huggingface.co)
 *   HF_TOKEN          sent as "Authorization: Bearer" to the hub (gated and private repos);
 *                     else the token file $HF_TOKEN_PATH, $HF_HOME/token or
 *                     ~/.cache/huggingface/token
 *   HF_HUB_OFFLINE    1/ON/YES/TRUE: never touch the network, the cache only
 *   HF_HUB_DOWNLOAD_TIMEOUT  seconds a connection may stay silent (default 10)
 *   HF_HUB_CACHE, HF_HOME, ...  the cache directory (moshi_hub_cache_dir)
 *
 * Downloads need libsoup 3 at build time; without it moshi_hub_can_download() is FALSE and
 * every fetch fails with MOSHI_ERROR_UNSUPPORTED, saying so. */
#pragma once

#include <gio/gio.h>
#include "moshi-api.h"

MOSHI_BEGIN_DECLS

typedef struct {
  const char *repo_id;          /* owner/name */
  const char *filename;
  guint64 downloaded;           /* bytes of the file so far, a resumed part included */
  guint64 total;                /* 0 when the server did not say */
  gboolean started;             /* the first report of this download */
  gboolean done;                /* the last report of this file: complete and checked */
} MoshiHubProgress;

/* Called from the thread that downloads: once when a download starts, at most every 200 ms
 * while it runs and once when it has completed. */
typedef void (*MoshiHubProgressFunc) (const MoshiHubProgress *progress, gpointer user_data);

typedef struct {
  MoshiHubProgressFunc progress;  /* may be NULL */
  gpointer user_data;
  GCancellable *cancellable;      /* may be NULL */
} MoshiHubOptions;

/* TRUE when this build can download (it was built with libsoup 3). */
gboolean moshi_hub_can_download (void);

/* TRUE when HF_HUB_OFFLINE asks for the cache only. */
gboolean moshi_hub_is_offline (void);

/* moshi_hub_resolve, downloading a repo's file into the cache when it is not there (unless
 * offline). options may be NULL. */
char *moshi_hub_resolve_full (const char *spec, const char *default_filename,
    const MoshiHubOptions *options, GError **error);

/* A file that a repository or folder may lack (its config.json): the path when source (a
 * folder, or a repo id owner/name[@revision]) has filename, from the cache or downloaded;
 * NULL without an error when it does not have it: the folder lacks it, the hub answers 404
 * (remembered in the cache's .no_exist/ as huggingface_hub does), or, offline or without a
 * downloader, the cache has no copy. NULL with an error when the question could not be
 * answered (network, corrupted download). */
char *moshi_hub_resolve_optional (const char *source, const char *filename,
    const MoshiHubOptions *options, GError **error);

/* Asks the hub for filename of repo_id ("owner/name") at revision (NULL: "main") and makes
 * sure the cache holds it, downloading the content when its blob is absent. Returns the path
 * of the snapshot entry. Errors name the repo, the file, the revision and the URL: a missing
 * file or repository (MOSHI_ERROR_IO), a refused token (MOSHI_ERROR_IO, naming HF_TOKEN), an
 * interrupted transfer (MOSHI_ERROR_IO; the next call resumes it), a corrupted download
 * (MOSHI_ERROR_FORMAT; it is deleted), offline mode or a build without libsoup
 * (MOSHI_ERROR_UNSUPPORTED). */
char *moshi_hub_download (const char *repo_id, const char *revision, const char *filename,
    const MoshiHubOptions *options, GError **error);

MOSHI_END_DECLS
